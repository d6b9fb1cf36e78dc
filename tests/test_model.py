"""Torch modules: analytic energy gradient, partition function, KL terms."""

import math

import pytest
import torch

from nldseg._dynamics import euler_step, step_coefficients
from nldseg._model import EnergyMLP, NeuralLangevinVAE, _gaussian_kl


def test_energy_gradient_matches_autograd():
    torch.manual_seed(0)
    e = EnergyMLP(3, 16).double()
    z = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(e(z).sum(), z)
    torch.testing.assert_close(e.grad(z), g)
    # Also for a batch of higher rank (used on (T, B, d) paths).
    z3 = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    (g3,) = torch.autograd.grad(e(z3).sum(), z3)
    torch.testing.assert_close(e.grad(z3), g3)


def test_quadratic_coefficient_stays_positive():
    e = EnergyMLP(2, 4)
    with torch.no_grad():
        e.raw_c.fill_(-50.0)
    assert float(e.c.detach()) > 0


def _quadratic_energy_model(dynamics="overdamped", mass=1.0):
    """A model whose MLP is zeroed, so E = c |z|^2 + 0.3 (d = 2, beta = 2).

    Returns the model and the exact log Z = d/2 log(pi / (beta c)) - beta 0.3
    of the positions (the MLP's constant output 0.3 scales Z by exp(-beta 0.3)),
    with the model's beta (2 to float32 rounding: log beta is stored in float32).
    """
    torch.manual_seed(0)
    m = NeuralLangevinVAE(4, 2, dynamics, 8, 4, 2.0, 1.0, mass, False).double()
    with torch.no_grad():
        m.energy.out.weight.zero_()
        m.energy.out.bias.fill_(0.3)
    c, beta = float(m.energy.c.detach()), float(m.log_beta.detach().exp())
    return m, math.log(math.pi / (beta * c)) - beta * 0.3


def test_log_partition_of_a_quadratic_energy():
    m, exact = _quadratic_energy_model()
    c, beta = float(m.energy.c.detach()), 2.0
    noise = torch.randn(200000, 2, dtype=torch.float64)
    est = m.log_partition(noise, torch.zeros(2, dtype=torch.float64),
                          torch.full((2,), 1.0 / math.sqrt(beta * c), dtype=torch.float64))
    assert float(est.detach()) == pytest.approx(exact, abs=0.01)


@pytest.mark.parametrize("n_codes, spread", [(7, 0.3), (64, 2.0), (1, 1.0)])
def test_log_z_from_codes_is_consistent_for_any_batch_of_codes(n_codes, spread):
    # The mixture proposal (broad Gaussian + the codes' posteriors, stratified)
    # must give the exact log Z of a quadratic energy wherever the codes sit,
    # including codes far from the mass and a single code.
    m, exact = _quadratic_energy_model()
    mean = spread * torch.randn(n_codes, 2, dtype=torch.float64) + 1.0
    log_std = torch.full((n_codes, 2), math.log(0.5), dtype=torch.float64)
    est = m._log_z_from_codes(mean, log_std, torch.randn(100000, 2, dtype=torch.float64))
    assert float(est.detach()) == pytest.approx(exact, abs=0.02)


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_stationary_initial_kl_is_finite_and_reaches_the_energy(dynamics):
    torch.manual_seed(0)
    m = NeuralLangevinVAE(4, 2, dynamics, 8, 4, 1.0, 1.0, 1.0, False)
    x = torch.randn(3, 1, 4)  # one step: only the initial KL involves the energy
    eps0 = torch.randn(3, m.state_dim)
    log_lik, kl = m.elbo_terms(x, torch.ones(3, 1), torch.zeros(0, 2, 3, 2), eps0,
                               0.5, partition_noise=torch.randn(256, 2))
    assert torch.isfinite(log_lik).all() and torch.isfinite(kl).all()
    kl.sum().backward()
    assert m.energy.lin1.weight.grad.abs().sum() > 0
    assert not hasattr(m, "p0_mean")



