"""Fast kernels of the posterior SDE and the encoder; they take tensors, not modules.

Two forms of every network exist in nldseg: the plain formulas in
:mod:`nldseg._model` (autograd's reference, used to check everything here) and
the *folded* form of this module, used by the training kernels, the inference
stepper and the energy's gradient flows. The folded algebra is written once,
here.

**Folding.** ``tanh(a) = 2 sigmoid(2 a) - 1`` and ``1 - tanh(a)^2 = 4 s (1 - s)``
with ``s = sigmoid(2 a)``; on CPU torch's ``tanh`` costs about three times its
``sigmoid``, and the constants fold into the weights. For the energy
``E(q) = w . tanh(W2 tanh(W1 q + b1) + b2) + c |q|^2``::

    s1 = sigmoid(q (2 W1)^T + 2 b1)
    s2 = sigmoid(s1 (4 W2)^T + 2 (b2 - W2 1))
    d1 = (s1 - s1^2) * ((s2 - s2^2) W2w),        W2w = 4 w * W2 (row-scaled)
    grad E(q) = d1 (4 W1) + 2 c q

(:func:`folded_energy_grad`). The posterior drift ``u = Wo tanh(Ws z + P) + bo``
is ``u = s_c (2 Wo)^T + (bo - Wo 1)`` with ``s_c = sigmoid(z (2 Ws)^T + 2 P)``.

**One Euler step** of the posterior SDE, with ``P`` the projected encoder
context of the interval and ``q`` the position part of ``z``::

    overdamped:   z' = z + dt u - g grad E(q) + xi          (g = dt / gamma)
    underdamped:  q' = q + dt M^-1 p
                  p' = (1 - dt gamma M^-1) p + dt (u - grad E(q)) + xi

Both the control's and the energy's first layers read the state, so they are
one matrix product ``[a1 | a_c] = z K1^T + [2 b1 | 2 P]``, and the update is
linear given the activations: ``z' = z L + [s_c | d1] M + xi'``, where ``L``
(``trans``) is the state's own transition including the ``2 c q`` of
``grad E``, ``M`` (``out_layers``) stacks ``2 dt Wo^T`` and ``-4 g W1``, and
``xi'`` (``drive``) is the noise plus ``dt (bo - Wo 1)`` (:func:`fold_step`).
``|u|^2`` is summed per observation interval (times ``dt / (2 sigma^2)`` it is
the path KL).

**Training.** A training step runs two loops over time: the causal GRU
encoder and the Euler loop (``n_sub`` steps between consecutive observations,
about 400 small steps for a window of 200). Recorded by autograd, each step of
either loop is a few dozen operators on (batch, hidden) tensors, and the step
time is mostly per-operator overhead. :class:`_GRUSequence` and
:class:`_EulerPath` run the same steps without autograd, keep the few
activations their backward needs in reused buffers, and in the backward pass
propagate only the adjoint of the hidden or latent state step by step; every
parameter gradient is then one large matrix product over all steps at once.
The GRU kernel is used on CPU only (on CUDA ``torch.nn.GRU`` is cuDNN's fused
kernel). Values and gradients equal autograd's on the plain formulas to float
rounding (tested in float64).
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import torch

_POOL: dict = {}  # (shape, dtype) -> free CPU buffers
_POOL_LOCK = threading.Lock()


class EnergyWeights(NamedTuple):
    """Tensors of ``E(q) = w_out . tanh(w2 tanh(w1 q + b1) + b2) + c |q|^2``.

    ``w1`` (hidden, d), ``b1`` (hidden,), ``w2`` (hidden, hidden), ``b2``
    (hidden,), ``w_out`` (1, hidden), ``c`` a positive scalar tensor. The
    output layer's bias shifts ``E`` only, so no kernel reads it.
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w_out: torch.Tensor
    c: torch.Tensor


class DriftWeights(NamedTuple):
    """Tensors of the posterior drift ``u = w_out tanh(w_state z + P) + b_out``.

    ``P = w_context c_t + b_context`` is the projected encoder context;
    ``w_state`` (hidden, state_dim), ``w_out`` (d, hidden), ``b_out`` (d,),
    ``w_context`` (hidden, context), ``b_context`` (hidden,).
    """

    w_state: torch.Tensor
    w_out: torch.Tensor
    b_out: torch.Tensor
    w_context: torch.Tensor
    b_context: torch.Tensor


