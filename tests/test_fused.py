"""The hand-differentiated training kernels equal autograd on the plain formulas."""

import pytest
import torch

from nldseg import _fused
from nldseg._fused import GRUWeights, euler_path, gru_sequence, release_buffers
from nldseg._model import NeuralLangevinVAE

DTYPE = torch.float64


def _model(dynamics: str, learn: bool = False, latent_dim: int = 3,
           encoder_input: str = "linear") -> NeuralLangevinVAE:
    torch.manual_seed(0)
    m = NeuralLangevinVAE(4, latent_dim, dynamics, 16, 8, 1.3, 0.7, 1.2, learn,
                          encoder_input=encoder_input).to(DTYPE)
    with torch.no_grad():  # A control large enough to matter.
        m.drift_net.out.weight.normal_(std=0.3)
    return m


def _inputs(m: NeuralLangevinVAE, rows: int = 5, n_obs: int = 7, n_sub: int = 2):
    gen = torch.Generator().manual_seed(1)
    z0 = torch.randn(rows, m.state_dim, generator=gen, dtype=DTYPE, requires_grad=True)
    projected = torch.randn(rows, n_obs, 16, generator=gen, dtype=DTYPE,
                            requires_grad=True)
    noise = torch.randn(n_obs - 1, n_sub, rows, m.latent_dim, generator=gen, dtype=DTYPE)
    return z0, projected, noise


def _euler(m, z0, projected, scaled_noise, coef, dt=0.5):
    """The training kernel on the model's weights."""
    return euler_path(z0, projected, scaled_noise, m.drift_net.weights(),
                      m.energy.weights(), coef, dt)


def _autograd_loop(m, z0, projected, scaled_noise, dt, coef):
    """The same steps recorded by autograd (``advance`` with grad enabled)."""
    z, zs, sqs = z0, [z0], [z0.new_zeros(z0.shape[0])]
    for k in range(1, projected.shape[1]):
        z, sq = m.advance(z, projected[:, k], scaled_noise[k - 1], dt, coef)
        zs.append(z)
        sqs.append(sq)
    return torch.stack(zs), torch.stack(sqs)


def _gru_weights(gru):
    return GRUWeights(gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)


def _grads(fn, m, tensors, weights):
    """Gradients of ``sum(w * out)`` over the outputs of ``fn`` w.r.t. everything."""
    m.zero_grad()
    for t in tensors:
        t.grad = None
    outs = fn()
    loss = sum((w * o).sum() for w, o in zip(weights, outs) if w is not None)
    loss.backward()
    named = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    named.update({f"input{i}": t.grad.clone() for i, t in enumerate(tensors)})
    return [o.detach() for o in outs], named


# Both outputs weighted: every step size dt = 1, 1/2, 1/4 and latent size 3,
# and 9, whose parameter gradients take _sum_outer's reshape branch (more than
# 8 columns: the state, and the control's and the energy's latent columns).
# One output unused (its gradient None): dt = 1/2, latent size 3.
@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
@pytest.mark.parametrize("learn", [False, True])
@pytest.mark.parametrize("outputs, latent_dim, dt", [
    *[("both", latent_dim, dt) for latent_dim in (3, 9) for dt in (1.0, 0.5, 0.25)],
    ("paths only", 3, 0.5), ("controls only", 3, 0.5)])
def test_euler_path_values_and_gradients_equal_autograd(dynamics, learn, outputs,
                                                        latent_dim, dt):
    m = _model(dynamics, learn, latent_dim)
    z0, projected, noise = _inputs(m, n_sub=round(1 / dt))
    gen = torch.Generator().manual_seed(2)
    w_z = torch.randn(7, 5, m.state_dim, generator=gen, dtype=DTYPE)
    w_sq = torch.randn(7, 5, generator=gen, dtype=DTYPE)
    weights = {"both": (w_z, w_sq), "paths only": (w_z, None),
               "controls only": (None, w_sq)}[outputs]

    def run(kernel):
        coef = m.step_coefficients(dt)  # Inside, so gamma/mass gradients flow.
        return kernel(m, z0, projected, noise * coef["noise_scale"], coef, dt)

    def reference(m, z0, projected, scaled_noise, coef, dt):
        return _autograd_loop(m, z0, projected, scaled_noise, dt, coef)

    want_out, want = _grads(lambda: run(reference), m, [z0, projected], weights)
    got_out, got = _grads(lambda: run(_euler), m, [z0, projected], weights)
    for w, g in zip(want_out, got_out):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert set(got) == set(want)
    if learn:  # beta and gamma reach the loss through the noise and the drift.
        langevin = {"log_beta", "log_gamma"} | (
            {"log_mass"} if dynamics == "underdamped" else set())
        assert langevin <= set(got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12,
                                   msg=lambda msg, name=name: f"{name}: {msg}")


