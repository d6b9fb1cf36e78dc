"""The training step's two sequential loops, with hand-written backward passes.

A training step runs two loops over time: the causal GRU encoder, and the
Euler-Maruyama simulation of the posterior SDE, ``n_sub`` steps between
consecutive observations (about 400 small steps for a window of 200).
Recorded by autograd, each step of either loop is a few dozen operators on
(batch, hidden) tensors, and the step time is mostly per-operator overhead.
:class:`_GRUSequence` and :class:`_EulerPath` run the same steps without
autograd, keep the few activations their backward needs in reused buffers,
and in the backward pass propagate only the adjoint of the hidden or latent
state step by step; every parameter gradient is then one large matrix product
over all steps at once. Both are used when autograd is on (training), the
GRU on CPU only (on CUDA, ``torch.nn.GRU`` is cuDNN's fused kernel); the
values equal those of ``torch.nn.GRU`` and of
:meth:`nldseg._model.NeuralLangevinVAE.advance` to float rounding, and so do
the gradients (tested against autograd, and against torchsde's solver).

One Euler step of the posterior SDE, with ``P`` the projected encoder context
of the interval::

    h  = tanh(z Ws^T + P),  u = h Wo^T + bo    posterior drift correction
    h1 = tanh(q W1^T + b1), h2 = tanh(h1 W2^T + b2)
    G  = ((1 - h1^2) * (((1 - h2^2) * w) W2)) W1 + 2 c q     grad E(q)

    overdamped:   z' = z + dt u - gs G + xi            (gs = dt / gamma)
    underdamped:  q' = q + dt M^-1 p
                  p' = (1 - dt gamma M^-1) p + dt (u - G) + xi

and ``|u|^2`` is summed per observation interval (times ``dt / (2 sigma^2)``
it is the path KL). ``q`` is ``z`` (overdamped) or the position half of
``z = (q, p)`` (underdamped); ``xi`` is the scaled Brownian increment.

In both loops ``tanh(a)`` is computed as ``2 sigmoid(2 a) - 1`` with the
constants folded into the weights (on CPU, torch's ``tanh`` costs about three
times its ``sigmoid``), and the control's and the energy's first layers, which
both read the state, are one matrix product.
"""

from __future__ import annotations

import threading

import torch

_POOL: dict = {}  # (shape, dtype) -> free CPU buffers
_POOL_LOCK = threading.Lock()