class GRUWeights(NamedTuple):
    """Tensors of a one-layer GRU in torch's layout and gate order ``(r, z, n)``.

    ``w_ih`` (3 hidden, D), ``w_hh`` (3 hidden, hidden), ``b_ih`` and ``b_hh``
    (3 hidden,).
    """

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor
    b_hh: torch.Tensor


class FoldedEnergy(NamedTuple):
    """The energy's weights folded for the sigmoid form (module docstring).

    ``w1_2t`` = ``(2 W1)^T`` (d, hidden), ``b1_2`` = ``2 b1``, ``w2_4t`` =
    ``(4 W2)^T``, ``b2_2`` = ``2 (b2 - W2 1)``, ``w2w`` = ``4 w * W2`` (the way
    back through the second layer), ``w1_4`` = ``4 W1``, ``two_c`` = ``2 c``.
    """

    w1_2t: torch.Tensor
    b1_2: torch.Tensor
    w2_4t: torch.Tensor
    b2_2: torch.Tensor
    w2w: torch.Tensor
    w1_4: torch.Tensor
    two_c: float


class FoldedStep(NamedTuple):
    """The weights of one Euler step folded for the sigmoid form (module docstring).

    ``k1`` (2 hidden, state_dim): the merged first layer, giving ``[a1 | a_c]``
    (the energy's, then the control's). ``energy``: the :class:`FoldedEnergy`
    (its ``w2_4t``, ``b2_2`` and ``w2w`` are the second layer and its way
    back). ``bo2`` = ``bo - Wo 1``, the control's constant term.
    ``out_layers`` (2 hidden, state_dim) and ``trans`` (state_dim, state_dim):
    the update ``z' = z trans + [s_c | d1] out_layers + dt bo2 + xi``, with
    ``grad E``'s ``2 c q`` in ``trans``.
    """

    k1: torch.Tensor
    energy: FoldedEnergy
    bo2: torch.Tensor
    out_layers: torch.Tensor
    trans: torch.Tensor


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


def fold_energy(energy: EnergyWeights) -> FoldedEnergy:
    """Fold the energy's weights for :func:`folded_energy_grad` and the Euler steps."""
    w1, w2 = energy.w1, energy.w2
    return FoldedEnergy(
        w1_2t=(2.0 * w1).t(), b1_2=2.0 * energy.b1, w2_4t=(4.0 * w2).t(),
        b2_2=2.0 * (energy.b2 - w2.sum(1)),
        w2w=(4.0 * energy.w_out[0]).unsqueeze(1) * w2, w1_4=4.0 * w1,
        two_c=2.0 * float(energy.c))


def _energy_back(s1: torch.Tensor, fe: FoldedEnergy, s2_out: torch.Tensor,
                 g1_out: torch.Tensor, d1_out: torch.Tensor,
                 r2_out: torch.Tensor | None = None,
                 r1_out: torch.Tensor | None = None) -> torch.Tensor:
    """From the first layer's sigmoids ``s1`` to ``d1`` (module docstring); returns ``d1``.

    ``s2_out`` receives ``s2``, then ``r2 = s2 - s2^2`` in place unless
    ``r2_out`` is given (a backward pass keeps both); ``r1_out``, if given,
    keeps ``r1 = s1 - s1^2``. The one home of the energy's folded way back,
    shared by the training kernel, the inference stepper and
    :func:`folded_energy_grad`.
    """
    s2 = torch.addmm(fe.b2_2, s1, fe.w2_4t, out=s2_out).sigmoid_()
    if r2_out is None:
        r2 = s2.addcmul_(s2, s2, value=-1.0)
    else:
        r2 = torch.addcmul(s2, s2, s2, value=-1.0, out=r2_out)
    g1 = torch.mm(r2, fe.w2w, out=g1_out)
    if r1_out is None:
        return torch.addcmul(s1, s1, s1, value=-1.0, out=d1_out).mul_(g1)
    r1 = torch.addcmul(s1, s1, s1, value=-1.0, out=r1_out)
    return torch.mul(r1, g1, out=d1_out)