def _learnable_model(dynamics):
    """A small float64 model (4 features, d = 2), beta, gamma and mass learned; seed 0."""
    torch.manual_seed(0)
    return NeuralLangevinVAE(4, 2, dynamics, 8, 4, 1.0, 1.0, 1.0, True).double()


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_fixed_prior_rows_keep_the_kl_and_train_only_the_encoder(dynamics):
    # A row whose p(z_0) is held fixed has the same KL; its gradient reaches
    # the encoder (through z_0) but not the energy, beta or the mass.
    def grads(fixed):
        m = _learnable_model(dynamics)
        x = torch.randn(3, 1, 4, dtype=torch.float64)
        eps0 = torch.randn(6, m.state_dim, dtype=torch.float64)
        _, kl = m.elbo_terms(x, torch.ones(3, 1, dtype=torch.float64),
                             torch.zeros(0, 2, 6, 2, dtype=torch.float64), eps0, 0.5,
                             n_paths=2, partition_noise=torch.randn(256, 2,
                                                                    dtype=torch.float64),
                             fixed_prior_rows=fixed)
        kl[2:4].sum().backward()  # Row 1 of the batch (two paths).
        return kl.detach(), m

    kl_free, free = grads(None)
    kl_held, held = grads(torch.tensor([False, True, False]))
    torch.testing.assert_close(kl_held, kl_free)
    prior = [held.energy.lin1.weight, held.energy.raw_c, held.log_beta, held.log_mass]
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in prior)
    assert float(free.energy.lin1.weight.grad.abs().sum()) > 0
    assert float(held.gru.weight_ih_l0.grad.abs().sum()) > 0
    torch.testing.assert_close(held.gru.weight_ih_l0.grad, free.gru.weight_ih_l0.grad)


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_density_weight_keeps_the_elbo_and_trains_only_the_prior(dynamics):
    # The path's density fit changes no value, and no gradient but the prior's.
    def run(weight):
        m = _learnable_model(dynamics)
        x = torch.randn(3, 6, 4, dtype=torch.float64)
        mask = torch.ones(3, 6, dtype=torch.float64)
        mask[2, 4:] = 0.0  # A shorter window.
        noise = torch.randn(5, 2, 3, 2, dtype=torch.float64)
        eps0 = torch.randn(3, m.state_dim, dtype=torch.float64)
        log_lik, kl = m.elbo_terms(x, mask, noise, eps0, 0.5,
                                   partition_noise=torch.randn(256, 2, dtype=torch.float64),
                                   density_weight=weight)
        (log_lik - kl).sum().backward()
        return (log_lik - kl).detach(), m

    elbo0, plain = run(0.0)
    elbo4, fitted = run(4.0)
    torch.testing.assert_close(elbo4, elbo0)
    grads = {name: (p0.grad, p4.grad) for (name, p0), (_, p4)
             in zip(plain.named_parameters(), fitted.named_parameters())}
    for name in ("energy.lin1.weight", "energy.raw_c", "log_beta"):
        g0, g4 = grads.pop(name)
        assert float((g4 - g0).abs().max()) > 1e-6, name
    for name, (g0, g4) in grads.items():
        if not name.startswith("energy."):  # (The energy's constant offset: none.)
            assert (g0 is None) == (g4 is None), name
            if g0 is not None:
                torch.testing.assert_close(g4, g0, msg=name)


