"""Landscape functions on hand-written energies with known answers."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from nldseg import _landscape as L


class TiltedDoubleWell(nn.Module):
    """E(x, y) = a (x^2 - 1)^2 + tilt x + 0.5 k y^2 (+ c |z|^2 with c = 0.01)."""

    def __init__(self, a=2.0, tilt=0.0, k=2.0):
        super().__init__()
        self.a, self.tilt, self.k = a, tilt, k
        self.c = torch.tensor(0.01)

    def forward(self, z):
        x, y = z[..., 0], z[..., 1]
        return (self.a * (x * x - 1) ** 2 + self.tilt * x + 0.5 * self.k * y * y
                + self.c * (z * z).sum(-1))

    def grad(self, z):
        x, y = z[..., 0], z[..., 1]
        gx = 4 * self.a * x * (x * x - 1) + self.tilt
        gy = self.k * y
        return torch.stack([gx, gy], -1) + 2 * self.c * z


def _codes(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) * [0.8, 0.5] + rng.choice([-1.0, 1.0], (n, 1)) * [1, 0]


def test_find_minima_double_well():
    found = L.find_minima(TiltedDoubleWell(), _codes())
    minima = found["minima"][np.argsort(found["minima"][:, 0])]
    # Minima of 2 (x^2-1)^2 + 0.01 x^2: x^2 = 1 - 0.01/4, y = 0.
    x_star = math.sqrt(1 - 0.01 / 4)
    np.testing.assert_allclose(minima, [[-x_star, 0], [x_star, 0]], atol=1e-6)
    assert np.all(found["capture_radius"] > 0)
    assert np.all(found["code_minimum"] >= 0)


def test_saddle_is_not_a_minimum():
    # Codes exactly on the ridge x = 0 flow to the saddle (0, 0), which has a
    # negative Hessian eigenvalue and must be rejected.
    codes = np.column_stack([np.zeros(50), np.linspace(-1, 1, 50)])
    found = L.find_minima(TiltedDoubleWell(), np.vstack([codes, _codes(100)]))
    assert not np.any(np.all(np.abs(found["minima"]) < 1e-3, axis=1))
    assert len(found["minima"]) == 2


def test_second_order_weight_is_exact_for_a_quadratic():
    # E = E0 + z^T A z / 2: int exp(-beta E) = exp(-beta E0) (2 pi/beta)^(d/2) / sqrt(det A)
    A = np.array([[2.0, 0.3], [0.3, 1.0]])
    beta, e0 = 1.7, 0.4
    logw = L.second_order_weights(np.array([e0]), A[None], beta)
    exact = -beta * e0 + math.log(2 * math.pi / beta) - 0.5 * math.log(np.linalg.det(A))
    np.testing.assert_allclose(logw, [exact])


def _grid_occupancy(energy, beta):
    xs = np.linspace(-3, 3, 601)
    ys = np.linspace(-3, 3, 301)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    with torch.no_grad():
        e = energy(torch.tensor(np.stack([X, Y], -1))).numpy()
    w = np.exp(-beta * (e - e.min()))
    left = w[xs < 0].sum()
    return np.array([left, w.sum() - left]) / w.sum()


@pytest.mark.parametrize("tilt", [0.0, 0.3])
def test_occupancies_match_quadrature(tilt):
    energy = TiltedDoubleWell(tilt=tilt)
    beta = 2.0
    codes = _codes()
    found = L.find_minima(energy, codes)
    order = np.argsort(found["minima"][:, 0])  # left well first
    land = L.EnergyLandscape(energy, beta, found["minima"][order], np.array([0, 1]),
                             found["capture_radius"][order], found["step_size"],
                             found["max_step"])
    L.compute_occupancies(land, codes, 6000, np.random.default_rng(0))
    truth = _grid_occupancy(energy, beta)
    np.testing.assert_allclose(land.occupancy("sampled"), truth, atol=0.03)
    np.testing.assert_allclose(land.occupancy("second_order"), truth, atol=0.06)
    for m in ("sampled", "zeroth_order", "second_order"):
        assert land.occupancy(m).sum() == pytest.approx(1.0)
    if tilt > 0:
        # A positive tilt raises the right well: the left one holds more mass.
        assert land.occupancy("sampled")[0] > 0.6
    assert land.effective_sample_size > 1000


def test_basins_follow_the_flow_not_the_distance():
    # Strong tilt: the point (0.3, 0) is nearer the right minimum but the
    # tilt is too weak to remove that well, so it flows right; (-0.05, 0) is
    # just left of the ridge (the ridge is shifted right by the tilt).
    energy = TiltedDoubleWell(tilt=0.5)
    found = L.find_minima(energy, _codes())
    order = np.argsort(found["minima"][:, 0])
    land = L.EnergyLandscape(energy, 1.0, found["minima"][order], np.array([0, 1]),
                             found["capture_radius"][order], found["step_size"],
                             found["max_step"])
    pts = np.array([[-2.0, 1.0], [-0.05, 0.0], [0.3, 0.0], [2.0, -1.0]])
    # Ridge of 8x(x^2-1) + 0.5 + 0.02x = 0 near x = 0.0625.
    np.testing.assert_array_equal(land.predict(pts), [0, 0, 1, 1])


def test_merge_minima_by_count_and_by_request():
    energy = TiltedDoubleWell()
    minima = np.array([[-1.0, 0.0], [1.0, 0.0], [1.2, 0.0]])
    state = L.merge_minima(energy, minima, np.array([500, 480, 3]),
                           min_fraction=0.02, n_states=None)
    # The tiny third well joins its neighbour across the lower barrier (x=1).
    assert state[1] == state[2] != state[0]
    state = L.merge_minima(energy, minima, np.array([500, 480, 300]),
                           min_fraction=0.0, n_states=1)
    assert np.all(state == 0)
    state = L.merge_minima(energy, minima, np.array([500, 480, 300]),
                           min_fraction=0.0, n_states=None)
    assert sorted(state) == [0, 1, 2]


class DimpledDoubleWell(TiltedDoubleWell):
    """The double well with a dimple on its ridge: a shallow minimum at x = 0."""

    def forward(self, z):
        return super().forward(z) - 0.5 * torch.exp(-z[..., 0] ** 2 / 0.02)


def test_a_dimple_below_the_barrier_floor_is_no_state():
    """A minimum left over a barrier under ``min_barrier`` joins a neighbour; the
    group's own exits then count from its bottom, so nothing else follows."""
    energy = DimpledDoubleWell()
    minima = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    dimple = min(L.straight_line_barrier(energy, minima[1], m) for m in minima[::2])
    deep = L.straight_line_barrier(energy, minima[0], minima[1])
    assert 0.1 < dimple < 0.5 < 1.5 < deep  # A dimple of a few tenths, wells of ~2.
    counts = np.array([500, 5, 480])
    kept = L.merge_minima(energy, minima, counts, min_fraction=0.0, n_states=None,
                          min_barrier=0.9 * dimple)
    assert sorted(kept) == [0, 1, 2]
    for floor in (1.1 * dimple, 1.0, 0.9 * deep):
        state = L.merge_minima(energy, minima, counts, min_fraction=0.0,
                               n_states=None, min_barrier=floor)
        assert state[0] != state[2] and state[1] in (state[0], state[2])
    state = L.merge_minima(energy, minima, counts, min_fraction=0.0, n_states=None,
                           min_barrier=1.1 * deep)
    assert np.all(state == state[0])
    # Only wells holding less than dimple_fraction of the codes count as dimples.
    for shares, n_kept in (([500, 5, 480], 2), ([500, 400, 480], 3)):
        state = L.merge_minima(energy, minima, np.array(shares), min_fraction=0.0,
                               n_states=None, min_barrier=1.1 * dimple,
                               dimple_fraction=0.05)
        assert len(set(state)) == n_kept