def folded_energy_grad(z: torch.Tensor, fe: FoldedEnergy) -> torch.Tensor:
    """``grad E(z)`` for latent points (n, d) on the folded weights, without autograd.

    The energy's gradient flows (basins, minima) run on this; it equals
    :meth:`nldseg._model.EnergyMLP.grad` to float rounding (tested).
    """
    s1 = torch.addmm(fe.b1_2, z, fe.w1_2t).sigmoid_()
    hidden = s1.shape[1]
    work = z.new_empty((3, z.shape[0], hidden))
    d1 = _energy_back(s1, fe, work[0], work[1], work[2])
    return torch.addmm(z * fe.two_c, d1, fe.w1_4)


def fold_step(drift: DriftWeights, energy: EnergyWeights, coef: dict,
              dt: float) -> FoldedStep:
    """Fold one Euler step's weights (module docstring).

    ``coef`` is :func:`nldseg._dynamics.step_coefficients`' dict: overdamped,
    ``grad_scale`` ``g = dt / gamma``; underdamped, ``inv_mass`` and
    ``friction`` (latent_dim,).
    """
    ws, wo, bo = drift.w_state, drift.w_out, drift.b_out
    w1 = energy.w1
    d, state_dim = w1.shape[1], ws.shape[1]
    inv_mass = coef.get("inv_mass")
    under = inv_mass is not None
    step_g = dt if under else float(coef["grad_scale"])
    fe = fold_energy(energy)
    two_c = fe.two_c
    out_layers = torch.cat([(2.0 * dt) * wo.t(), (-4.0 * step_g) * w1])
    trans = ws.new_zeros((state_dim, state_dim))
    if under:
        eye = torch.eye(d, dtype=ws.dtype, device=ws.device)
        trans[:d, :d] = eye
        trans[d:, :d] = torch.diag(dt * inv_mass)
        trans[:d, d:] = -two_c * dt * eye
        trans[d:, d:] = torch.diag(1.0 - dt * coef["friction"])
        out_layers = torch.nn.functional.pad(out_layers, (d, 0))
    else:
        trans.fill_diagonal_(1.0 - two_c * step_g)
    return FoldedStep(
        k1=torch.cat([torch.nn.functional.pad(w1, (0, state_dim - d)), ws]) * 2.0,
        energy=fe, bo2=bo - wo.sum(1),
        # Skinny products run faster on a transposed contiguous right factor.
        out_layers=out_layers.t().contiguous().t(), trans=trans)


class _GRUSequence(torch.autograd.Function):
    """A one-layer batch-first ``torch.nn.GRU``, hand-differentiated.

    ``forward(x, h_init, w_ih, w_hh, b_ih, b_hh)`` returns the hidden states
    (B, T, H) of ``x`` (B, T, D) from the initial state ``h_init`` (B, H), or
    from zeros if it is None, with torch's gate order ``(r, z, n)``::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    The input projections of all steps are one matrix product, and so are the
    parameter gradients. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x, h_init, w_ih, w_hh, b_ih, b_hh):
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
        if h_init is None:
            h_b[0].zero_()
        else:
            h_b[0].copy_(h_init)
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
        # After the loop, dh is the adjoint of the state before step 0.
        d_h_init = dh if ctx.needs_input_grad[1] else None
        return d_x, d_h_init, d_w_ih, d_w_hh, d_b_ih, d_b_hh


def gru_sequence(gru: GRUWeights, x: torch.Tensor,
                 h_init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of a one-layer batch-first GRU over ``x`` (B, T, D).

    Returns ``(h, h0)``: ``h`` (B, T, H) equals ``torch.nn.GRU``'s output
    from the initial state ``h_init`` (B, H) (``None``: zeros), and ``h0``
    (B, H) is a copy of ``h[:, 0]``, its own output so that reading the first
    step does not cost autograd a (B, T, H) zero tensor and a sum in the
    backward pass of :class:`_GRUSequence`.
    """
    return _GRUSequence.apply(x, h_init, *gru)