def test_path_density_fit_recovers_the_weights_of_separated_wells():
    # Maximum likelihood on the path's points gives each well its share of
    # them, which score matching (the path term of the ELBO) cannot.
    from nldseg._model import LatentPaths

    torch.manual_seed(0)
    m = NeuralLangevinVAE(2, 1, "overdamped", 16, 4, 1.0, 1.0, 1.0, False).double()
    gen = torch.Generator().manual_seed(1)
    share = 0.8
    n = 4000
    left = torch.rand(n, generator=gen) < share
    q = torch.where(left, -2.0, 2.0).double() + 0.4 * torch.randn(n, generator=gen).double()
    z = q.view(40, 100, 1)  # (T, rows, latent_dim)
    mask = torch.ones(40, 100, dtype=torch.float64)
    opt = torch.optim.Adam(m.energy.parameters(), lr=0.04)
    for _ in range(150):
        log_z = m._log_z_from_codes(q[::8, None], torch.full((n // 8, 1), math.log(0.4),
                                                             dtype=torch.float64),
                                    torch.randn(1000, 1, generator=gen).double())
        fit = m.path_density_fit(LatentPaths(z, None, None, log_z), mask)
        opt.zero_grad()
        fit.mean().backward()
        opt.step()
    grid = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        w = torch.exp(-m.energy(grid))
    mass_left = float(w[grid[:, 0] < 0].sum() / w.sum())
    # The points' own share of the left well (the truth up to sampling).
    assert mass_left == pytest.approx(float(left.double().mean()), abs=0.02)
    assert fit is not None and fit.shape == (100,)
    # Without a log Z (Gaussian initial prior) there is nothing to fit.
    assert m.path_density_fit(LatentPaths(z, None, None, None), mask) is None


def _stationary_variances(m):
    """Per-coordinate variances of p_inf for a quadratic-energy model.

    exp(-beta c |q|^2) is N(0, 1/(2 beta c)) in each position; underdamped
    dynamics add N(p; 0, M / beta) for the momenta.
    """
    beta, _, mass = (t.detach() for t in m.langevin_params())
    c = m.energy.c.detach()
    var_q = (1.0 / (2.0 * beta * c)).expand(m.latent_dim)
    if m.dynamics == "overdamped":
        return var_q
    return torch.cat([var_q, mass / beta])


def _closed_form_kl(mean, std, var_p):
    """KL(N(mean, diag std^2) || N(0, diag var_p)), written out."""
    ratio = std * std / var_p
    return float(0.5 * (ratio + mean * mean / var_p - 1.0 - torch.log(ratio)).sum())


# q(z_0 | x_0) of the tests below, per state coordinate (positions, momenta).
_Q_MEAN = (0.5, -0.8, 0.3, 1.1)
_Q_STD = (0.7, 1.2, 0.9, 0.6)


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_stationary_initial_kl_equals_the_gaussian_closed_form(dynamics):
    """E = c |z|^2 + 0.3: p_inf is Gaussian, so KL(q(z_0|x_0) || p_inf) has a closed form.

    The one-sample estimates (exact log Z) average to it, and each equals
    log q(z_0) - log p_inf(z_0) with both Gaussian densities written out.
    """
    m, exact_log_z = _quadratic_energy_model(dynamics, mass=1.7)
    k = m.state_dim
    mean = torch.tensor(_Q_MEAN[:k], dtype=torch.float64)
    std = torch.tensor(_Q_STD[:k], dtype=torch.float64)
    var_p = _stationary_variances(m)
    if dynamics == "underdamped":
        assert float(var_p[-1]) == pytest.approx(1.7 / 2.0)
    eps = torch.randn(400000, k, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(5))
    z0 = mean + std * eps
    with torch.no_grad():
        kl = m._stationary_kl0(z0, mean.expand_as(z0), torch.log(std).expand_as(z0),
                               torch.tensor(exact_log_z, dtype=torch.float64))
    log_q = (-0.5 * eps ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z0 ** 2 / var_p - 0.5 * torch.log(2 * math.pi * var_p)).sum(-1)
    torch.testing.assert_close(kl, log_q - log_p, rtol=1e-10, atol=1e-10)
    exact_kl = _closed_form_kl(mean, std, var_p)
    stderr = float(kl.std()) / math.sqrt(len(kl))
    assert stderr < 0.005
    assert float(kl.mean()) == pytest.approx(exact_kl, abs=4 * stderr)


@pytest.mark.parametrize("dynamics", ["overdamped", "underdamped"])
def test_initial_kl_with_sampled_log_z_matches_the_closed_form(dynamics):
    """Through simulate: q(z_0|x_0) from the encoder, log Z by importance sampling."""
    m, exact_log_z = _quadratic_energy_model(dynamics, mass=1.7)
    k = m.state_dim
    mean = torch.tensor(_Q_MEAN[:k], dtype=torch.float64)
    std = torch.tensor(_Q_STD[:k], dtype=torch.float64)
    with torch.no_grad():  # q(z_0 | x_0) = N(mean, std^2) whatever x_0.
        m.q0.weight.zero_()
        m.q0.bias.copy_(torch.cat([mean, torch.log(std)]))
    gen = torch.Generator().manual_seed(6)
    n_seq, n_samples = 4, 50000
    x = torch.randn(n_seq, 1, 4, dtype=torch.float64, generator=gen)
    eps0 = torch.randn(n_seq * n_samples, k, dtype=torch.float64, generator=gen)
    partition_noise = torch.randn(100000, 2, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        log_z = m._log_z_from_codes(mean.expand(n_seq, k), torch.log(std).expand(n_seq, k),
                                    partition_noise)
        paths = m.simulate(x, torch.zeros(0, 2, n_seq * n_samples, 2, dtype=torch.float64),
                           0.5, n_samples, eps0=eps0, partition_noise=partition_noise)
    assert float(log_z) == pytest.approx(exact_log_z, abs=0.02)
    kl = paths.kl0
    assert kl.shape == (n_seq * n_samples,)
    exact_kl = _closed_form_kl(mean, std, _stationary_variances(m))
    stderr = float(kl.std()) / math.sqrt(len(kl))
    # Monte-Carlo error of the average, plus the importance sampler's of log Z.
    assert float(kl.mean()) == pytest.approx(exact_kl, abs=4 * stderr + 0.02)
    # log Z enters every row alike: the rows' offset from the exact-log Z
    # estimate is exactly the error of the sampled log Z.
    exact_rows = m._stationary_kl0(paths.z[0], mean.expand(len(kl), k),
                                   torch.log(std).expand(len(kl), k),
                                   torch.tensor(exact_log_z, dtype=torch.float64))
    torch.testing.assert_close(kl - exact_rows,
                               (log_z - exact_log_z).expand(len(kl)), rtol=0, atol=1e-9)


def test_gaussian_kl_zero_for_equal_and_matches_closed_form():
    mu, ls = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.1, -0.2]])
    assert float(_gaussian_kl(mu, ls, mu[0], ls[0])) == pytest.approx(0.0, abs=1e-7)
    kl = _gaussian_kl(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.zeros(1))
    assert float(kl) == pytest.approx(0.5)


