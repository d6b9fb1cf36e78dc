"""Tests of nldseg._kinetics and the estimator's kinetics methods.

The pure functions are checked on analytic energies (no training): a 2-D
double well whose Eyring-Kramers rate is known in closed form, a curved valley
whose saddle is off the straight line between the minima, and a triple well
whose outer wells are not neighbours. The estimator's methods run on the
shared fitted fixtures (3 wells).
"""

import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from nldseg import LangevinSegmenter
from nldseg._dynamics import step_coefficients
from nldseg._kinetics import (
    calibrate_clock,
    clock_steps,
    core_set_labels,
    core_thresholds,
    eyring_kramers_rate,
    has_interior_minimum,
    implied_timescales,
    initial_states,
    landscape_saddles,
    mean_first_passage_times,
    mean_visit_lengths,
    metastable_state_map,
    minimum_energy_path,
    prior_state_paths,
    row_stochastic,
    simulate_prior,
    state_saddles,
    switch_interval,
    switches,
    transition_counts,
    visit_lengths,
)

# ------------------------------------------------------------ analytic wells
# E(x, y) = A (x^2 - 1)^2 + B y^2: minima (+-1, 0), saddle (0, 0), barrier A.
A, B = 2.0, 1.0
MINIMA = np.array([[-1.0, 0.0], [1.0, 0.0]])


def _energy(z):
    return A * (z[:, 0] ** 2 - 1) ** 2 + B * z[:, 1] ** 2


def _gradient(z):
    return np.stack([4 * A * z[:, 0] * (z[:, 0] ** 2 - 1), 2 * B * z[:, 1]], 1)


def _torch_gradient(z):
    return torch.stack([4 * A * z[:, 0] * (z[:, 0] ** 2 - 1), 2 * B * z[:, 1]], 1)


def _hessian(z):
    h = np.zeros((len(z), 2, 2))
    h[:, 0, 0] = A * (12 * z[:, 0] ** 2 - 4)
    h[:, 1, 1] = 2 * B
    return h


def _basin(z):
    return (z[:, 0] > 0).astype(np.int64)


def _simulate_on_clock(grad, start, dynamics, beta, gamma, mass, dt, time_scale,
                       n_steps, gen):
    """:func:`simulate_prior` in 2-D on the clock of :func:`clock_steps`."""
    n_sub, remainder = clock_steps(dt, time_scale)

    def coefficients(step):
        return step_coefficients(dynamics, torch.tensor(beta), torch.tensor(gamma),
                                 torch.full((2,), mass), step)

    return simulate_prior(grad, start, coefficients(dt), latent_dim=2, dt=dt,
                          n_steps=n_steps, generator=gen, n_sub=n_sub,
                          remainder=(remainder, coefficients(remainder))
                          if remainder else None)


def _simulated_rate(dynamics, beta, gamma, mass, dt, n_paths=500, n_steps=100,
                    time_scale=1.0):
    """Core-set transitions per observation in simulated double-well paths.

    An observation is ``time_scale`` time units (:func:`clock_steps`).
    """
    gen = torch.Generator().manual_seed(0)
    start = initial_states(MINIMA, _hessian(MINIMA), np.ones(2), beta, n_paths, gen,
                           mass=None if mass is None else np.full(2, mass))
    paths = _simulate_on_clock(_torch_gradient, start, dynamics, beta, gamma,
                               float(mass or 1.0), dt, time_scale, n_steps, gen)
    assert paths.shape == (n_paths, n_steps + 1, 2)
    flat = paths.double().numpy().reshape(-1, 2)
    saddles = state_saddles(_energy, _gradient, _hessian, MINIMA)
    thresholds = core_thresholds(_energy(MINIMA), saddles["barriers"], 0.5)
    labels = core_set_labels(_basin(flat).reshape(n_paths, -1),
                             _energy(flat).reshape(n_paths, -1), thresholds)
    return (labels[:, 1:] != labels[:, :-1]).sum() / (n_paths * n_steps)


def _kramers(beta, gamma, mass=None):
    h_s = _hessian(np.zeros((1, 2)))[0]
    return eyring_kramers_rate(A, _hessian(MINIMA)[0], h_s, beta, gamma,
                               None if mass is None else np.full(2, mass))


def test_eyring_kramers_closed_form():
    # |lambda_-| = 4A, det H_m / |det H_s| = 8A 2B / (4A 2B) = 2.
    expected = 4 * A / (2 * math.pi * 2.0) * math.sqrt(2.0) * math.exp(-1.5 * A)
    assert _kramers(1.5, 2.0) == pytest.approx(expected, rel=1e-12)
    # Underdamped, 1-D unstable mode: sqrt(g^2/4 + w_b^2) - g/2, g = gamma/M.
    g, wb2 = 2.0 / 2.0, 4 * A / 2.0
    lam = math.sqrt(g * g / 4 + wb2) - g / 2
    assert _kramers(1.5, 2.0, mass=2.0) == pytest.approx(
        lam / (2 * math.pi) * math.sqrt(2.0) * math.exp(-1.5 * A), rel=1e-10)


def test_overdamped_simulated_rate_matches_eyring_kramers():
    # Barrier 3 kT, friction 2 (a rate that ignored gamma would be 2x off).
    simulated = _simulated_rate("overdamped", beta=1.5, gamma=2.0, mass=None,
                                dt=0.02)
    ratio = simulated / _kramers(1.5, 2.0)
    assert 1 / 1.5 < ratio < 1.5, ratio