def test_a_requested_number_of_states_wins_over_the_shallow_well_rules():
    """With ``n_states`` given, the dimple, relative-barrier and smallness rules
    merge only while more than ``n_states`` wells remain: asked for three, the
    dimple stays a state; asked for two, it is the one merged, as without a
    request; asked for more than the minima, all of them."""
    energy = DimpledDoubleWell()
    minima = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    dimple = min(L.straight_line_barrier(energy, minima[1], m) for m in minima[::2])
    counts = np.array([500, 5, 480])
    rules = dict(min_fraction=0.02, min_barrier=1.1 * dimple, dimple_fraction=0.05,
                 relative_barrier=0.5)
    merged = L.merge_minima(energy, minima, counts, n_states=None, **rules)
    assert merged[0] != merged[2] and merged[1] in (merged[0], merged[2])
    np.testing.assert_array_equal(
        L.merge_minima(energy, minima, counts, n_states=2, **rules), merged)
    for request in (3, 4):
        state = L.merge_minima(energy, minima, counts, n_states=request, **rules)
        assert sorted(state) == [0, 1, 2]
    # Smallness alone (no shallow-well rule) stops at the request too.
    state = L.merge_minima(energy, minima, counts, n_states=3, min_fraction=0.02)
    assert sorted(state) == [0, 1, 2]
    assert len(set(L.merge_minima(energy, minima, counts, n_states=None,
                                  min_fraction=0.02))) == 2