def test_euler_step_overdamped_by_hand():
    beta, gamma, mass = torch.tensor(2.0), torch.tensor(0.5), torch.tensor(1.0)
    coef = step_coefficients("overdamped", beta, gamma, mass, 0.1)
    z = torch.tensor([[1.0, -1.0]])
    f = torch.tensor([[0.2, 0.0]])
    grad = torch.tensor([[0.5, 0.5]])
    noise = torch.tensor([[1.0, -2.0]]) * coef["noise_scale"]
    new = euler_step(z, f, grad, noise, 0.1, coef)
    sigma = math.sqrt(2 / (2.0 * 0.5))
    expected = z + (-grad / 0.5 + f) * 0.1 + sigma * math.sqrt(0.1) * torch.tensor(
        [[1.0, -2.0]])
    torch.testing.assert_close(new, expected)
    assert float(coef["kl_scale"]) == pytest.approx(0.5 * 0.1 / sigma**2)


def test_euler_step_underdamped_moves_position_with_old_momentum():
    beta, gamma, mass = torch.tensor(1.0), torch.tensor(2.0), torch.tensor([2.0])
    coef = step_coefficients("underdamped", beta, gamma, mass, 0.5)
    state = torch.tensor([[1.0, 4.0]])  # q = 1, p = 4
    new = euler_step(state, torch.tensor([[1.0]]), torch.tensor([[3.0]]),
                     torch.zeros(1, 1), 0.5, coef)
    # q' = q + p/M dt = 2 ; p' = p + (-grad - gamma p / M + f) dt = 4 + (-3 - 4 + 1) 0.5 = 1
    torch.testing.assert_close(new, torch.tensor([[2.0, 1.0]]))


def test_mixture_log_pdfs_equal_the_direct_sum():
    """The expanded-square form equals log w + log N per pair, even off-centre."""
    from nldseg._model import _mixture_log_pdfs, _normal_log_pdf

    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(64, 3, generator=gen) * 2.0 + 5.0
    scale = torch.rand(64, 3, generator=gen) * 0.3 + 0.02
    x = loc[torch.randint(0, 64, (500,), generator=gen)] + 0.05 * torch.randn(
        500, 3, generator=gen)
    log_w = torch.log_softmax(torch.randn(64, generator=gen), 0)
    centre = loc.mean(0)
    got = _mixture_log_pdfs(x - centre, loc - centre, scale, log_w)
    want = _normal_log_pdf(x.double()[:, None], loc.double(), scale.double()) + log_w
    assert got.dtype == torch.float32 and got.shape == (500, 64)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-4)