def test_underdamped_simulated_rate_matches_kramers_langer():
    # Mass 2, friction 2: the overdamped formula would be 2.2x too fast.
    simulated = _simulated_rate("underdamped", beta=1.5, gamma=2.0, mass=2.0,
                                dt=0.01)
    ratio = simulated / _kramers(1.5, 2.0, mass=2.0)
    assert 1 / 1.5 < ratio < 1.5, ratio
    assert simulated < _kramers(1.5, 2.0) / 1.5


@pytest.mark.parametrize("time_scale", [0.5, 0.53, 2.5, 2.53])
def test_a_faster_clock_scales_the_rate(time_scale):
    # Barrier 3 kT: rare, memoryless escapes, so the rate per observation
    # grows in proportion to the time an observation spans (0.53 and 2.53
    # end each observation with a part step: it counts too).
    base = _simulated_rate("overdamped", beta=1.5, gamma=2.0, mass=None, dt=0.05)
    scaled = _simulated_rate("overdamped", beta=1.5, gamma=2.0, mass=None, dt=0.05,
                             time_scale=time_scale)
    assert scaled / base == pytest.approx(time_scale, rel=0.2)


def test_clock_steps():
    assert clock_steps(0.5) == (2, 0.0)  # The trained chain.
    assert clock_steps(0.05, 3.0) == (60, 0.0)
    n_sub, remainder = clock_steps(0.5, 2.2)
    assert n_sub == 4 and remainder == pytest.approx(0.2)
    assert clock_steps(0.5, 0.1)[0] == 0  # A slower clock: the remainder only.
    assert clock_steps(0.5, 0.1)[1] == pytest.approx(0.1)
    assert clock_steps(0.3) == (3, 0.0)  # round(1 / dt) steps of dt.


@pytest.mark.parametrize("time_scale", [1.0, 2.2, 0.3])
def test_an_observation_spans_time_scale_units_of_free_diffusion(time_scale):
    """With no force, the variance per observation is sigma^2 * its time."""
    beta, gamma, dt = 2.0, 1.5, 0.5
    paths = _simulate_on_clock(torch.zeros_like, torch.zeros((20000, 2)), "overdamped",
                               beta, gamma, 1.0, dt, time_scale, 3,
                               torch.Generator().manual_seed(0))
    step_var = np.diff(paths.double().numpy(), axis=1).var(axis=(0, 1))
    np.testing.assert_allclose(step_var, 2 / (beta * gamma) * time_scale, rtol=0.03)


def test_switches():
    assert switches(np.array([[0, 0, 1, 1], [2, 2, 2, 2]])) == (1, 6)
    assert switches([np.array([0, 1, 0]), np.array([1])]) == (2, 2)


def test_initial_states_momentum_variance():
    gen = torch.Generator().manual_seed(0)
    z = initial_states(MINIMA, _hessian(MINIMA), np.array([0.25, 0.75]), 2.0, 20000,
                       gen, mass=np.array([0.5, 3.0])).double()
    assert z.shape == (20000, 4)
    # Momentum ~ N(0, M / beta); positions ~ N(m_i, (beta H_i)^-1) by weight.
    np.testing.assert_allclose(z[:, 2:].var(0).numpy(), [0.25, 1.5], rtol=0.05)
    assert float((z[:, 0] > 0).double().mean()) == pytest.approx(0.75, abs=0.02)
    right = z[z[:, 0] > 0, :2].numpy()
    np.testing.assert_allclose(right.var(0), [1 / (2 * 8 * A), 1 / (2 * 2 * B)],
                               rtol=0.1)
    at_minima = initial_states(MINIMA, _hessian(MINIMA), np.ones(2), 1.0, 5, gen,
                               start="minima")
    np.testing.assert_array_equal(at_minima.numpy(), MINIMA[[0, 1, 0, 1, 0]])


def test_simulate_prior_is_deterministic_and_leaves_global_rng_alone():
    coef = step_coefficients("overdamped", torch.tensor(1.0), torch.tensor(1.0),
                             torch.ones(2), 0.05)
    start = torch.zeros((4, 2))
    state = torch.random.get_rng_state()
    runs = [simulate_prior(_torch_gradient, start, coef, latent_dim=2, dt=0.05,
                           n_steps=5, generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, 0], start)
    assert not torch.equal(runs[0][:, 1], runs[0][:, 2])


def test_simulate_prior_stops_each_path_at_its_length():
    coef = step_coefficients("overdamped", torch.tensor(1.0), torch.tensor(1.0),
                             torch.ones(2), 0.05)
    start = torch.arange(10.0).view(5, 2) / 10
    rows = []  # Positions per gradient evaluation: the cost.

    def counted(z):
        rows.append(len(z))
        return _torch_gradient(z)

    def run(lengths=None, grad=_torch_gradient):
        return simulate_prior(grad, start, coef, latent_dim=2, dt=0.05, n_steps=6,
                              generator=torch.Generator().manual_seed(3),
                              lengths=lengths)

    # Paths that all run to the end draw the same noise as without lengths.
    assert torch.equal(run(np.full(5, 7)), run())
    lengths = np.array([3, 7, 1, 7, 5])
    paths = run(lengths, counted)
    for path, n in zip(paths, lengths):
        assert torch.isfinite(path[:n]).all() and torch.isnan(path[n:]).all()
    assert torch.equal(paths[:, 0], start)
    # Each interval costs round(1 / dt) = 20 Euler steps of the paths still running.
    assert sum(rows) == 20 * int((lengths - 1).sum())
    np.testing.assert_array_equal(run(lengths).numpy(), paths.numpy())  # NaN == NaN
    with pytest.raises(ValueError, match="lengths must hold one length in 1..n_steps"):
        run(np.array([3, 8, 1, 7, 5]))
    with pytest.raises(ValueError, match="for each of the 5 paths"):
        run(np.array([3, 7]))