def test_a_well_far_shallower_than_the_others_is_no_state_whatever_its_share():
    """``relative_barrier``: a well of any share left over less than that
    fraction of the highest lowest-barrier out of any well joins a neighbour;
    the two deep wells, each other's equal, stay apart."""
    energy = DimpledDoubleWell()
    minima = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    dimple = min(L.straight_line_barrier(energy, minima[1], m) for m in minima[::2])
    # The deep wells' lowest exits lead into the dimple, from their own bottoms.
    top = max(L.straight_line_barrier(energy, minima[i], minima[1]) for i in (0, 2))
    shares = np.array([500, 400, 480])  # The dimple holds much: not a small well.
    kept = L.merge_minima(energy, minima, shares, min_fraction=0.0, n_states=None,
                          min_barrier=10.0, dimple_fraction=0.05,
                          relative_barrier=0.9 * dimple / top)
    assert sorted(kept) == [0, 1, 2]
    state = L.merge_minima(energy, minima, shares, min_fraction=0.0, n_states=None,
                           min_barrier=10.0, dimple_fraction=0.05,
                           relative_barrier=1.1 * dimple / top)
    assert state[0] != state[2] and state[1] in (state[0], state[2])
    # Once the dimple is gone the two wells' exits are alike: even a floor of
    # half the highest exit keeps both.
    state = L.merge_minima(energy, minima, shares, min_fraction=0.0, n_states=None,
                           relative_barrier=0.5)
    assert len(set(state)) == 2


class RidgeDimple(nn.Module):
    """4 (x^2 - 1)^2 + y^2 - 1.5 exp(-x^2 / 0.02) + 0.01 |z|^2: two wells left over
    about 3.5 energy units, and a small well on the ridge left over about 1."""

    def __init__(self):
        super().__init__()
        self.c = torch.tensor(0.01)  # The confining term's weight, as the MLP has.

    def forward(self, z):
        x, y = z[..., 0], z[..., 1]
        return (4 * (x * x - 1) ** 2 + y * y - 1.5 * torch.exp(-x * x / 0.02)
                + 0.01 * (z * z).sum(-1))

    def grad(self, z):
        x, y = z[..., 0], z[..., 1]
        gx = 16 * x * (x * x - 1) + 150 * x * torch.exp(-x * x / 0.02)
        return torch.stack([gx, 2 * y], -1) + 0.02 * z


@pytest.mark.parametrize("beta, n_states", [(1.0, 2), (3.0, 3)])
def test_a_small_well_left_within_two_kt_is_no_state(beta, n_states):
    """The default floor, in kT: at beta 1 the ridge well (2 % of the codes, left
    over about 1 kT) joins a deep well; at beta 3 the same barrier is about 3 kT and
    it is a state of its own. The deep wells are states either way."""
    energy = RidgeDimple()
    minima = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    exit_ = L.straight_line_barrier(energy, minima[1], minima[2])
    assert 0.9 < exit_ < 1.1 and L.straight_line_barrier(energy, minima[2], minima[1]) > 3
    assert exit_ < L.MIN_BARRIER_KT < 3 * exit_
    rng = np.random.default_rng(0)
    codes = np.vstack([rng.normal(size=(490, 2)) * 0.2 + [-1, 0],
                       rng.normal(size=(490, 2)) * 0.2 + [1, 0],
                       rng.normal(size=(20, 2)) * 0.01])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        land = L.build_landscape(energy, beta, codes, min_state_fraction=0.005,
                                 n_states=None, rng=rng, n_occupancy_draws=2000)
    assert land.n_states == n_states and len(land.all_minima) == 3
    deep = land.predict(np.array([[-1.0, 0.0], [1.0, 0.0]]))
    assert deep[0] != deep[1]