def test_logsumexp_equals_torch_over_a_wide_range_and_at_infinities():
    """Terms thousands of nats down (the log Z proposal's) change nothing;
    the softmax gradient and the infinite and NaN slices are torch's."""
    from nldseg._model import _logsumexp

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(300, 65, generator=gen) * 3000.0).requires_grad_()
    got, want = _logsumexp(x, 1), torch.logsumexp(x, 1)
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    # The sums are ~1e4, where float32 steps by ~1e-3: exp(x - sum) agrees to that.
    torch.testing.assert_close(g_got, g_want, rtol=2e-3, atol=1e-6)
    inf = math.inf
    odd = torch.tensor([[-inf, -inf], [inf, 0.0], [math.nan, 0.0], [-inf, 1.0]])
    torch.testing.assert_close(_logsumexp(odd, 1), torch.logsumexp(odd, 1),
                               equal_nan=True)
    torch.testing.assert_close(_logsumexp(odd.t(), 0), torch.logsumexp(odd.t(), 0),
                               equal_nan=True)


def _decoders(hidden=8, n_features=5):
    from nldseg import LangevinSegmenter
    from nldseg._model import build_model
    torch.manual_seed(0)
    latent = build_model(n_features, LangevinSegmenter(n_lags=0,
        decoder_covariance="latent", decoder_noise="gaussian",
        hidden_size=hidden).get_params())
    full = build_model(n_features, LangevinSegmenter(n_lags=0,
        decoder_covariance="full", decoder_noise="gaussian",
        hidden_size=hidden).get_params())
    return latent, full


def test_latent_decoder_noise_starts_as_the_shared_full_covariance():
    latent, full = _decoders()
    with torch.no_grad():
        latent.dec_log_std.normal_(-0.5, 0.3)
    full.load_state_dict({k: v for k, v in latent.state_dict().items()
                          if not k.startswith("dec_noise")}, strict=False)
    assert latent.dec_noise_in.weight.abs().sum() > 0  # Moves nothing at the start.
    x, z = torch.randn(4, 9, 5), torch.randn(9, 4, 3)
    torch.testing.assert_close(latent.decode_log_prob(x, z), full.decode_log_prob(x, z))


def test_latent_decoder_noise_is_the_gaussian_of_its_own_covariance():
    """log p(x | z) is N(g(z), L(z) L(z)^T), L(z) the scale samples are drawn with."""
    latent, _ = _decoders()
    with torch.no_grad():
        for name, p in latent.named_parameters():
            if name.startswith("dec_noise"):
                p.normal_(0, 0.3)
    x, z = torch.randn(2, 6, 5), torch.randn(6, 2, 3)
    got = latent.decode_log_prob(x, z)
    mean, scale = latent.decoder_mean_and_scale(z)
    assert scale.shape == (6, 2, 5, 5)
    assert not torch.allclose(scale[0, 0], scale[1, 1])  # It depends on z.
    want = torch.distributions.MultivariateNormal(
        mean, scale_tril=scale).log_prob(x.transpose(0, 1))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    got.sum().backward()
    assert latent.dec_noise_lower.grad[1:].abs().sum() > 0
    assert latent.dec_noise_in.weight.grad.abs().sum() > 0


def _correlated_decoder(covariance: str, seed: int):
    """A 5-feature model whose decoder noise has random correlations."""
    from nldseg import LangevinSegmenter
    from nldseg._model import build_model
    torch.manual_seed(seed)
    model = build_model(5, LangevinSegmenter(n_lags=0, decoder_covariance=covariance,
                                             decoder_noise="gaussian",
                                             hidden_size=8).get_params())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("dec_noise", "dec_prec", "dec_cov", "dec_log_std")):
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("covariance", ["latent", "full", "diag"])
def test_decoder_log_prob_given_leading_features_is_the_conditional(covariance):
    """``given=g``: log N(x | z) - log N(x[:g] | z), the marginal of the first g."""
    model = _correlated_decoder(covariance, seed=3)
    x, z = torch.randn(2, 6, 5), torch.randn(6, 2, 3)
    mean, scale = model.decoder_mean_and_scale(z)
    cov = scale @ scale.transpose(-1, -2)
    mvn = torch.distributions.MultivariateNormal
    target = x.transpose(0, 1)
    for given in (0, 2, 4):
        joint = mvn(mean, covariance_matrix=cov).log_prob(target)
        marginal = (mvn(mean[..., :given], covariance_matrix=cov[..., :given, :given])
                    .log_prob(target[..., :given]) if given else 0.0)
        torch.testing.assert_close(model.decode_log_prob(x, z, given=given),
                                   joint - marginal, rtol=1e-4, atol=1e-4)
    # The leading features move the conditional only through their correlation.
    if covariance != "diag":
        moved = x.clone()
        moved[..., :2] += 1.0
        assert not torch.allclose(model.decode_log_prob(moved, z, given=2),
                                  model.decode_log_prob(x, z, given=2))