# ------------------------------------------------------------ saddles (MEP)
# Curved valley: E = A (x^2 - 1)^2 + B (y - C (1 - x^2))^2. Minima (+-1, 0);
# saddle (0, C) at E = A; the straight line's top, (0, 0), is at A + B C^2.
C = 1.0


def _curved_energy(z):
    u = z[:, 1] - C * (1 - z[:, 0] ** 2)
    return A * (z[:, 0] ** 2 - 1) ** 2 + B * u * u


def _curved_gradient(z):
    u = z[:, 1] - C * (1 - z[:, 0] ** 2)
    gx = 4 * A * z[:, 0] * (z[:, 0] ** 2 - 1) + 2 * B * u * 2 * C * z[:, 0]
    return np.stack([gx, 2 * B * u], 1)


def _curved_hessian(z):
    x, y = z[:, 0], z[:, 1]
    u = y - C * (1 - x * x)
    h = np.empty((len(z), 2, 2))
    h[:, 0, 0] = A * (12 * x * x - 4) + 2 * B * (2 * C * x) ** 2 + 4 * B * C * u
    h[:, 0, 1] = h[:, 1, 0] = 4 * B * C * x
    h[:, 1, 1] = 2 * B
    return h


def test_minimum_energy_path_finds_the_curved_saddle():
    saddles = state_saddles(_curved_energy, _curved_gradient, _curved_hessian, MINIMA)
    np.testing.assert_allclose(saddles["points"][0, 1], [0.0, C], atol=1e-6)
    assert saddles["is_saddle"][0, 1]
    np.testing.assert_allclose(saddles["barriers"], [[np.inf, A], [A, np.inf]],
                               rtol=1e-8)
    # The path itself bends into the valley: its middle image is near (0, C).
    path = saddles["paths"][0, 1]
    assert np.linalg.norm(path[len(path) // 2] - [0.0, C]) < 0.05
    np.testing.assert_array_equal(path[[0, -1]], MINIMA)
    # The analytic Hessian agrees with finite differences of the gradient.
    z, eps = np.array([[0.3, 0.4]]), 1e-6
    fd = np.stack([(_curved_gradient(z + eps * e) - _curved_gradient(z - eps * e))[0]
                   / (2 * eps) for e in np.eye(2)])
    np.testing.assert_allclose(_curved_hessian(z)[0], fd, atol=1e-6)


def test_straight_line_start_is_not_the_answer():
    # Without iterations the string is the straight line, whose top is too high.
    path = minimum_energy_path(_curved_gradient, _curved_hessian, MINIMA[0], MINIMA[1],
                               n_iter=0)
    assert _curved_energy(path).max() == pytest.approx(A + B * C * C)


# E = x^2 (x^2 - 4)^2 / 16 + y^2: minima at x = -2, 0, 2 (E = 0), saddles at
# x = +-2/sqrt(3), all three minima equally deep.
def _triple_energy(z):
    return z[:, 0] ** 2 * (z[:, 0] ** 2 - 4) ** 2 / 16 + z[:, 1] ** 2


def _triple_gradient(z):
    x = z[:, 0]
    return np.stack([x * (x * x - 4) * (3 * x * x - 4) / 8, 2 * z[:, 1]], 1)


def _triple_hessian(z):
    x = z[:, 0]
    h = np.zeros((len(z), 2, 2))
    h[:, 0, 0] = (15 * x ** 4 - 48 * x * x + 16) / 8
    h[:, 1, 1] = 2.0
    return h


TRIPLE_SADDLE_X = 2 / math.sqrt(3)
TRIPLE_BARRIER = (4 / 3) * (4 / 3 - 4) ** 2 / 16


def test_outer_wells_of_a_triple_well_are_not_neighbours():
    energy, gradient, hessian = _triple_energy, _triple_gradient, _triple_hessian
    minima = np.array([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    saddles = state_saddles(energy, gradient, hessian, minima)
    barrier = TRIPLE_BARRIER
    assert np.isinf(saddles["barriers"][0, 2]) and np.isinf(saddles["barriers"][2, 0])
    assert has_interior_minimum(energy(saddles["paths"][0, 2]))
    assert not has_interior_minimum(energy(saddles["paths"][0, 1]))
    np.testing.assert_allclose(saddles["barriers"][[0, 1, 1, 2], [1, 0, 2, 1]],
                               barrier, rtol=1e-8)
    np.testing.assert_allclose(saddles["points"][0, 1], [-2 / math.sqrt(3), 0],
                               atol=1e-8)
    np.testing.assert_allclose(core_thresholds(energy(minima), saddles["barriers"],
                                               0.5), 0.5 * barrier)


def test_a_state_of_two_minima_has_the_saddle_where_its_basin_ends():
    """Wells merged into one state: the dip between them is no third state.

    The triple well's minima at x = -2 and 0 form state 0, the one at 2
    state 1. The path from -2 to 2 dips at 0, inside state 0's basin; the
    states are neighbours over the saddle at 2/sqrt(3), not over the one
    inside state 0 at -2/sqrt(3) (equally high here, so the point tells).
    """
    def two_states(z):
        return (np.asarray(z)[:, 0] > TRIPLE_SADDLE_X).astype(np.int64)

    def three_states(z):
        x = np.asarray(z)[:, 0]
        return np.where(x < -TRIPLE_SADDLE_X, 0, np.where(x < TRIPLE_SADDLE_X, 1, 2))

    minima = np.array([[-2.0, 0.0], [2.0, 0.0]])
    merged = state_saddles(_triple_energy, _triple_gradient, _triple_hessian, minima,
                           state_of=two_states)
    assert has_interior_minimum(_triple_energy(merged["paths"][0, 1]))
    np.testing.assert_allclose(merged["barriers"], [[np.inf, TRIPLE_BARRIER],
                                                    [TRIPLE_BARRIER, np.inf]], rtol=1e-8)
    np.testing.assert_allclose(merged["points"][0, 1], [TRIPLE_SADDLE_X, 0], atol=1e-8)
    assert merged["is_saddle"][0, 1]
    # Without the states every minimum is one, and the dip cuts the pair.
    assert np.isinf(state_saddles(_triple_energy, _triple_gradient, _triple_hessian,
                                  minima)["barriers"]).all()
    # A path through a third state's basin still does.
    three = state_saddles(_triple_energy, _triple_gradient, _triple_hessian,
                          np.array([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]]),
                          state_of=three_states)
    assert np.isinf(three["barriers"][0, 2]) and np.isinf(three["barriers"][2, 0])
    np.testing.assert_allclose(three["barriers"][[0, 1, 1, 2], [1, 0, 2, 1]],
                               TRIPLE_BARRIER, rtol=1e-8)


def test_landscape_saddles_read_the_states_of_the_landscape():
    """An EnergyLandscape's states, not its minima, decide who is a neighbour."""
    class TwoStateTriple:  # The landscape's interface, on the triple well.
        minima = np.array([[-2.0, 0.0], [2.0, 0.0]])
        __call__ = staticmethod(_triple_energy)
        gradient = staticmethod(_triple_gradient)
        hessian = staticmethod(_triple_hessian)

        @staticmethod
        def predict(z):
            return (np.asarray(z)[:, 0] > TRIPLE_SADDLE_X).astype(np.int64)

    saddles = landscape_saddles(TwoStateTriple())
    np.testing.assert_allclose(saddles["barriers"][0, 1], TRIPLE_BARRIER, rtol=1e-8)


# ------------------------------------------------------------ labels, counts
def test_core_set_labels_ignore_recrossings():
    basins = np.array([[1, 0, 1, 0, 1, 1, 0]])
    energies = np.array([[5.0, 0.5, 2.0, 2.0, 0.5, 2.0, 2.0]])
    labels = core_set_labels(basins, energies, np.array([1.0, 1.0]))
    # Step 0 takes its basin; step 2 is in basin 1 but above its core: still 0.
    np.testing.assert_array_equal(labels, [[1, 0, 0, 0, 1, 1, 1]])


def test_transition_counts_and_rows():
    labels = np.array([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(transition_counts(labels, 3, 1),
                                  [[1, 1, 0], [1, 5, 0], [0, 0, 0]])
    np.testing.assert_array_equal(transition_counts(labels, 3, 3),
                                  [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    np.testing.assert_allclose(row_stochastic(transition_counts(labels, 3, 1)),
                               [[0.5, 0.5, 0], [1 / 6, 5 / 6, 0], [0, 0, 1]])


def _markov_chain(p: np.ndarray, n_steps: int, seed: int) -> np.ndarray:
    """A path of the Markov chain with transition matrix ``p``, from state 0."""
    rng = np.random.default_rng(seed)
    cum = np.cumsum(p, axis=1)
    u = rng.random(n_steps)
    path = np.empty(n_steps, dtype=np.int64)
    state = 0
    for t in range(n_steps):
        path[t] = state
        state = min(int(np.searchsorted(cum[state], u[t], side="right")), len(p) - 1)
    return path


def _sticky(stays) -> np.ndarray:
    """Stay in state i with probability stays[i], else jump to any other alike."""
    k = len(stays)
    p = np.array([[(1 - s) / (k - 1)] * k for s in stays])
    p[np.diag_indices(k)] = stays
    return p


def test_implied_timescales_of_known_chains():
    p = _sticky([0.9, 0.9])
    t = implied_timescales(np.round(p * 1e6))
    np.testing.assert_allclose(t, [-1 / np.log(0.8)], rtol=1e-9)
    # Lag 3 of the same chain: eigenvalue 0.8^3, the same time scale.
    np.testing.assert_allclose(implied_timescales(np.round(p @ p @ p * 1e6), lag=3),
                               t, rtol=1e-6)
    p = _sticky([0.99, 0.99, 0.8])
    ev = np.sort(np.linalg.eigvals(p).real)[::-1][1:]
    pi = 1 / (1 - np.diag(p))  # Stationary law of this chain: time per visit.
    flux = pi[:, None] * p / pi.sum()  # What a long path counts, per step.
    np.testing.assert_allclose(implied_timescales(np.round(flux * 1e9)),
                               -1 / np.log(ev), rtol=1e-5)
    # Two parts never joined by a transition: one infinite time scale.
    counts = np.array([[9, 1, 0], [1, 9, 0], [0, 0, 5]])
    t = implied_timescales(counts)
    assert np.isinf(t[0]) and np.isfinite(t[1])
    # A state never visited is left out.
    assert implied_timescales(np.array([[9, 1, 0], [1, 9, 0], [0, 0, 0]])).shape == (1,)


def test_two_wells_taking_turns_inside_one_state_are_joined():
    # Four activities of ~500 steps; in activity 0 the path takes turns
    # between wells 0 and 4 every ~20 steps (one phase of a cycle each).
    rng = np.random.default_rng(0)
    parts = []
    for activity in np.tile([0, 1, 2, 3], 6)[rng.permutation(24)]:
        n = int(rng.integers(300, 700))
        if activity == 0:
            parts.append(np.where((np.arange(n) // 20) % 2 == 0, 0, 4))
        else:
            parts.append(np.full(n, activity))
    path = np.concatenate(parts)
    state_map = metastable_state_map([path], 5)
    assert state_map.max() + 1 == 4
    assert state_map[0] == state_map[4]
    assert len(set(state_map[[0, 1, 2, 3]])) == 4
    # The same labels as one 2-D array of paths.
    np.testing.assert_array_equal(metastable_state_map(path[None], 5), state_map)


@pytest.mark.parametrize("stays", [[0.98] * 4, [0.99, 0.99, 0.99, 0.8],
                                   [0.995, 0.99, 0.95, 0.9]])
def test_states_of_a_markov_chain_are_kept(stays):
    # Metastable states, a less sticky one among them (time scales 17 times
    # apart in the second chain): every state stays, whatever the gap.
    path = _markov_chain(_sticky(stays), 40_000, seed=1)
    np.testing.assert_array_equal(metastable_state_map([path], len(stays)),
                                  np.arange(len(stays)))


def test_two_states_taking_turns_are_kept_with_nothing_else():
    path = np.where((np.arange(2000) // 20) % 2 == 0, 0, 1)
    np.testing.assert_array_equal(metastable_state_map([path], 2), [0, 1])


def _first_passages(path: np.ndarray, target: int) -> dict:
    """Mean steps from each time in each state until ``path`` first hits ``target``."""
    times: dict = {}
    hits = np.flatnonzero(path == target)
    nxt = np.searchsorted(hits, np.arange(len(path)))
    for t in range(len(path)):
        if nxt[t] < len(hits) and path[t] != target:
            times.setdefault(int(path[t]), []).append(hits[nxt[t]] - t)
    return {k: float(np.mean(v)) for k, v in times.items()}


def test_mean_first_passage_times_against_a_simulated_chain():
    p = np.array([[0.95, 0.04, 0.01], [0.02, 0.9, 0.08], [0.05, 0.05, 0.9]])
    m = mean_first_passage_times(p)
    np.testing.assert_array_equal(np.diag(m), 0.0)
    path = _markov_chain(p, 200_000, seed=0)
    for j in range(3):
        for i, mean in _first_passages(path, j).items():
            np.testing.assert_allclose(m[i, j], mean, rtol=0.05)
    # Kemeny's constant: sum_j pi_j m_ij is the same from every state.
    w, v = np.linalg.eig(p.T)
    pi = np.real(v[:, np.argmax(np.real(w))])
    kemeny = m @ (pi / pi.sum())
    np.testing.assert_allclose(kemeny, kemeny[0], rtol=1e-10)
    # At lag 2 the chain P^2 takes two steps per transition.
    m2 = mean_first_passage_times(p @ p, lag=2)
    assert (np.abs(m2 - m) < 0.15 * m + 1.0).all(), (m2, m)


def test_mean_first_passage_times_of_states_never_reached():
    # State 1 is absorbing; from 2 the chain may fall into 1 before reaching 0.
    p = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]])
    m = mean_first_passage_times(p)
    np.testing.assert_allclose([m[0, 1], m[2, 1]], [2.0, 3.5], rtol=1e-12)
    assert np.isinf([m[0, 2], m[1, 0], m[1, 2], m[2, 0]]).all()


def test_visit_lengths_drop_censored_visits():
    labels = np.array([[0, 0, 1, 1, 1, 0, 0, 2],
                       [2, 2, 2, 2, 2, 2, 2, 2],
                       [1, 2, 2, 0, 0, 0, 0, 1]])
    visits = visit_lengths(labels, 3)
    np.testing.assert_array_equal(visits[0], [2, 4])
    np.testing.assert_array_equal(visits[1], [3])
    np.testing.assert_array_equal(visits[2], [2])


# ------------------------------------------------------------ the estimator
KW = dict(n_trajectories=64, n_steps=400)


@pytest.fixture(scope="module")
def tiny_prior(tiny_fitted):
    """The overdamped fixture's transition matrix and dwell times (one seed)."""
    return (tiny_fitted.transition_matrix(**KW, random_state=0),
            tiny_fitted.mean_dwell_times(**KW, random_state=0))


def test_transition_matrix_is_row_stochastic_and_persistent(tiny_fitted, tiny_prior):
    P, dwell = tiny_prior
    assert P.shape == (3, 3)
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-12)
    assert (P >= 0).all()
    # The wells hold: the data switch with probability 0.05 per step.
    assert (np.diag(P) > 0.8).all(), P
    # Same paths: time in a state over its exits is 1 / (1 - P_ii).
    np.testing.assert_allclose(dwell, 1 / (1 - np.diag(P)), rtol=1e-12)
    P2 = tiny_fitted.transition_matrix(2, **KW, random_state=0)
    np.testing.assert_allclose(P2.sum(1), 1.0, atol=1e-12)
    assert (np.diag(P2) < np.diag(P)).all()


def test_transition_matrix_is_deterministic(tiny_fitted, tiny_prior):
    np.testing.assert_array_equal(tiny_fitted.transition_matrix(**KW, random_state=0),
                                  tiny_prior[0])
    other = tiny_fitted.transition_matrix(**KW, random_state=1)
    assert not np.array_equal(other, tiny_prior[0])
    # random_state=None falls back on the estimator's (an int in the fixture).
    np.testing.assert_array_equal(tiny_fitted.transition_matrix(**KW),
                                  tiny_fitted.transition_matrix(**KW))


def test_mean_first_passage_times_of_the_prior(tiny_fitted, tiny_prior):
    P, dwell = tiny_prior
    m = tiny_fitted.mean_first_passage_times(**KW, random_state=0)
    # Solved from the same chain as transition_matrix gives.
    np.testing.assert_allclose(m, mean_first_passage_times(P), rtol=1e-12)
    np.testing.assert_array_equal(np.diag(m), 0.0)
    # A passage out of i cannot take less than a visit to i.
    off = ~np.eye(3, dtype=bool)
    assert np.isfinite(m).all() and (m[off] >= np.repeat(dwell, 2) - 1e-9).all(), m
    m3 = tiny_fitted.mean_first_passage_times(3, **KW, random_state=0)
    assert m3.shape == (3, 3) and (m3[off] > 0).all()
    with pytest.raises(ValueError, match="lag must be at most n_steps=400"):
        tiny_fitted.mean_first_passage_times(401, **KW)


def test_implied_timescales_of_the_prior(tiny_fitted, tiny_prior):
    t = tiny_fitted.implied_timescales(**KW, random_state=0)
    assert t.shape == (2,) and (t > 0).all() and t[0] >= t[1]
    # The reversible estimate agrees with the plain matrix's eigenvalues.
    ev = np.sort(np.abs(np.linalg.eigvals(tiny_prior[0])))[::-1][1:]
    np.testing.assert_allclose(t, -1 / np.log(ev), rtol=0.1)
    # Markov at the label's lag: lag 4 reads about the same slow time.
    t4 = tiny_fitted.implied_timescales(4, **KW, random_state=0)
    np.testing.assert_allclose(t4[0], t[0], rtol=0.25)
    with pytest.raises(ValueError, match="lag must be at most n_steps=400"):
        tiny_fitted.implied_timescales(401, **KW)


def test_dwell_times(tiny_fitted, tiny_prior):
    visits = tiny_fitted.dwell_times(**KW, random_state=0)
    assert len(visits) == 3
    assert all(v.dtype.kind == "i" and len(v) > 0 and (v >= 1).all() for v in visits)
    # Complete visits only: their mean is biased short, but not by much here
    # (visits of about 40 steps in paths of 400).
    means = np.array([v.mean() for v in visits])
    assert (means < tiny_prior[1]).all() and (means > 0.6 * tiny_prior[1]).all()


def test_mean_visit_lengths_count_censored_time():
    labels = np.array([[0, 0, 1, 1, 1, 0, 0, 2],
                       [2, 2, 2, 2, 2, 2, 2, 2]])
    # State 0: 4 steps of time (0->0, 0->1, 0->0, 0->2), 2 exits; state 1:
    # 3 steps, 1 exit; state 2: 7 steps (the last point of a path starts
    # none), never left.
    np.testing.assert_allclose(mean_visit_lengths(labels, 3), [2.0, 3.0, np.nan])


def test_mean_visit_lengths_unbiased_on_long_visits():
    # A chain that stays with probability 0.99 in paths of 100 steps: the
    # complete visits average far below 100, the estimate does not.
    rng = np.random.default_rng(0)
    switch = rng.random((2000, 99)) < 0.01
    labels = np.concatenate([np.zeros((2000, 1), int),
                             np.cumsum(switch, axis=1) % 2], axis=1)
    estimate = mean_visit_lengths(labels, 2)
    np.testing.assert_allclose(estimate, 100.0, rtol=0.08)
    assert max(v.mean() for v in visit_lengths(labels, 2)) < 60


@pytest.mark.parametrize("kwargs, message", [
    (dict(lag=0), "lag must be a positive integer"),
    (dict(lag=401), "lag must be at most n_steps=400"),
    (dict(n_trajectories=0), "n_trajectories must be a positive integer"),
    (dict(n_steps=0), "n_steps must be a positive integer"),
    (dict(core_fraction=1.0), r"core_fraction must be in \(0, 1\)"),
    (dict(core_fraction=0.0), r"core_fraction must be in \(0, 1\)"),
    (dict(n_trajectories=10**5, n_steps=10**4), "at most 2e\\+07 latent points"),
])
def test_transition_matrix_bad_arguments(tiny_fitted, kwargs, message):
    args = dict(KW, **kwargs)
    lag = args.pop("lag", 1)
    with pytest.raises(ValueError, match=message):
        tiny_fitted.transition_matrix(lag, **args)


def test_other_methods_bad_arguments(tiny_fitted):
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        tiny_fitted.dwell_times(n_steps=0)
    with pytest.raises(ValueError, match="n_trajectories must be a positive integer"):
        tiny_fitted.mean_dwell_times(n_trajectories=-1)
    with pytest.raises(ValueError, match="n_sequences must be a positive integer"):
        tiny_fitted.sample(0, 10)
    with pytest.raises(ValueError, match="n_timesteps must be a positive integer"):
        tiny_fitted.sample(2, 0)
    with pytest.raises(TypeError, match="lag must be a positive integer"):
        tiny_fitted.transition_matrix(1.5)


@pytest.mark.parametrize("method, args", [
    ("transition_matrix", ()), ("dwell_times", ()), ("mean_dwell_times", ()),
    ("sample", (2, 5)), ("kramers_rates", ()), ("mean_first_passage_times", ()),
    ("implied_timescales", ()),
])
def test_kinetics_need_a_fitted_model(method, args):
    with pytest.raises(NotFittedError):
        getattr(LangevinSegmenter(), method)(*args)


def test_sample_decodes_to_the_data_and_its_labels(tiny_fitted, tiny_data):
    X, y = tiny_fitted.sample(8, 100, random_state=0)
    assert X.shape == (8, 100, 8) and y.shape == (8, 100)
    assert y.dtype.kind == "i" and set(np.unique(y)) <= {0, 1, 2}
    assert len(np.unique(y)) >= 2
    X2, y2 = tiny_fitted.sample(8, 100, random_state=0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, tiny_fitted.sample(8, 100, random_state=1)[0])
    # In the data's units: per-feature means and spreads as in the training data.
    data = tiny_data[0].reshape(-1, 8)
    flat = X.reshape(-1, 8)
    assert np.abs(flat.mean(0) - data.mean(0)).max() < 0.5 * data.std(0).max()
    np.testing.assert_allclose(flat.std(0), data.std(0), rtol=0.35)
    # The model reads its own samples back: labels agree with the paths' states
    # (chance: 1/3). Not near 1: this tiny model's barriers are about 1 kT, so
    # the paths often leave a basin without reaching the next core.
    agreement = (tiny_fitted.predict(X) == y).mean()
    assert agreement > 0.7, agreement


def test_sample_underdamped(tiny_underdamped):
    X, y = tiny_underdamped.sample(20, 60, random_state=0)
    assert X.shape == (20, 60, 8) and y.shape == (20, 60)
    # Chance is 1/3; low barriers, as in test_sample_decodes_to_the_data_and_its_labels.
    agreement = (tiny_underdamped.predict(X) == y).mean()
    assert agreement > 0.6, agreement
    P = tiny_underdamped.transition_matrix(**KW, random_state=0)
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-12)
    assert (np.diag(P) > 0.8).all(), P


def test_sample_one_step(tiny_fitted):
    X, y = tiny_fitted.sample(3, 1, random_state=0)
    assert X.shape == (3, 1, 8) and y.shape == (3, 1)


# ---------------------------------------------------------------- the clock
def test_calibrate_clock_recovers_a_known_clock(tiny_fitted):
    """Paths of the prior run 2x as fast stand in for the posterior's."""
    seg = tiny_fitted
    known = 2.0
    paths = prior_state_paths(seg.module_, seg.energy_, dt=seg.dt, n_paths=256,
                              n_steps=400, core_fraction=0.5,
                              generator=torch.Generator().manual_seed(5),
                              time_scale=known).positions
    found = calibrate_clock(seg.module_, seg.energy_, list(paths), dt=seg.dt,
                            core_fraction=0.5, generator=torch.Generator().manual_seed(6))
    assert found == pytest.approx(known, rel=0.2)
    # Paths as slow as the prior itself give a clock near 1.
    slow = prior_state_paths(seg.module_, seg.energy_, dt=seg.dt, n_paths=64,
                             n_steps=400, core_fraction=0.5,
                             generator=torch.Generator().manual_seed(7)).positions
    assert calibrate_clock(seg.module_, seg.energy_, list(slow), dt=seg.dt,
                           core_fraction=0.5,
                           generator=torch.Generator().manual_seed(6)) == pytest.approx(
                               1.0, rel=0.2)
    # Cut into sequences of 5 steps, whose first labels are basins and
    # whose switches are few: the prior is read the same way, so the clock
    # is still found (read off long stationary prior paths: 0.7).
    short = [p[a:a + 5] for p in paths for a in range(0, 400, 5)]
    assert calibrate_clock(seg.module_, seg.energy_, short, dt=seg.dt,
                           core_fraction=0.5,
                           generator=torch.Generator().manual_seed(6)) == pytest.approx(
                               known, rel=0.25)
    # Mixed lengths: the prior copies of each piece run as long as it.
    mixed = list(paths[:64]) + short[64 * 80:]
    assert calibrate_clock(seg.module_, seg.energy_, mixed, dt=seg.dt,
                           core_fraction=0.5,
                           generator=torch.Generator().manual_seed(6)) == pytest.approx(
                               known, rel=0.25)
    # Paths that never switch carry no rate: the clock is left as trained.
    still = [np.repeat(seg.energy_.minima[:1], 50, axis=0)]
    assert calibrate_clock(seg.module_, seg.energy_, still, dt=seg.dt,
                           core_fraction=0.5, generator=torch.Generator()) == 1.0


def test_fitted_clock_and_the_kinetics_methods(tiny_fitted):
    seg = tiny_fitted
    s = seg.prior_time_scale_
    assert np.isfinite(s) and s > 0
    rates = seg.kramers_rates()
    np.testing.assert_allclose(rates, s * seg.kramers_rates(clock="model"))
    calibrated = seg.mean_dwell_times(**KW, random_state=0)
    trained = seg.mean_dwell_times(**KW, clock="model", random_state=0)
    # The same prior on a clock s times as fast: visits s times as short.
    ratio = np.exp(np.mean(np.log(trained / calibrated)))
    assert ratio == pytest.approx(s, rel=0.3), (ratio, s)
    with pytest.raises(ValueError, match="clock must be one of"):
        seg.transition_matrix(clock="wall")
    with pytest.raises(TypeError, match="clock must be one of"):
        seg.sample(2, 5, clock=None)


def test_a_model_without_a_calibrated_clock_warns_and_runs_as_trained(tiny_fitted):
    import copy

    old = copy.deepcopy(tiny_fitted)
    old.prior_time_scale_ = float("nan")  # As loaded from an older file.
    with pytest.warns(UserWarning, match="before nldseg calibrated the prior's clock"):
        P = old.transition_matrix(**KW, random_state=0)
    np.testing.assert_array_equal(
        P, tiny_fitted.transition_matrix(**KW, clock="model", random_state=0))


@pytest.mark.parametrize("fixture", ["tiny_fitted", "tiny_underdamped"])
def test_kramers_rates(fixture, request):
    seg = request.getfixturevalue(fixture)
    rates = seg.kramers_rates()
    assert rates.shape == (3, 3)
    np.testing.assert_array_equal(np.diag(rates), 0.0)
    finite = rates[np.isfinite(rates)]
    assert (finite >= 0).all() and (finite > 0).any()


def test_sample_with_latent_noise_draws_from_its_own_covariance(tiny_latent_noise):
    """decode_observations uses L(z) at each position, not a shared L."""
    import torch

    from nldseg._kinetics import decode_observations

    module = tiny_latent_noise.module_
    z = torch.as_tensor(tiny_latent_noise.energy_.minima[:2], dtype=torch.float32)
    positions = z.repeat_interleave(20000, dim=0)
    gen = torch.Generator().manual_seed(0)
    X = decode_observations(module, positions, gen)
    for k in range(2):
        mean, scale = module.decoder_mean_and_scale(z[k])
        cov = (scale @ scale.T).double().numpy()
        got = np.cov(X[k * 20000:(k + 1) * 20000].T)
        np.testing.assert_allclose(got, cov, atol=0.05 * np.abs(cov).max())
    X2, y2 = tiny_latent_noise.sample(4, 50, random_state=0)
    assert X2.shape == (4, 50, 8) and np.isfinite(X2).all()


def test_switch_interval_is_steps_per_change_capped_at_the_longest_path():
    """The mean dwell over all states; paths that hardly change (short
    sequences each in one state) give at most their own length, not the
    sum of all their steps."""
    two_visits = [np.array([0] * 30 + [1] * 70), np.array([1] * 100)]
    assert switch_interval(two_visits) == 99.0  # 198 steps, 1 change: capped at 99.
    lively = np.tile(np.repeat([0, 1, 2, 1], 10), (3, 5))  # 200 steps per row
    assert switch_interval(lively) == pytest.approx(3 * 199 / (3 * 19))
    assert switch_interval(np.zeros((500, 200), dtype=np.int64)) == 199.0
    assert np.isnan(switch_interval([np.array([], dtype=np.int64)]))


def test_decoder_df_is_infinite_under_a_gaussian_noise_and_absent_before_fit(
        tiny_fitted):
    assert tiny_fitted.decoder_noise == "gaussian"
    np.testing.assert_array_equal(tiny_fitted.decoder_df_, np.full(8, np.inf))
    assert not hasattr(LangevinSegmenter(), "decoder_df_")


def test_student_noise_fits_samples_and_saves(tiny_data, tmp_path):
    """``decoder_noise="student"`` end to end: wells, labels, draws and a file.

    The states of a Gaussian chain are found as with a Gaussian noise; the
    learned degrees of freedom are saved with the model; ``sample`` draws
    through them (a lagged model too, as an autoregression).
    """
    from conftest import TINY

    from nldseg.metrics import segmentation_accuracy
    X, X_test, y_test = tiny_data
    seg = LangevinSegmenter(**dict(TINY, decoder_noise="student")).fit(X)
    assert seg.n_states_ == 3, seg.n_states_
    assert segmentation_accuracy(y_test, seg.predict(X_test)) > 0.9
    df = seg.decoder_df_
    assert df.shape == (8,) and df.dtype == np.float64 and (df > 2.0).all()
    assert not np.allclose(df, 10.0)  # Learned.
    path = tmp_path / "student.nldseg"
    seg.save(path)
    loaded = LangevinSegmenter.load(path)
    assert loaded.decoder_noise == "student"
    np.testing.assert_array_equal(loaded.decoder_df_, df)
    np.testing.assert_array_equal(loaded.predict(X_test), seg.predict(X_test))
    assert loaded.score(X_test) == pytest.approx(seg.score(X_test))
    X_new, y_new = seg.sample(4, 50, random_state=0)
    np.testing.assert_array_equal(X_new, loaded.sample(4, 50, random_state=0)[0])
    assert X_new.shape == (4, 50, 8) and np.isfinite(X_new).all()
    lagged = LangevinSegmenter(**dict(TINY, decoder_noise="student", n_lags=1,
                                      max_iter=8)).fit(X[:20])
    X_lag, _ = lagged.sample(2, 20, random_state=0)
    assert X_lag.shape == (2, 20, 8) and np.isfinite(X_lag).all()
    # One per observed feature: the lag's conditioning features have none.
    assert lagged.n_lags_ == 1 and lagged.decoder_df_.shape == (8,)
    np.testing.assert_array_equal(
        lagged.decoder_df_, lagged.module_.decoder_df().detach().numpy()[8:])