_EULER_INPUTS = ("z0", "projected", "noise", "w_state", "w_out", "b_out", "w1", "b1",
                 "w2", "b2", "w_energy", "c", "grad_scale", "inv_mass", "friction", "dt")
_EULER_INDEX = {name: i for i, name in enumerate(_EULER_INPUTS)}


class _EulerPath(torch.autograd.Function):
    r"""Posterior Euler-Maruyama paths with a hand-written backward.

    Inputs, in the order of ``_EULER_INPUTS`` (see :func:`euler_path`):
    ``z0`` (rows, state_dim); ``projected`` (rows, T, hidden), the projected
    context ``P`` of each observation; ``noise``, the scaled increments
    (T - 1, n_sub, rows, d); the drift's ``w_state``, ``w_out``, ``b_out``
    (:class:`DriftWeights`); the energy's ``w1``, ``b1``, ``w2``, ``b2``,
    ``w_energy`` (its output weight) and ``c`` (:class:`EnergyWeights`);
    ``grad_scale`` ``g = dt / gamma`` (overdamped, else None); ``inv_mass``
    and ``friction`` (d,) (underdamped, else None); ``dt``. Returns ``(zs,
    sq)``: the state at every observation, (T, rows, state_dim), and the
    summed ``|u|^2`` of each interval, (T, rows), with ``sq[0] = 0``. Not
    twice differentiable.

    **Forward.** Only what the next state needs is computed inside the loop
    (module docstring): per Euler step ``n`` with ``z = z_n``,
    ``[a1 | a_c] = z K1^T + [2 b1 | 2 P_k]``, ``s1 = sigmoid(a1)``,
    ``s_c = sigmoid(a_c)``, ``s2``, ``r2 = s2 - s2^2``, ``g1 = r2 W2w``,
    ``r1 = s1 - s1^2``, ``d1 = r1 g1`` and ``z_{n+1} = z L + [s_c | d1] M +
    xi_n``. The control ``u_n = s_c (2 Wo)^T + bo2`` and the factors the
    backward multiplies by are batched operations over all steps afterwards.

    **Backward.** With ``lam_n = dLoss / dz_{n+1}`` (the adjoint of the state
    after step ``n``, started from the gradient at the last observation) and
    ``sig_k = 2 dLoss/dsq_k / dt`` for the interval ``k`` of step ``n``, the
    recursion from the last step down is, writing ``lam_f`` for the force
    columns of ``lam`` (all of it overdamped, the momenta underdamped)::

        [t_c | t_e] = lam_f M_f^T  (+ sig_k * (u_n 2 dt Wo) on t_c)
                                        M_f = [2 dt Wo^T ; -4 g W1]: M's force rows
        y_c  = t_c * r_c                 r_c = s_c - s_c^2:  dLoss / d a_c
        dg1  = t_e * r1                  dLoss / d g1
        dy2  = (dg1 W2w^T) * e2          e2 = r2 (1 - 2 s2): dLoss / d a2
        y1   = (dy2 (4 W2)) * r1 + t_e * e1
                                        e1 = d1 (1 - 2 s1): dLoss / d a1
        lam_{n-1} = lam_n L^T + [y1 | y_c] K1  (+ dLoss / dz at an observation)

    and ``dLoss / dz0 = lam_{-1}``. Every parameter gradient is then a sum over
    steps of an outer product, one matrix product over all steps:
    ``dK1 = sum z_n^T [y1 | y_c]`` (giving ``W1`` and ``Ws`` after the folding
    constant 2), ``dWo = dt (2 sum gu^T s_c - (sum gu) 1^T)`` with ``gu = lam_f +
    sig * u``, ``dbo = dt sum gu``, ``dW1`` also gets ``-4 g sum d1^T lam_f``,
    ``dW2w = sum r2^T dg1`` (giving ``W2`` and ``w`` through ``W2w = 4 w * W2``),
    ``dW2`` also ``4 sum s1^T dy2 - 2 (sum dy2) 1^T``, ``db1 = 2 sum y1``,
    ``db2 = 2 sum dy2``, ``dc = -2 g sum lam_f . q``, and each interval's
    context adjoint ``dP_k = 2 sum_{n in k} y_c``. The Brownian increments'
    adjoint is ``lam_f`` itself; ``g``, ``M^-1`` and the friction get
    ``-sum lam_f . grad E``, ``dt sum lam_q . p`` and ``-dt sum lam_f . p``.
    """

    @staticmethod
    def forward(ctx, *inputs):
        a = dict(zip(_EULER_INPUTS, inputs))
        z0, projected, noise, dt = a["z0"], a["projected"], a["noise"], a["dt"]
        n_obs, n_sub, rows, d = noise.shape
        n_obs += 1
        n_steps = (n_obs - 1) * n_sub
        hidden, state_dim = a["w2"].shape[0], z0.shape[1]
        under = a["inv_mass"] is not None
        coef = ({"inv_mass": a["inv_mass"], "friction": a["friction"]} if under
                else {"grad_scale": a["grad_scale"]})
        fold = fold_step(DriftWeights(a["w_state"], a["w_out"], a["b_out"], None, None),
                         EnergyWeights(a["w1"], a["b1"], a["w2"], a["b2"],
                                       a["w_energy"], a["c"]), coef, dt)
        fe, out_layers, trans = fold.energy, fold.out_layers, fold.trans
        pad = state_dim - d
        bias = _take((rows, n_obs, 2 * hidden), z0)
        bias[..., :hidden].copy_(fe.b1_2)
        torch.mul(projected, 2.0, out=bias[..., hidden:])
        drive = z0.new_zeros((n_steps, rows, state_dim))
        torch.add(noise.reshape(n_steps, rows, d), fold.bo2, alpha=dt,
                  out=drive[..., pad:])
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
        k1_t = fold.k1.t()
        g1 = z0.new_empty((rows, hidden))
        for n in range(n_steps):
            z = zs_b[n]
            torch.addmm(biases[n // n_sub + 1], z, k1_t, out=first_b[n]).sigmoid_()
            _energy_back(s1_b[n], fe, s2_b[n], g1, d1_b[n], r2_out=r2_b[n],
                         r1_out=r1_b[n])
            torch.addmm(drives[n], z, trans, out=zs_b[n + 1]).addmm_(act_b[n], out_layers)
        _give(bias)  # Only the loop reads it.
        s1_all, sc_all, d1_all = x_all.split(hidden, dim=2)
        # The backward's factors, in place: rr = [r_c | r1], s2 -> e2, e1.
        torch.addcmul(sc_all, sc_all, sc_all, value=-1.0, out=bufs["rr"][..., :hidden])
        torch.addcmul(bufs["r2"], bufs["s2"], bufs["r2"], value=-2.0, out=bufs["s2"])
        torch.addcmul(d1_all, s1_all, d1_all, value=-2.0, out=bufs["e1"])
        u_all = torch.addmm(fold.bo2, sc_all.reshape(n_steps * rows, hidden),
                            2.0 * a["w_out"].t())
        u_all = u_all.view(n_steps, rows, d)
        sq = z0.new_zeros((n_obs, rows))
        sq[1:] = (u_all * u_all).sum(-1).view(n_obs - 1, n_sub, rows).sum(1)
        ctx.save_for_backward(a["w1"], a["w2"], a["w_energy"], a["c"], a["grad_scale"])
        ctx.bufs, ctx.u, ctx.fold = bufs, u_all, fold
        ctx.dt, ctx.n_sub, ctx.under = dt, n_sub, under
        return bufs["zs"][::n_sub].clone(), sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_zs, grad_sq):
        w1, w2, w_energy, c, gs = ctx.saved_tensors
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
        # M_f^T = [2 dt Wo | -4 g W1^T]: the output layers' force rows, transposed.
        w_td = fold.out_layers[:, state_dim - d:].t()
        w2w_t, w2_4 = fold.energy.w2w.t(), fold.energy.w2_4t.t()
        trans = fold.trans
        k1 = fold.k1.t().contiguous().t()  # The skinny product, as in fold_step.
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
        # q = [y1 | y_c | dg1] per step. Per-step views are made once (_steps).
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
        grads = {"z0": out}

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
        grads["w_state"] = d_k1[hidden:]  # d_k1's rows are [W1 | 0; Ws].
        grads["w_out"] = (2.0 * _sum_outer(gu, x_all[..., hidden:2 * hidden])
                          - gu_sum[:, None]) * dt
        grads["b_out"] = gu_sum * dt
        grads["w1"] = d_k1[:hidden, :d] - (4.0 * step_g) * _sum_outer(
            lam_f, x_all[..., 2 * hidden:]).t()
        grads["b1"] = 2.0 * dy_sum[:hidden]
        dy2_sum = dy2_flat.sum(0)
        r2_flat = flat(bufs["r2"])
        d_w2w = (dg1_flat.t() @ r2_flat).t()
        w4 = 4.0 * w_energy[0]
        grads["w2"] = (4.0 * (s1_flat.t() @ dy2_flat).t() - 2.0 * dy2_sum[:, None]
                       + w4[:, None] * d_w2w)
        grads["b2"] = 2.0 * dy2_sum
        grads["w_energy"] = (4.0 * (w2 * d_w2w).sum(1)).unsqueeze(0)
        grads["c"] = (lam_f_flat * q_flat).sum() * (-2.0 * step_g)
        # Each interval's context adjoint: twice the sum of its steps' y_c.
        d_projected = like.new_empty((rows, n_obs, hidden))
        d_projected[:, 0] = 0.0
        d_yc = back["q"][..., hidden:2 * hidden].view(n_obs - 1, n_sub, rows, hidden)
        dest = d_projected[:, 1:].transpose(0, 1)
        torch.mul(d_yc[:, 0], 2.0, out=dest)
        for j in range(1, n_sub):
            dest.add_(d_yc[:, j], alpha=2.0)
        grads["projected"] = d_projected
        grads["noise"] = lam_f_flat.reshape(n_obs - 1, n_sub, rows, d).clone()
        needs = dict(zip(_EULER_INPUTS, ctx.needs_input_grad))
        if under:
            p_flat = z_flat[:, d:]
            if needs["inv_mass"]:
                grads["inv_mass"] = (flat(lam_all[..., :d]) * p_flat).sum(0) * dt
            if needs["friction"]:
                grads["friction"] = (lam_f_flat * p_flat).sum(0) * -dt
        elif needs["grad_scale"]:
            g_flat = torch.addmm(q_flat, d1_flat, 4.0 * w1, beta=2.0 * float(c))
            grads["grad_scale"] = -(lam_f_flat * g_flat).sum()
        _give(*bufs.values(), *back.values())
        if grad_sq is not None:
            _give(uw)
        return tuple(grads.get(name) for name in _EULER_INPUTS)


def euler_path(z0: torch.Tensor, projected: torch.Tensor, scaled_noise: torch.Tensor,
               drift: DriftWeights, energy: EnergyWeights, coef: dict,
               dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior latent paths and squared controls, with autograd support.

    Parameters
    ----------
    z0 : Tensor of shape (rows, state_dim)
        Initial latent state.
    projected : Tensor of shape (rows, T, hidden)
        Projected encoder context per observation.
    scaled_noise : Tensor of shape (T - 1, n_sub, rows, latent_dim)
        Brownian increments times ``coef["noise_scale"]``.
    drift : DriftWeights
        The posterior drift's tensors (its context layer is not read: the
        context arrives projected).
    energy : EnergyWeights
        The energy's tensors.
    coef : dict
        From :func:`nldseg._dynamics.step_coefficients`.
    dt : float
        Euler step.

    Returns
    -------
    zs : Tensor of shape (T, rows, state_dim)
        Latent state at every observation.
    sq : Tensor of shape (T, rows)
        Summed ``|f_phi|^2`` of each interval (``sq[0] = 0``).
    """
    if scaled_noise.shape[0] == 0:  # A single observation: no step to take.
        return z0.unsqueeze(0), z0.new_zeros((1, z0.shape[0]))
    inputs = {"z0": z0, "projected": projected, "noise": scaled_noise,
              "w_state": drift.w_state, "w_out": drift.w_out, "b_out": drift.b_out,
              "w1": energy.w1, "b1": energy.b1, "w2": energy.w2, "b2": energy.b2,
              "w_energy": energy.w_out, "c": energy.c,
              "grad_scale": coef.get("grad_scale") if "inv_mass" not in coef else None,
              "inv_mass": coef.get("inv_mass"), "friction": coef.get("friction"),
              "dt": float(dt)}
    return _EulerPath.apply(*(inputs[name] for name in _EULER_INPUTS))


class LinearWeights(NamedTuple):
    """``weight`` (out, in) and ``bias`` (out,) of one linear layer."""

    weight: torch.Tensor
    bias: torch.Tensor


class InferenceStepper:
    """Posterior Euler-Maruyama steps for inference: no autograd, folded weights.

    The same steps as :meth:`nldseg._model.NeuralLangevinVAE.advance` (to float
    rounding), on the folded weights of :func:`fold_step`: per Euler step
    two matrix products and two sigmoids of width ``hidden``, then the linear
    state update. The encoder's context enters as the first layer's bias,
    computed straight from the GRU output (the context layer and the drift's
    context layer are folded into one). Built once per simulation or stream,
    from trained weights that no longer change.

    Parameters
    ----------
    drift : DriftWeights
    energy : EnergyWeights
    context : LinearWeights
        The encoder's context layer (GRU output -> context).
    coef : dict
        From :func:`nldseg._dynamics.step_coefficients`.
    dt : float
        Euler step.
    """

    def __init__(self, drift: DriftWeights, energy: EnergyWeights,
                 context: LinearWeights, coef: dict, dt: float) -> None:
        with torch.no_grad():
            fold = fold_step(drift, energy, coef, dt)
            d, hidden = energy.w1.shape[1], energy.w2.shape[0]
            self.k1_t = fold.k1.t()
            # GRU output h -> first-layer bias [2 b1 | 2 P(h)], P = context_in(context(h)).
            w_ci, b_ci = drift.w_context, drift.b_context
            w_c, b_c = context.weight, context.bias
            self.bias_w_t = torch.cat([torch.zeros_like(w_ci @ w_c), w_ci @ w_c]).t() * 2.0
            self.bias_b = torch.cat([energy.b1, w_ci @ b_c + b_ci]) * 2.0
            self.energy = fold.energy
            self.wo2_t = (2.0 * drift.w_out).t()
            self.bo2, self.out_layers, self.trans = fold.bo2, fold.out_layers, fold.trans
            self.noise_scale = float(coef["noise_scale"])
            self.kl_scale = float(coef["kl_scale"])
            self.dt_bo2 = dt * self.bo2
        self.dt, self.d, self.hidden = dt, d, hidden
        self.under = "inv_mass" in coef

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
                out: torch.Tensor | None = None,
                log_ratio: torch.Tensor | None = None) -> torch.Tensor:
        """The Euler steps from one observation to the next.

        Parameters
        ----------
        z : Tensor of shape (rows, state_dim)
            Rows are sequence-major: ``row = sequence * n_paths + path``.
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
        log_ratio : Tensor of shape (rows,) or None
            If given, the log density ratio of the prior's Euler steps to the
            posterior's, at the steps taken, is added to it: per step
            ``-kl_scale |u|^2 - sqrt(2 kl_scale) u . eps`` for the control
            ``u`` and the standard normal increment ``eps`` (Girsanov's
            weight; its mean is minus the KL increment).

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
            _energy_back(s1, self.energy, s2_w, g1_w, x[:, 2 * hidden:])
            if sq is not None or log_ratio is not None:
                u = torch.addmm(self.bo2, x[:, hidden:2 * hidden], self.wo2_t)
                u2 = (u * u).sum(-1)
                if sq is not None:
                    sq.add_(u2)
                if log_ratio is not None:
                    eps = (drive[j] - self.dt_bo2) / self.noise_scale
                    log_ratio.sub_(u2 * self.kl_scale).sub_(
                        (u * eps).sum(-1) * math.sqrt(2.0 * self.kl_scale))
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