@pytest.mark.parametrize("covariance", ["latent", "full", "diag"])
def test_decode_given_draws_from_the_conditional_gaussian(covariance):
    """Mean and covariance of ``x[g:] | x[:g]`` from the decoder's joint Gaussian."""
    model = _correlated_decoder(covariance, seed=4)
    with torch.no_grad():
        z = torch.randn(3)
        mean, scale = model.decoder_mean_and_scale(z)
        cov = (scale @ scale.T).double()
        past = torch.tensor([0.7, -1.2])
        n = 40000
        eps = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
        draws = model.decode_given(z.expand(n, 3), past.expand(n, 2), eps).double()
    gain = cov[2:, :2] @ torch.linalg.inv(cov[:2, :2])
    want_mean = mean[2:].double() + gain @ (past.double() - mean[:2].double())
    want_cov = cov[2:, 2:] - gain @ cov[:2, 2:]
    torch.testing.assert_close(draws.mean(0), want_mean, rtol=0, atol=0.03)
    torch.testing.assert_close(torch.cov(draws.T), want_cov, rtol=0.05, atol=0.01)


def test_build_model_decodes_the_newest_observation_given_the_lags():
    from nldseg import LangevinSegmenter
    from nldseg._model import build_model
    params = LangevinSegmenter(n_lags=2, hidden_size=8).get_params()
    assert build_model(3, params).given_features == 6
    assert build_model(3, params, conditional_lags=False).given_features == 0
    assert build_model(3, dict(params, n_lags=0)).given_features == 0


@pytest.mark.parametrize("dynamics, initial_prior", [("overdamped", "stationary"),
                                                     ("underdamped", "stationary"),
                                                     ("overdamped", "gaussian")])
def test_initial_log_weight_is_prior_over_posterior_density(dynamics, initial_prior):
    """log p(z_0) - log q(z_0 | x_0), up to one constant (log Z) for all rows."""
    from torch.distributions import Normal

    from nldseg import LangevinSegmenter
    from nldseg._model import build_model

    torch.manual_seed(2)
    m = build_model(4, LangevinSegmenter(n_lags=0, dynamics=dynamics,
                                         initial_prior=initial_prior, hidden_size=8,
                                         beta=1.7, mass=0.6).get_params())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        mean, log_std = torch.randn(6, m.state_dim), 0.3 * torch.randn(6, m.state_dim)
        z = mean + log_std.exp() * torch.randn(6, m.state_dim)
        got = m.initial_log_weight(z, mean, log_std)
        log_q = Normal(mean, log_std.exp()).log_prob(z).sum(-1)
        if initial_prior == "gaussian":
            log_p = Normal(m.p0_mean, m.p0_log_std.exp()).log_prob(z).sum(-1)
        else:
            beta, _, mass = m.langevin_params()  # moved by the noise above
            q, p = z[:, :m.latent_dim], z[:, m.latent_dim:]
            log_p = -beta * m.energy(q)
            if dynamics == "underdamped":
                log_p = log_p + Normal(0.0, torch.sqrt(mass / beta)).log_prob(p).sum(-1)
        diff = got - (log_p - log_q)
    torch.testing.assert_close(diff - diff[0], torch.zeros(6), rtol=0, atol=1e-5)
    if initial_prior == "gaussian":  # A normalised prior: no constant left out.
        assert abs(float(diff[0])) < 1e-5


def _student_decoder(covariance: str, seed: int,
                     df=(3.0, 5.0, 10.0, 50.0, 150.0)) -> NeuralLangevinVAE:
    """A 5-feature Student-t decoder with random correlations and set degrees of freedom."""
    from nldseg import LangevinSegmenter
    from nldseg._model import build_model
    torch.manual_seed(seed)
    model = build_model(5, LangevinSegmenter(
        n_lags=0, decoder_covariance=covariance, decoder_noise="student",
        hidden_size=8).get_params())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("dec_noise", "dec_prec", "dec_cov", "dec_log_std")):
                p.normal_(0, 0.3)
        model.dec_log_df.copy_(torch.log(torch.tensor(df) - 2.0))
    return model