def _take(shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor, from the pool of freed buffers on CPU.

    The step's buffers are a few hundred MB at the paper's window length;
    allocated afresh every step, their first touch page-faults, which cost as
    much as the arithmetic on the 2-core machine. The pool is shared by all
    threads, because autograd may run a backward pass (which gives the buffers
    back) on another thread than the forward. CUDA tensors come from torch's
    caching allocator instead.
    """
    if like.device.type == "cpu":
        with _POOL_LOCK:
            free = _POOL.get((tuple(shape), like.dtype))
            if free:
                return free.pop()
    return like.new_empty(shape)


def _give(*buffers: torch.Tensor) -> None:
    """Return CPU buffers to the pool (see :func:`release_buffers`)."""
    with _POOL_LOCK:
        for buf in buffers:
            if buf.device.type == "cpu":
                _POOL.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)


def release_buffers() -> None:
    """Free the pooled buffers (called when training ends).

    Buffers taken by a step still in flight (another thread's fit) are not in
    the pool, so they are unaffected.
    """
    with _POOL_LOCK:
        _POOL.clear()


def _steps(buf: torch.Tensor, start: int, stop: int) -> tuple:
    """Per-step views ``buf[k, :, start:stop]`` of a (steps, rows, width) buffer.

    Made once before a loop: a Python-level slice inside the loop costs about
    as much as one of its small operators.
    """
    return buf[..., start:stop].unbind(0)


def _sum_outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_{s, r} a[s, r]^T b[s, r]`` for (steps, rows, k) and (steps, rows, m).

    The parameter gradients of a few latent columns: as one (k, steps * rows)
    by (steps * rows, m) product with ``k`` of 3 or 6, the CPU BLAS runs at a
    few GFLOP/s; per step and then summed it is 3-4 times faster.
    """
    if a.shape[-1] > 8:
        return a.reshape(-1, a.shape[-1]).t() @ b.reshape(-1, b.shape[-1])
    return torch.bmm(a.transpose(1, 2), b).sum(0)


def _fold(ws, wo, bo, w1, w2, b2, w_out, two_c, step_g, dt, inv_mass, friction) -> dict:
    """The weights of one Euler step folded for the sigmoid form (module docstring).

    ``k1`` (2 hidden, state_dim): first layer, giving ``[s1 | s_c]`` (the
    energy's and the control's). ``w2_4t``, ``b2_2``: the energy's second
    layer. ``w2w``: its way back, ``4 w * W2``. ``bo2``: the control's
    constant term. ``out_layers`` (2 hidden, state_dim) and ``trans``
    (state_dim, state_dim): the update ``z' = z trans + [s_c | d1] out_layers
    + dt bo2 + xi``, with ``G``'s ``2 c q`` in ``trans``. ``inv_mass`` and
    ``friction`` are ``None`` for overdamped dynamics.
    """
    d, state_dim = w1.shape[1], ws.shape[1]
    out_layers = torch.cat([(2.0 * dt) * wo.t(), (-4.0 * step_g) * w1])
    trans = ws.new_zeros((state_dim, state_dim))
    if inv_mass is not None:
        eye = torch.eye(d, dtype=ws.dtype, device=ws.device)
        trans[:d, :d] = eye
        trans[d:, :d] = torch.diag(dt * inv_mass)
        trans[:d, d:] = -two_c * dt * eye
        trans[d:, d:] = torch.diag(1.0 - dt * friction)
        out_layers = torch.nn.functional.pad(out_layers, (d, 0))
    else:
        trans.fill_diagonal_(1.0 - two_c * step_g)
    return {
        "k1": torch.cat([torch.nn.functional.pad(w1, (0, state_dim - d)), ws]) * 2.0,
        "w2_4t": (4.0 * w2).t(), "b2_2": 2.0 * (b2 - w2.sum(1)),
        "w2w": (4.0 * w_out[0]).unsqueeze(1) * w2, "bo2": bo - wo.sum(1),
        # Skinny products run faster on a transposed contiguous right factor.
        "out_layers": out_layers.t().contiguous().t(), "trans": trans}


class _GRUSequence(torch.autograd.Function):
    """A one-layer ``torch.nn.GRU`` (batch first, zero initial state), hand-differentiated.

    ``forward(x, w_ih, w_hh, b_ih, b_hh)`` returns the hidden states (B, T, H)
    of ``x`` (B, T, D) with torch's gate order ``(r, z, n)``::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    The input projections of all steps are one matrix product, and so are the
    parameter gradients. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        rows, n_obs, _ = x.shape
        hidden = w_hh.shape[1]
        gi_buf = _take((n_obs * rows, 3 * hidden), x)
        torch.addmm(b_ih, x.transpose(0, 1).reshape(n_obs * rows, -1), w_ih.t(),
                    out=gi_buf)
        gi = gi_buf.view(n_obs, rows, 3 * hidden)
        gi[..., 2 * hidden:] *= 2.0  # tanh(a) = 2 sigmoid(2 a) - 1
        bufs = {name: _take(shape, x) for name, shape in (
            ("h", (n_obs + 1, rows, hidden)), ("rz", (n_obs, rows, 2 * hidden)),
            ("n", (n_obs, rows, hidden)), ("gh", (n_obs, rows, 3 * hidden)),
            ("hn", (n_obs, rows, hidden)))}
        # Per-step views, made once (a Python-level slice per step costs as
        # much as a small operator).
        h_b, rz_b, n_b, gh_b, hn_b = (bufs[name].unbind(0) for name in (
            "h", "rz", "n", "gh", "hn"))
        gi_rz, gi_n = _steps(gi, 0, 2 * hidden), _steps(gi, 2 * hidden, 3 * hidden)
        gh_rz = _steps(bufs["gh"], 0, 2 * hidden)
        gh_n = _steps(bufs["gh"], 2 * hidden, 3 * hidden)
        r_b, z_b = _steps(bufs["rz"], 0, hidden), _steps(bufs["rz"], hidden, 2 * hidden)
        h_b[0].zero_()
        neg_one = x.new_full((), -1.0)
        w_hh_t = w_hh.t()
        for t in range(n_obs):
            h = h_b[t]
            torch.addmm(b_hh, h, w_hh_t, out=gh_b[t])
            torch.add(gi_rz[t], gh_rz[t], out=rz_b[t]).sigmoid_()
            a = torch.addcmul(gi_n[t], r_b[t], gh_n[t], value=2.0)
            n = torch.add(neg_one, a.sigmoid_(), alpha=2.0, out=n_b[t])
            torch.addcmul(n, z_b[t], torch.sub(h, n, out=hn_b[t]), out=h_b[t + 1])
        _give(gi_buf)  # Only the loop reads it.
        ctx.save_for_backward(x, w_ih, w_hh)
        ctx.bufs = bufs
        return bufs["h"][1:].transpose(0, 1).contiguous(), h_b[1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_h0):
        x, w_ih, w_hh = ctx.saved_tensors
        bufs = ctx.bufs
        if bufs is None:
            raise RuntimeError("The GRU's buffers were freed by a first backward; "
                               "retain_graph is not supported.")
        ctx.bufs = None
        rows, n_obs, _ = x.shape
        hidden = w_hh.shape[1]
        # Factors of the gates' derivatives, for all steps at once.
        back = {name: _take(shape, x) for name, shape in (
            ("dgh", (n_obs, rows, 3 * hidden)), ("dan", (n_obs, rows, hidden)),
            ("dnf", (n_obs, rows, hidden)), ("rzf", (n_obs, rows, 2 * hidden)))}
        n_all, rz_all = bufs["n"], bufs["rz"]
        dn_factor = torch.addcmul(x.new_ones(()), n_all, n_all, value=-1.0,
                                  out=back["dnf"])
        rz_factor = torch.addcmul(rz_all, rz_all, rz_all, value=-1.0, out=back["rzf"])
        dgh_b, dan_b = back["dgh"].unbind(0), back["dan"].unbind(0)
        dgh_rz = _steps(back["dgh"], 0, 2 * hidden)
        dgh_n = _steps(back["dgh"], 2 * hidden, 3 * hidden)
        r_b, z_b = _steps(bufs["rz"], 0, hidden), _steps(bufs["rz"], hidden, 2 * hidden)
        gh_n, hn_b = _steps(bufs["gh"], 2 * hidden, 3 * hidden), bufs["hn"].unbind(0)
        dnf_b, rzf_b = dn_factor.unbind(0), rz_factor.unbind(0)
        if grad_h is None:
            grad_h = x.new_zeros((rows, n_obs, hidden))
        grads = grad_h.transpose(0, 1).unbind(0)
        tmp = x.new_empty((rows, 2 * hidden))
        tmp_r, tmp_z = tmp[:, :hidden], tmp[:, hidden:]
        dh = grads[n_obs - 1].clone()
        if n_obs == 1:  # grad_h0: the adjoint of the separate first output.
            dh.add_(grad_h0)
        for t in range(n_obs - 1, -1, -1):
            z = z_b[t]
            dn = torch.addcmul(dh, dh, z, value=-1.0)
            da_n = torch.mul(dn, dnf_b[t], out=dan_b[t])
            torch.mul(da_n, gh_n[t], out=tmp_r)
            torch.mul(dh, hn_b[t], out=tmp_z)
            torch.mul(tmp, rzf_b[t], out=dgh_rz[t])
            torch.mul(da_n, r_b[t], out=dgh_n[t])
            dh = torch.addmm(dh.mul_(z), dgh_b[t], w_hh)
            if t:
                dh.add_(grads[t - 1])
                if t == 1:
                    dh.add_(grad_h0)
        # The input projections' adjoints are [dgh_r, dgh_z, da_n], used in two
        # parts rather than concatenated.
        dgh_flat = back["dgh"].view(n_obs * rows, 3 * hidden)
        dgh_rz, dan_flat = dgh_flat[:, :2 * hidden], back["dan"].view(n_obs * rows, hidden)
        h_prev = bufs["h"][:-1].reshape(n_obs * rows, hidden)
        x_flat = x.transpose(0, 1).reshape(n_obs * rows, -1)
        d_w_hh = (h_prev.t() @ dgh_flat).t()
        d_w_ih = torch.cat([(x_flat.t() @ dgh_rz).t(), (x_flat.t() @ dan_flat).t()])
        d_b_hh = dgh_flat.sum(0)
        d_b_ih = torch.cat([d_b_hh[:2 * hidden], dan_flat.sum(0)])
        d_x = None
        if ctx.needs_input_grad[0]:
            d_x = torch.addmm(dan_flat @ w_ih[2 * hidden:], dgh_rz, w_ih[:2 * hidden])
            d_x = d_x.view(n_obs, rows, -1).transpose(0, 1)
        _give(*bufs.values(), *back.values())
        return d_x, d_w_ih, d_w_hh, d_b_ih, d_b_hh


def gru_sequence(gru: torch.nn.GRU, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of a one-layer batch-first ``gru`` over ``x`` (B, T, D).

    Returns ``(h, h0)``: ``h`` (B, T, H) equals ``gru(x)[0]`` from a zero
    initial state, and ``h0`` (B, H) is a copy of ``h[:, 0]``, its own output
    so that reading the first step does not cost autograd a (B, T, H) zero
    tensor and a sum in the backward pass of :class:`_GRUSequence`.
    """
    return _GRUSequence.apply(x, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0,
                              gru.bias_hh_l0)


class _EulerPath(torch.autograd.Function):
    """Posterior Euler-Maruyama paths with a hand-written backward.

    ``forward(z0, projected, noise, ws, wo, bo, w1, b1, w2, b2, w_out, c, gs,
    inv_mass, friction, dt)`` returns ``(zs, sq)``: the state at every
    observation, (T, rows, state_dim), and the summed ``|u|^2`` of each
    interval, (T, rows), with ``sq[0] = 0``. ``projected`` is (rows, T, hidden),
    ``noise`` the scaled increments (T - 1, n_sub, rows, latent_dim). ``gs`` is
    the overdamped gradient scale (``None`` underdamped); ``inv_mass`` and
    ``friction`` (latent_dim,) are the underdamped coefficients (``None``
    overdamped). Not twice differentiable.

    Only what the next state needs is computed inside the loops; everything
    else (the control ``u``, the squared controls, the factors the backward
    multiplies by) is one batched operation over all steps. The state update
    is linear given the activations: ``z' = z L + [s_c, d1] M + xi'``, with
    ``L`` the state's own transition (including the ``2 c q`` of ``grad E``),
    ``M`` the control's and the energy's output layers, and ``xi'`` the noise
    plus the constant drift.
    """

    @staticmethod
    def forward(ctx, z0, projected, noise, ws, wo, bo, w1, b1, w2, b2, w_out, c,
                gs, inv_mass, friction, dt):
        n_obs, n_sub, rows, d = noise.shape
        n_obs += 1
        n_steps = (n_obs - 1) * n_sub
        hidden, state_dim = w2.shape[0], z0.shape[1]
        under = inv_mass is not None
        two_c = 2.0 * float(c)
        step_g = dt if under else float(gs)  # G enters the force as -step_g G.
        fold = _fold(ws, wo, bo, w1, w2, b2, w_out, two_c, step_g, dt, inv_mass,
                     friction)
        k1, w2_4t, b2_2, w2w = fold["k1"], fold["w2_4t"], fold["b2_2"], fold["w2w"]
        bo2, out_layers, trans = fold["bo2"], fold["out_layers"], fold["trans"]
        pad = state_dim - d
        bias = _take((rows, n_obs, 2 * hidden), z0)
        bias[..., :hidden].copy_(2.0 * b1)
        torch.mul(projected, 2.0, out=bias[..., hidden:])
        drive = z0.new_zeros((n_steps, rows, state_dim))
        torch.add(noise.reshape(n_steps, rows, d), bo2, alpha=dt, out=drive[..., pad:])
        bufs = {name: _take(shape, z0) for name, shape in (
            ("zs", (n_steps + 1, rows, state_dim)), ("x", (n_steps, rows, 3 * hidden)),
            ("s2", (n_steps, rows, hidden)), ("r2", (n_steps, rows, hidden)),
            ("rr", (n_steps, rows, 2 * hidden)), ("e1", (n_steps, rows, hidden)))}
        zs_b, s2_b, r2_b = (bufs[name].unbind(0) for name in ("zs", "s2", "r2"))
        x_all = bufs["x"]  # [s1 | s_c | d1] per step
        first_b, s1_b = _steps(x_all, 0, 2 * hidden), _steps(x_all, 0, hidden)
        act_b = _steps(x_all, hidden, 3 * hidden)
        d1_b = _steps(x_all, 2 * hidden, 3 * hidden)
        r1_b = _steps(bufs["rr"], hidden, 2 * hidden)
        zs_b[0].copy_(z0)
        biases, drives = bias.unbind(1), drive.unbind(0)
        k1_t = k1.t()
        g1 = z0.new_empty((rows, hidden))
        for n in range(n_steps):
            z, s1 = zs_b[n], s1_b[n]
            torch.addmm(biases[n // n_sub + 1], z, k1_t, out=first_b[n]).sigmoid_()
            s2 = torch.addmm(b2_2, s1, w2_4t, out=s2_b[n]).sigmoid_()
            r2 = torch.addcmul(s2, s2, s2, value=-1.0, out=r2_b[n])
            r1 = torch.addcmul(s1, s1, s1, value=-1.0, out=r1_b[n])
            torch.mul(r1, torch.mm(r2, w2w, out=g1), out=d1_b[n])
            torch.addmm(drives[n], z, trans, out=zs_b[n + 1]).addmm_(act_b[n], out_layers)
        _give(bias)  # Only the loop reads it.
        s1_all, sc_all, d1_all = x_all.split(hidden, dim=2)
        torch.addcmul(sc_all, sc_all, sc_all, value=-1.0, out=bufs["rr"][..., :hidden])
        torch.addcmul(bufs["r2"], bufs["s2"], bufs["r2"], value=-2.0, out=bufs["s2"])
        torch.addcmul(d1_all, s1_all, d1_all, value=-2.0, out=bufs["e1"])
        u_all = torch.addmm(bo2, sc_all.reshape(n_steps * rows, hidden), 2.0 * wo.t())
        u_all = u_all.view(n_steps, rows, d)
        sq = z0.new_zeros((n_obs, rows))
        sq[1:] = (u_all * u_all).sum(-1).view(n_obs - 1, n_sub, rows).sum(1)
        ctx.save_for_backward(w1, w2, w_out, c, gs)
        ctx.bufs, ctx.u, ctx.fold = bufs, u_all, fold
        ctx.dt, ctx.n_sub, ctx.under = dt, n_sub, under
        return bufs["zs"][::n_sub].clone(), sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_zs, grad_sq):
        w1, w2, w_out, c, gs = ctx.saved_tensors
        bufs = ctx.bufs
        if bufs is None:
            raise RuntimeError("The Euler path's buffers were freed by a first "
                               "backward; retain_graph is not supported.")
        ctx.bufs = None
        u_all, fold = ctx.u, ctx.fold
        dt, n_sub, under = ctx.dt, ctx.n_sub, ctx.under
        n_steps, rows, d = u_all.shape
        n_obs = n_steps // n_sub + 1
        hidden, state_dim = w2.shape[0], bufs["zs"].shape[2]
        like = bufs["zs"]
        if grad_zs is None:
            grad_zs = like.new_zeros((n_obs, rows, state_dim))
        step_g = dt if under else float(gs)
        # The forward's folded weights, transposed. [d loss / d s_c-input |
        # d loss / d d1] = lam_f [2 dt Wo | -4 g W1^T], the output layers' rows
        # of the force (+ the |u|^2 term on the control half, sig = 2 grad_sq / dt).
        w_td = fold["out_layers"][:, state_dim - d:].t()
        w2w_t, w2_4 = fold["w2w"].t(), fold["w2_4t"].t()
        trans = fold["trans"]
        k1 = fold["k1"].t().contiguous().t()  # The skinny product, as in _fold.
        sig = None
        if grad_sq is not None:
            sig = (grad_sq * (2.0 / dt)).unsqueeze(-1).unbind(0)
            uw = torch.mm(u_all.reshape(n_steps * rows, d), w_td[:, :hidden],
                          out=_take((n_steps * rows, hidden), like))
            uw_b = uw.view(n_steps, rows, hidden).unbind(0)
        trans_t = trans.t()
        keep = float(trans[0, 0])
        back = {name: _take(shape, like) for name, shape in (
            ("q", (n_steps, rows, 3 * hidden)), ("dy2", (n_steps, rows, hidden)),
            ("lam", (n_steps, rows, state_dim)))}
        # q = [d y1 | d y_c | d g1] per step: the adjoints of the first layer,
        # then of g1 = r2 w2w. Per-step views are made once (see _steps).
        dy2_b, lam_b = back["dy2"].unbind(0), back["lam"].unbind(0)
        lam_f_b = _steps(back["lam"], d, state_dim) if under else lam_b
        q_all = back["q"]
        q_first, q_act = _steps(q_all, 0, 2 * hidden), _steps(q_all, hidden, 3 * hidden)
        q_y1, q_g1 = _steps(q_all, 0, hidden), _steps(q_all, 2 * hidden, 3 * hidden)
        rr_b, r1_b = bufs["rr"].unbind(0), _steps(bufs["rr"], hidden, 2 * hidden)
        e2_b, e1_b = bufs["s2"].unbind(0), bufs["e1"].unbind(0)
        td = like.new_empty((rows, 2 * hidden))
        td_c, td_e = td[:, :hidden], td[:, hidden:]
        dy1 = like.new_empty((rows, hidden))
        grads_obs = grad_zs.unbind(0)
        lam_b[n_steps - 1].copy_(grads_obs[n_obs - 1])
        for n in range(n_steps - 1, -1, -1):
            lam = lam_b[n]  # adjoint of the state after step n
            torch.mm(lam_f_b[n], w_td, out=td)
            if sig is not None:
                td_c.addcmul_(uw_b[n], sig[n // n_sub + 1])
            torch.mul(td, rr_b[n], out=q_act[n])
            dy2 = torch.mm(q_g1[n], w2w_t, out=dy2_b[n]).mul_(e2_b[n])
            torch.mul(torch.mm(dy2, w2_4, out=dy1), r1_b[n], out=q_y1[n])
            q_y1[n].addcmul_(td_e, e1_b[n])
            out = lam_b[n - 1] if n else like.new_empty((rows, state_dim))
            if under:
                torch.mm(lam, trans_t, out=out).addmm_(q_first[n], k1)
            else:
                torch.addmm(lam, q_first[n], k1, beta=keep, out=out)
            if n % n_sub == 0:
                out.add_(grads_obs[n // n_sub])
        d_z0 = out

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n_steps * rows, t.shape[-1])

        z_flat = flat(bufs["zs"][:-1])
        q_flat = z_flat[:, :d]
        lam_all, x_all = back["lam"], bufs["x"]
        lam_f = lam_all[..., d:] if under else lam_all
        lam_f_flat = flat(lam_f)
        x_flat, qq_flat, dy2_flat = flat(x_all), flat(back["q"]), flat(back["dy2"])
        s1_flat, d1_flat = x_flat[:, :hidden], x_flat[:, 2 * hidden:]
        dg1_flat = qq_flat[:, 2 * hidden:]
        gu = lam_f  # d loss / d u = dt * (lam_f + sig * u)
        if grad_sq is not None:
            sig_rows = (grad_sq[1:] * (2.0 / dt)).repeat_interleave(n_sub, 0)
            gu = torch.addcmul(lam_f, sig_rows.unsqueeze(-1), u_all)
        # The products with the few latent columns go through _sum_outer.
        d_k1 = _sum_outer(bufs["zs"][:-1], back["q"][..., :2 * hidden]).t() * 2.0
        dy_sum = qq_flat[:, :2 * hidden].sum(0)
        gu_sum = gu.sum((0, 1))
        d_ws = d_k1[hidden:]  # d_k1's rows are [W1 | 0; Ws].
        d_wo = (2.0 * _sum_outer(gu, x_all[..., hidden:2 * hidden])
                - gu_sum[:, None]) * dt
        d_bo = gu_sum * dt
        d_w1 = d_k1[:hidden, :d] - (4.0 * step_g) * _sum_outer(
            lam_f, x_all[..., 2 * hidden:]).t()
        d_b1 = 2.0 * dy_sum[:hidden]
        dy2_sum = dy2_flat.sum(0)
        r2_flat = flat(bufs["r2"])
        d_w2w = (dg1_flat.t() @ r2_flat).t()
        w4 = 4.0 * w_out[0]
        d_w2 = (4.0 * (s1_flat.t() @ dy2_flat).t() - 2.0 * dy2_sum[:, None]
                + w4[:, None] * d_w2w)
        d_b2 = 2.0 * dy2_sum
        d_w_out = (4.0 * (w2 * d_w2w).sum(1)).unsqueeze(0)
        d_c = (lam_f_flat * q_flat).sum() * (-2.0 * step_g)
        # Each interval's context adjoint: twice the sum of its steps' d y_c.
        d_projected = like.new_empty((rows, n_obs, hidden))
        d_projected[:, 0] = 0.0
        d_yc = back["q"][..., hidden:2 * hidden].view(n_obs - 1, n_sub, rows, hidden)
        dest = d_projected[:, 1:].transpose(0, 1)
        torch.mul(d_yc[:, 0], 2.0, out=dest)
        for j in range(1, n_sub):
            dest.add_(d_yc[:, j], alpha=2.0)
        d_noise = lam_f_flat.reshape(n_obs - 1, n_sub, rows, d).clone()
        d_gs = d_im = d_fr = None
        if under:
            p_flat = z_flat[:, d:]
            if ctx.needs_input_grad[13]:
                d_im = (flat(lam_all[..., :d]) * p_flat).sum(0) * dt
            if ctx.needs_input_grad[14]:
                d_fr = (lam_f_flat * p_flat).sum(0) * -dt
        elif ctx.needs_input_grad[12]:
            g_flat = torch.addmm(q_flat, d1_flat, 4.0 * w1, beta=2.0 * float(c))
            d_gs = -(lam_f_flat * g_flat).sum()
        _give(*bufs.values(), *back.values())
        if grad_sq is not None:
            _give(uw)
        return (d_z0, d_projected, d_noise, d_ws, d_wo, d_bo, d_w1, d_b1, d_w2, d_b2,
                d_w_out, d_c, d_gs, d_im, d_fr, None)


def euler_path(model, z0: torch.Tensor, projected: torch.Tensor,
               scaled_noise: torch.Tensor, dt: float,
               coef: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior latent paths and squared controls of ``model`` with autograd support.

    Parameters
    ----------
    model : NeuralLangevinVAE
        Supplies the control network, the energy and the dynamics.
    z0 : Tensor of shape (rows, state_dim)
        Initial latent state.
    projected : Tensor of shape (rows, T, hidden)
        Projected encoder context per observation.
    scaled_noise : Tensor of shape (T - 1, n_sub, rows, latent_dim)
        Brownian increments times ``coef["noise_scale"]``.
    dt : float
        Euler step.
    coef : dict
        From :func:`nldseg._dynamics.step_coefficients`.

    Returns
    -------
    zs : Tensor of shape (T, rows, state_dim)
        Latent state at every observation.
    sq : Tensor of shape (T, rows)
        Summed ``|f_phi|^2`` of each interval (``sq[0] = 0``).
    """
    if scaled_noise.shape[0] == 0:  # A single observation: no step to take.
        return z0.unsqueeze(0), z0.new_zeros((1, z0.shape[0]))
    net, energy = model.drift_net, model.energy
    under = "inv_mass" in coef
    return _EulerPath.apply(
        z0, projected, scaled_noise, net.state_in.weight, net.out.weight, net.out.bias,
        energy.lin1.weight, energy.lin1.bias, energy.lin2.weight, energy.lin2.bias,
        energy.out.weight, energy.c, None if under else coef["grad_scale"],
        coef["inv_mass"] if under else None, coef["friction"] if under else None,
        float(dt))


class InferenceStepper:
    """Posterior Euler-Maruyama steps for inference: no autograd, folded weights.

    The same steps as :meth:`nldseg._model.NeuralLangevinVAE.advance` (to float
    rounding), on the folded weights of :class:`_EulerPath`: per Euler step
    two matrix products and two sigmoids of width ``hidden``, then the linear
    state update. The encoder's context enters as the first layer's bias,
    computed straight from the GRU output (the two context layers are folded
    into one). Built once per simulation or stream, from a trained model whose
    weights no longer change.

    Parameters
    ----------
    model : NeuralLangevinVAE
    dt : float
        Euler step.
    """

    def __init__(self, model, dt: float) -> None:
        with torch.no_grad():
            coef = model.step_coefficients(dt)
            net, energy = model.drift_net, model.energy
            ws, wo, bo = net.state_in.weight, net.out.weight, net.out.bias
            w1, b1 = energy.lin1.weight, energy.lin1.bias
            d, hidden = model.latent_dim, energy.lin2.weight.shape[0]
            under = "inv_mass" in coef
            step_g = dt if under else float(coef["grad_scale"])
            fold = _fold(ws, wo, bo, w1, energy.lin2.weight, energy.lin2.bias,
                         energy.out.weight, 2.0 * float(energy.c), step_g, dt,
                         coef.get("inv_mass"), coef.get("friction"))
            self.k1_t = fold["k1"].t()
            # GRU output h -> first-layer bias [2 b1 | 2 P(h)], P = context_in(context(h)).
            w_ci, b_ci = net.context_in.weight, net.context_in.bias
            w_c, b_c = model.context.weight, model.context.bias
            self.bias_w_t = torch.cat([torch.zeros_like(w_ci @ w_c), w_ci @ w_c]).t() * 2.0
            self.bias_b = torch.cat([b1, w_ci @ b_c + b_ci]) * 2.0
            self.w2_4t, self.b2_2, self.w2w = fold["w2_4t"], fold["b2_2"], fold["w2w"]
            self.wo2_t = (2.0 * wo).t()
            self.bo2, self.out_layers, self.trans = (fold["bo2"], fold["out_layers"],
                                                     fold["trans"])
            self.noise_scale = float(coef["noise_scale"])
            self.kl_scale = float(coef["kl_scale"])
            self.dt_bo2 = dt * self.bo2
        self.dt, self.d, self.hidden, self.under = dt, d, hidden, under

    def bias(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """First-layer bias (rows, 2 hidden) of one observation from GRU outputs h."""
        return torch.addmm(self.bias_b, h, self.bias_w_t, out=out)

    def drive(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal increments (..., latent_dim) -> the state-free part of a step.

        That is the Brownian increment times ``sigma sqrt(dt)`` plus the
        control's constant term ``dt bo``.
        """
        return torch.add(self.dt_bo2, noise, alpha=self.noise_scale)

    def advance(self, z: torch.Tensor, bias: torch.Tensor, drive: torch.Tensor,
                work: dict | None = None, sq: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """The Euler steps from one observation to the next.

        Parameters
        ----------
        z : Tensor of shape (rows, state_dim)
            Rows are sequence-major: ``row = sequence * n_samples + sample``.
        bias : Tensor of shape (n_sequences, 2 hidden)
            From :meth:`bias`, for the next observation.
        drive : Tensor of shape (n_sub, rows, latent_dim)
            From :meth:`drive`.
        work : dict or None
            Scratch tensors from :meth:`workspace`, reused across calls.
        sq : Tensor of shape (rows,) or None
            If given, the squared controls ``|u|^2`` are added to it.
        out : Tensor of shape (rows, state_dim) or None
            Where to write the new state.

        Returns
        -------
        z : Tensor of shape (rows, state_dim)
        """
        rows, hidden, d = z.shape[0], self.hidden, self.d
        work = work if work is not None else self.workspace(rows, z)
        x, s2_w, g1_w = work["x"], work["s2"], work["g1"]
        n_seq = bias.shape[0]
        first = x[:, :2 * hidden]  # x = [s1 | s_c | d1], as in _EulerPath
        s1, act = x[:, :hidden], x[:, hidden:]
        n_sub = drive.shape[0]
        for j in range(n_sub):
            if n_seq == rows:
                torch.addmm(bias, z, self.k1_t, out=first)
            else:
                torch.mm(z, self.k1_t, out=first)
                first.view(n_seq, rows // n_seq, 2 * hidden).add_(bias.unsqueeze(1))
            first.sigmoid_()
            s2 = torch.addmm(self.b2_2, s1, self.w2_4t, out=s2_w).sigmoid_()
            r2 = s2.addcmul_(s2, s2, value=-1.0)
            g1 = torch.mm(r2, self.w2w, out=g1_w)
            torch.addcmul(s1, s1, s1, value=-1.0, out=x[:, 2 * hidden:]).mul_(g1)
            if sq is not None:
                u = torch.addmm(self.bo2, x[:, hidden:2 * hidden], self.wo2_t)
                sq.add_((u * u).sum(-1))
            dest = out if j == n_sub - 1 else None
            if self.under:
                z = torch.mm(z, self.trans, out=dest)
                z[:, d:].add_(drive[j])
            else:
                z = torch.addmm(drive[j], z, self.trans, out=dest)
            z.addmm_(act, self.out_layers)
        return z

    def workspace(self, rows: int, like: torch.Tensor) -> dict:
        """Scratch tensors for :meth:`advance` on ``rows`` rows."""
        hidden = self.hidden
        return {"x": like.new_empty((rows, 3 * hidden)),
                "s2": like.new_empty((rows, hidden)),
                "g1": like.new_empty((rows, hidden))}