def test_sum_outer_branches_agree():
    """Both ways of summing the per-step outer products, on either side of 8 columns."""
    from nldseg._fused import _sum_outer

    gen = torch.Generator().manual_seed(3)
    for k in (3, 8, 9, 18):
        a = torch.randn(6, 5, k, generator=gen, dtype=DTYPE)
        b = torch.randn(6, 5, 7, generator=gen, dtype=DTYPE)
        want = torch.einsum("srk,srm->km", a, b)
        torch.testing.assert_close(_sum_outer(a, b), want, rtol=1e-12, atol=1e-12)


def test_euler_path_in_float32_matches_the_inference_loop():
    """Training kernel (autograd on) vs the no-grad inference loop, float32."""
    m = _model("overdamped").float()
    z0, projected, noise = (t.detach().float() for t in _inputs(m, rows=64, n_obs=30))
    coef = m.step_coefficients(0.5)
    with torch.no_grad():
        coef0 = m.step_coefficients(0.5)
        want = _autograd_loop(m, z0, projected, noise * coef0["noise_scale"], 0.5, coef0)
    got = _euler(m, z0, projected, noise * coef["noise_scale"], coef)
    torch.testing.assert_close(got[0].detach(), want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1].detach(), want[1], rtol=1e-4, atol=1e-5)


def test_single_observation_takes_no_step():
    m = _model("underdamped")
    z0, projected, noise = _inputs(m, n_obs=1)
    zs, sq = _euler(m, z0, projected, noise, m.step_coefficients(0.5))
    assert zs.shape == (1, 5, 6) and sq.shape == (1, 5)
    torch.testing.assert_close(zs[0], z0)
    zs.sum().backward()
    torch.testing.assert_close(z0.grad, torch.ones_like(z0))


@pytest.mark.parametrize("n_obs", [9, 1])
@pytest.mark.parametrize("outputs", ["both", "sequence only", "first only"])
@pytest.mark.parametrize("start", ["zeros", "given"])
def test_gru_sequence_equals_torch_gru(n_obs, outputs, start):
    torch.manual_seed(0)
    gru = torch.nn.GRU(4, 16, batch_first=True).to(DTYPE)
    x = torch.randn(5, n_obs, 4, dtype=DTYPE, requires_grad=True)
    h_init = (torch.randn(5, 16, dtype=DTYPE).tanh().requires_grad_()
              if start == "given" else None)
    inputs = [x] if h_init is None else [x, h_init]
    w = torch.randn(5, n_obs, 16, dtype=DTYPE)
    w0 = torch.randn(5, 16, dtype=DTYPE)
    weights = {"both": (w, w0), "sequence only": (w, None),
               "first only": (None, w0)}[outputs]

    def torch_gru():
        h = gru(x, None if h_init is None else h_init[None])[0]
        return h, h[:, 0]

    want_h, want = _grads(torch_gru, gru, inputs, weights)
    got_h, got = _grads(lambda: gru_sequence(_gru_weights(gru), x, h_init), gru,
                        inputs, weights)
    for g, w_ in zip(got_h, want_h):
        torch.testing.assert_close(g, w_, rtol=1e-12, atol=1e-12)
    assert set(got) == set(want) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                     "bias_hh_l0"} | {f"input{i}"
                                                      for i in range(len(inputs))}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)


def test_buffers_are_reused_then_released():
    release_buffers()
    m = _model("overdamped")
    z0, projected, noise = _inputs(m)
    coef = m.step_coefficients(0.5)

    def step():
        zs, sq = _euler(m, z0, projected, noise, coef)
        (zs.sum() + sq.sum()).backward()

    step()
    pooled = {id(b) for bufs in _fused._POOL.values() for b in bufs}
    assert pooled
    step()  # Takes the same buffers and gives them back.
    assert {id(b) for bufs in _fused._POOL.values() for b in bufs} == pooled
    release_buffers()
    assert not _fused._POOL