@pytest.mark.parametrize("covariance", ["latent", "full", "diag"])
def test_student_decoder_is_the_density_of_independent_whitened_t_features(covariance):
    """``log p(x | z) = sum_i log t_df_i(w_i) + log |det L^-1|``, ``w = L^-1 (x - g(z))``.

    Checked against torch's StudentT on residuals whitened by a triangular
    solve with ``decoder_mean_and_scale``'s ``L``; the conditional of the
    features after ``given`` is the sum over those; the filters' point
    densities are the same density.
    """
    model = _student_decoder(covariance, seed=5)
    df = torch.tensor([3.0, 5.0, 10.0, 50.0, 150.0])
    torch.testing.assert_close(model.decoder_df(), df)
    x, z = 2.0 * torch.randn(2, 6, 5), torch.randn(6, 2, 3)
    with torch.no_grad():
        mean, scale = model.decoder_mean_and_scale(z)
        scale = scale.expand(6, 2, 5, 5)
        resid = (x.transpose(0, 1) - mean).unsqueeze(-1)
        white = torch.linalg.solve_triangular(scale, resid, upper=False).squeeze(-1)
        log_diag = -torch.log(torch.diagonal(scale, dim1=-2, dim2=-1))
        each = torch.distributions.StudentT(df).log_prob(white) + log_diag
        for given in (0, 2):
            torch.testing.assert_close(model.decode_log_prob(x, z, given=given),
                                       each[..., given:].sum(-1), rtol=1e-4, atol=1e-4)
        frames, points = x[0], z[:, 0]
        got = model.points_log_prob(frames, model.decoder_points(points))
        want = torch.stack([model.decode_log_prob(frames[None], points[m].expand(6, 1, -1))
                            [:, 0] for m in range(6)], 1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_student_noise_draws_have_the_tails_of_their_degrees_of_freedom():
    """Whitened draws: t quantiles per feature; a Gaussian model's are ``torch.randn``'s."""
    student = _student_decoder("diag", seed=6)
    draws = student.decoder_noise_draws((200000, 5), torch.Generator().manual_seed(0))
    again = student.decoder_noise_draws((200000, 5), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    # 99.5 % quantiles of t with 3, 5, 10, 50, 150 degrees of freedom (scipy).
    want = torch.tensor([5.841, 4.032, 3.169, 2.678, 2.609])
    got = torch.quantile(draws[:, :].abs(), 0.99, dim=0)
    torch.testing.assert_close(got, want, rtol=0.04, atol=0.0)
    tail = student.decoder_noise_draws((1000, 3), torch.Generator().manual_seed(1), given=2)
    assert tail.shape == (1000, 3)
    from nldseg import LangevinSegmenter
    from nldseg._model import build_model
    gaussian = build_model(5, LangevinSegmenter(n_lags=0, hidden_size=8,
                                                decoder_noise="gaussian").get_params())
    assert gaussian.decoder_df() is None
    torch.testing.assert_close(
        gaussian.decoder_noise_draws((7, 5), torch.Generator().manual_seed(2)),
        torch.randn((7, 5), generator=torch.Generator().manual_seed(2)), rtol=0, atol=0)


def test_student_degrees_of_freedom_are_learned_from_the_tails():
    """Maximum likelihood: few degrees of freedom for t(3) frames, many for Gaussians."""
    model = _student_decoder("diag", seed=7, df=(10.0,) * 5)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((1, 20000, 5), generator=gen)
    x[..., 0] = torch.distributions.StudentT(3.0).sample((1, 20000))
    x[..., 1] = 2.0 * torch.distributions.StudentT(3.0).sample((1, 20000)) + 1.0
    params = [model.dec_log_df, model.dec_log_std, model.decoder[2].bias]
    with torch.no_grad():
        model.decoder[2].weight.zero_()
    opt = torch.optim.Adam(params, lr=0.05)
    z = torch.zeros((20000, 1, 3))
    for _ in range(300):
        opt.zero_grad()
        (-model.decode_log_prob(x, z).mean()).backward()
        opt.step()
    df = model.decoder_df().detach()
    assert df[0] < 4.0 and df[1] < 4.0  # Truth 3.
    assert (df[2:] > 40.0).all()  # Gaussian: towards the bound (200).
    scale = torch.exp(model.decoder_log_std()).detach()
    torch.testing.assert_close(scale[:2], torch.tensor([1.0, 2.0]), rtol=0.08, atol=0)