def test_group_points():
    pts = np.array([[0.0, 0], [0.01, 0], [1, 1], [1.005, 1], [0, 0.02]])
    np.testing.assert_array_equal(L.group_points(pts, 0.05), [0, 0, 1, 1, 0])


def test_relabel_states_permutes_everything():
    energy = TiltedDoubleWell(tilt=0.2)
    minima = np.array([[-1.0, 0.0], [1.0, 0.0]])
    found = L.find_minima(energy, _codes())
    order = np.argsort(found["minima"][:, 0])
    land = L.EnergyLandscape(energy, 1.0, found["minima"][order], np.array([0, 1]),
                             found["capture_radius"][order], found["step_size"],
                             found["max_step"])
    L.compute_occupancies(land, _codes(), 2000, np.random.default_rng(0))
    before = {k: v.copy() for k, v in land.occupancies.items()}
    L.relabel_states(land, np.array([1, 0]))
    np.testing.assert_array_equal(land.predict(minima), [1, 0])
    for k in before:
        np.testing.assert_array_equal(land.occupancies[k], before[k][::-1])


class FlowingDimpledDoubleWell(DimpledDoubleWell):
    """:class:`DimpledDoubleWell` whose gradient (by autograd) sees the dimple."""

    def grad(self, z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return torch.autograd.grad(self.forward(z).sum(), z)[0]


def test_join_states_sums_occupancy_and_keeps_the_deepest_minimum():
    energy = FlowingDimpledDoubleWell(tilt=0.2)
    codes = np.concatenate([_codes(), np.random.default_rng(1).normal(0, 0.05, (100, 2))])
    found = L.find_minima(energy, codes)
    order = np.argsort(found["minima"][:, 0])
    assert len(order) == 3  # x = -1, 0 (the dimple), 1
    land = L.EnergyLandscape(energy, 1.0, found["minima"][order], np.arange(3),
                             found["capture_radius"][order], found["step_size"],
                             found["max_step"])
    L.compute_occupancies(land, codes, 4000, np.random.default_rng(0))
    before = {k: v.copy() for k, v in land.occupancies.items()}
    pts = np.array([[-1.5, 0.0], [-0.02, 0.0], [1.2, 0.0]])
    assert land.predict(pts).tolist() == [0, 1, 2]
    # Join the dimple (state 1) with the right well (state 2).
    L.join_states(land, np.array([0, 1, 1]))
    assert land.n_states == 2
    new = land.predict(pts)
    assert new[1] == new[2] != new[0]
    for k, occ in before.items():
        joined = np.sort([occ[0], occ[1] + occ[2]])
        np.testing.assert_allclose(np.sort(land.occupancies[k]), joined)
    # Numbered by sampled occupancy, largest first; the joined state's
    # minimum is the deeper of its two (x = 1, below the dimple's).
    assert land.occupancies["sampled"][0] >= land.occupancies["sampled"][1]
    joined_state = new[2]
    assert land.minima[joined_state][0] > 0.5
    assert land.minima_energies[joined_state] == pytest.approx(
        float(energy(torch.as_tensor(land.minima[joined_state]))), abs=1e-9)
    with pytest.raises(ValueError, match="state_map"):
        L.join_states(land, np.array([0, 2]))
    with pytest.raises(ValueError, match="state_map"):
        L.join_states(land, np.array([0, 0, 1]))


def _around_grid(landscape, n: int, seed: int) -> torch.Tensor:
    """Uniform float32 points over the lookup grid and 30% beyond it on every side."""
    lo = landscape.lookup_lo
    hi = lo + landscape.lookup_step * (landscape.lookup_minimum.shape[0] - 1)
    rng = np.random.default_rng(seed)
    z = rng.uniform(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo), size=(n, 3))
    return torch.as_tensor(z, dtype=torch.float32)