def test_second_backward_through_the_kernels_raises():
    m = _model("overdamped")
    z0, projected, noise = _inputs(m)
    zs, sq = _euler(m, z0, projected, noise, m.step_coefficients(0.5))
    zs.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph is not supported"):
        zs.sum().backward()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_folded_energy_gradient_equals_the_formula(dtype, tol):
    """The flows' folded grad E (sigmoid form, folded constants) is EnergyMLP.grad."""
    from nldseg._fused import fold_energy, folded_energy_grad
    from nldseg._model import EnergyMLP

    torch.manual_seed(1)
    e = EnergyMLP(3, 32).to(dtype)
    with torch.no_grad():
        for p in e.parameters():
            p.normal_(0.0, 0.7)
        z = 2.0 * torch.randn(50, 3, dtype=dtype)
        got = folded_energy_grad(z, fold_energy(e.weights()))
    torch.testing.assert_close(got, e.grad(z).detach(), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_inference_stepper_equals_the_plain_formulas(dynamics):
    """Folded weights, merged first layer and per-sequence bias: same steps."""
    m = _model(dynamics)
    n_seq, n_samples, hidden = 3, 4, 16
    rows = n_seq * n_samples
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(n_seq, hidden, generator=gen, dtype=DTYPE)
    z = torch.randn(rows, m.state_dim, generator=gen, dtype=DTYPE)
    noise = torch.randn(2, rows, 3, generator=gen, dtype=DTYPE)
    with torch.no_grad():
        coef = m.step_coefficients(0.5)
        projected = m.project_context(h).repeat_interleave(n_samples, 0)
        want_z, want_sq = m.advance(z, projected, noise * coef["noise_scale"], 0.5, coef)
        stepper = m.inference_stepper(0.5)
        sq = torch.zeros(rows, dtype=DTYPE)
        got_z = stepper.advance(z, stepper.bias(h), stepper.drive(noise), sq=sq)
        # One sequence per row: the bias is added by addmm instead of a view.
        one = stepper.advance(z[:n_samples], stepper.bias(h[:1]).expand(n_samples, -1),
                              stepper.drive(noise[:, :n_samples]))
    torch.testing.assert_close(got_z, want_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sq, want_sq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one, want_z[:n_samples], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_stepper_log_ratio_is_the_prior_over_posterior_density_of_the_steps(dynamics):
    """Girsanov's weight of the Euler steps, against Gaussian transition densities."""
    from nldseg._dynamics import euler_step

    m = _model(dynamics)
    n_seq, n_samples, hidden, d = 2, 5, 16, 3
    rows = n_seq * n_samples
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(n_seq, hidden, generator=gen, dtype=DTYPE)
    z = torch.randn(rows, m.state_dim, generator=gen, dtype=DTYPE)
    noise = torch.randn(2, rows, d, generator=gen, dtype=DTYPE)
    with torch.no_grad():
        coef = m.step_coefficients(0.5)
        sd = coef["noise_scale"]  # the standard deviation of one step's noise
        projected = m.project_context(h).repeat_interleave(n_samples, 0)
        want, state = torch.zeros(rows, dtype=DTYPE), z
        for j in range(2):
            control = m.drift_net(state, projected)
            grad_e = m.energy.grad(state[:, :d])
            zero = torch.zeros_like(control)
            prior_mean = euler_step(state, zero, grad_e, zero, 0.5, coef)
            post_mean = euler_step(state, control, grad_e, zero, 0.5, coef)
            state = euler_step(state, control, grad_e, noise[j] * sd, 0.5, coef)
            noisy = slice(0, d) if dynamics == "overdamped" else slice(d, 2 * d)
            prior = torch.distributions.Normal(prior_mean[:, noisy], sd)
            post = torch.distributions.Normal(post_mean[:, noisy], sd)
            moved = state[:, noisy]
            want += (prior.log_prob(moved) - post.log_prob(moved)).sum(-1)
        stepper = m.inference_stepper(0.5)
        got = torch.zeros(rows, dtype=DTYPE)
        got_z = stepper.advance(z, stepper.bias(h), stepper.drive(noise), log_ratio=got)
    torch.testing.assert_close(got_z, state, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert want.abs().max() > 1e-3  # the control moves the steps: a weight that can differ


def test_simulate_without_autograd_can_skip_the_kl():
    m = _model("overdamped")
    x = torch.randn(2, 6, 4, dtype=DTYPE)
    noise = torch.randn(5, 2, 2 * 3, 3, dtype=DTYPE)
    with torch.no_grad():
        full = m.simulate(x, noise, 0.5, n_paths=3)
        paths = m.simulate(x, noise, 0.5, n_paths=3, with_kl=False)
    assert paths.kl_path is None and full.kl_path.shape == (6, 6)
    torch.testing.assert_close(paths.z, full.z)
    # With autograd (training) the same paths, through the training kernel.
    trained = m.simulate(x, noise, 0.5, n_paths=3)
    torch.testing.assert_close(trained.z.detach(), full.z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(trained.kl_path.detach(), full.kl_path, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
@pytest.mark.parametrize("encoder_input", ["linear", "quadratic"])
def test_inference_steps_the_encoder_as_torch_gru_does(dynamics, encoder_input):
    """On CPU the GRU is stepped inside the loop (gru_cell); on CUDA it runs first."""
    m = _model(dynamics, encoder_input=encoder_input).float()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 9, 4, generator=gen)
    noise = torch.randn(8, 2, 6, 3, generator=gen)
    z0 = torch.randn(6, m.state_dim, generator=gen)
    with torch.no_grad():
        h = m.gru(m.encoder_frames(x))[0]
        stepped = m._simulate_inference(x, None, h[:, 0], z0, noise, 0.5, None, True)
        whole = m._simulate_inference(x, h, None, z0, noise, 0.5, None, True)
    # Equal to float32 rounding (often bit for bit; the GEMMs' blocking differs).
    torch.testing.assert_close(stepped.z, whole.z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stepped.kl_path, whole.kl_path, rtol=1e-5, atol=1e-6)


def test_quadratic_encoder_reads_squared_projections():
    m = _model("overdamped", encoder_input="quadratic")
    x = torch.randn(2, 5, 4, dtype=DTYPE)
    frames = m.encoder_frames(x)
    assert frames.shape == (2, 5, 4 + m.enc_quad.out_features)
    torch.testing.assert_close(frames[..., :4], x)
    w, b = m.enc_quad.weight, m.enc_quad.bias
    torch.testing.assert_close(frames[..., 4:], (x @ w.T + b) ** 2)
    assert _model("overdamped").encoder_frames(x) is x  # "linear": the frames.


def test_quadratic_encoder_trains_through_the_gru_kernel():
    """Training (hand-written GRU backward) and autograd on torch's GRU agree."""
    m = _model("overdamped", encoder_input="quadratic")
    x = torch.randn(3, 6, 4, dtype=DTYPE)
    w = torch.randn(3, 6, 16, dtype=DTYPE)
    w0 = torch.randn(3, 2 * m.state_dim, dtype=DTYPE)

    def trained():  # _encode_hidden with autograd on CPU: the fused kernel.
        h, mean, log_std = m._encode_hidden(x)
        return h, torch.cat([mean, log_std], -1)

    def reference():
        h = m.gru(m.encoder_frames(x))[0]
        return h, torch.cat(m.initial_posterior(h[:, 0]), -1)

    want_h, want = _grads(reference, m, [], (w, w0))
    got_h, got = _grads(trained, m, [], (w, w0))
    for g, w_ in zip(got_h, want_h):
        torch.testing.assert_close(g, w_, rtol=1e-12, atol=1e-12)
    assert {"enc_quad.weight", "enc_quad.bias"} <= set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12,
                                   msg=lambda msg, name=name: f"{name}: {msg}")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_euler_path_on_cuda_equals_cpu(dynamics):
    """The training kernel on a GPU: the CPU's values and gradients (float64)."""
    results = []
    for device in ("cpu", "cuda"):
        m = _model(dynamics, learn=True).to(device)
        z0, projected, noise = (t.detach().to(device) for t in _inputs(m))
        z0.requires_grad_(True)

        def run(m=m, z0=z0, projected=projected, noise=noise):
            coef = m.step_coefficients(0.5)
            return _euler(m, z0, projected, noise * coef["noise_scale"], coef)

        outs, grads = _grads(run, m, [z0], (1.0, 1.0))
        results.append(([o.cpu() for o in outs], {k: g.cpu() for k, g in grads.items()}))
    (cpu_out, cpu_grads), (gpu_out, gpu_grads) = results
    for a, b in zip(gpu_out, cpu_out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert set(gpu_grads) == set(cpu_grads)
    for name in cpu_grads:
        torch.testing.assert_close(gpu_grads[name], cpu_grads[name], rtol=1e-8,
                                   atol=1e-10)


def test_buffers_given_back_by_another_thread_are_reused():
    """Autograd may run the backward on another thread (CUDA's device thread)."""
    import threading

    release_buffers()
    m = _model("overdamped")
    z0, projected, noise = _inputs(m)
    coef = m.step_coefficients(0.5)
    zs, sq = _euler(m, z0, projected, noise, coef)
    worker = threading.Thread(target=(zs.sum() + sq.sum()).backward)
    worker.start()
    worker.join()
    pooled = {id(b) for bufs in _fused._POOL.values() for b in bufs}
    assert pooled
    zs, sq = _euler(m, z0, projected, noise, coef)  # Takes them again.
    assert {id(b) for bufs in _fused._POOL.values() for b in bufs} < pooled
    (zs.sum() + sq.sum()).backward()
    assert {id(b) for bufs in _fused._POOL.values() for b in bufs} == pooled
    release_buffers()