def test_lookup_grid_labels_equal_the_flow(tiny_fitted):
    landscape = tiny_fitted.energy_
    assert landscape.lookup_minimum is not None
    assert landscape.lookup_minimum.shape == (24, 24, 24)
    lo = landscape.lookup_lo
    hi = lo + landscape.lookup_step * 23
    z = _around_grid(landscape, 20000, seed=0)
    flowed = landscape.state_of_minimum[landscape._flow_minimum(z).numpy()]
    looked_up = landscape._basins_torch(z)
    assert np.bincount(flowed).min() > 1000  # Every basin is well represented.
    assert np.mean(looked_up == flowed) >= 0.999
    # Cells whose corners disagree, and points outside the grid, are flowed.
    from nldseg._landscape import _lookup

    found = _lookup(z, landscape._lookup_tables())
    outside = ((z.numpy() < lo) | (z.numpy() > hi)).any(1)
    assert np.all(found.numpy()[outside] == -1)
    assert 0 < np.mean(found.numpy() >= 0) < 1


def test_labels_do_not_depend_on_how_points_are_batched(tiny_fitted):
    """A stream's handful of samples get the labels of one large batch, hit or miss."""
    landscape = tiny_fitted.energy_
    # A batch of 8 with a miss costs a flow of its own: few points keep it fast.
    z = _around_grid(landscape, 800, seed=1)
    want = landscape._basins_torch(z)
    assert len(np.unique(want)) == landscape.n_states >= 2
    got = np.concatenate([landscape._basins_torch(z[i:i + 8])
                          for i in range(0, len(z), 8)])
    np.testing.assert_array_equal(got, want)
    # Looked up in blocks of any size (a block boundary inside a run of misses).
    np.testing.assert_array_equal(landscape._basins_torch(z, chunk=70), want)
    k = landscape.n_states
    proba = landscape.state_fractions(z[:8])
    assert proba.shape == (k,)
    np.testing.assert_allclose(proba, np.bincount(want[:8], minlength=k) / 8)
    # (time, sequence, sample) samples: the fraction of each group's samples.
    frac = landscape.state_fractions(z.reshape(10, 10, 8, 3))
    assert frac.shape == (10, 10, k)
    np.testing.assert_allclose(
        frac, (want.reshape(10, 10, 8)[..., None] == np.arange(k)).mean(-2))


def test_agreeing_cells_keep_only_cells_with_one_corner_value():
    from nldseg._landscape import _agreeing_cells

    grid = np.array([[0, 0, 1], [0, 0, 1], [2, 0, 1]])
    np.testing.assert_array_equal(_agreeing_cells(grid), [[0, -1], [-1, -1]])
    cube = np.zeros((3, 3, 3), dtype=np.int64)
    cube[2, 2, 2] = 1  # Spoils only the cell that has it as a corner.
    cells = _agreeing_cells(cube)
    assert cells.shape == (2, 2, 2) and cells[1, 1, 1] == -1
    assert (np.delete(cells.reshape(-1), 7) == 0).all()


def test_lookup_tables_are_derived_not_pickled(tiny_fitted):
    import pickle

    from nldseg._landscape import _lookup

    landscape = tiny_fitted.energy_
    z = _around_grid(landscape, 3000, seed=2)
    want = landscape._basins_torch(z)
    assert len(np.unique(want)) >= 2
    clone = pickle.loads(pickle.dumps(landscape))
    assert "_lookup_cache" not in clone.__dict__
    np.testing.assert_array_equal(clone._basins_torch(z), want)
    # A cache written by an earlier version (other keys) is rebuilt, not used.
    clone._lookup_cache = {"lo": torch.zeros(3), "n_cells": torch.tensor([23] * 3)}
    np.testing.assert_array_equal(clone._basins_torch(z), want)
    # Points known to miss the lookup may skip it on the first pass.
    tables = clone._lookup_tables()
    miss = z[_lookup(z, tables) < 0]
    assert len(miss) > 0
    torch.testing.assert_close(clone._flow_minimum(miss, tables=tables, known_misses=True),
                               clone._flow_minimum(miss, tables=tables), rtol=0, atol=0)


def test_hessians_in_concurrent_threads():
    """Threads computing Hessians at once (a threaded grid search) agree with one."""
    from concurrent.futures import ThreadPoolExecutor

    from nldseg._landscape import energy_hessian
    from nldseg._model import EnergyMLP

    torch.manual_seed(0)
    energy = EnergyMLP(3, 16).double()
    z = torch.randn(64, 3, dtype=torch.float64)
    expected = energy_hessian(energy, z)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: energy_hessian(energy, z), range(32)))
    for h in results:
        torch.testing.assert_close(h, expected)
