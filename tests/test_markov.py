"""``inference="markov"``: the exact forward filter of the states' Markov chain."""

import copy
import pickle

import numpy as np
import pytest
import torch

from nldseg import LangevinSegmenter
from nldseg._inference import MarkovFilter
from nldseg._kinetics import MarkovStateModel, PriorPaths, markov_state_model
from nldseg.metrics import segmentation_accuracy

MODELS = ["tiny_fitted", "tiny_latent_noise", "tiny_underdamped", "tiny_lagged"]


def _markov(seg):
    """The fitted segmenter labelling by its Markov chain (a shallow copy)."""
    return copy.copy(seg).set_params(inference="markov")


def _data(model, request):
    name = "lagged_regimes" if model == "tiny_lagged" else "tiny_data"
    return request.getfixturevalue(name)


@pytest.mark.parametrize("model", ["tiny_fitted", "tiny_latent_noise", "tiny_lagged"])
def test_point_log_prob_is_the_decoders_density(model, request):
    """Full, latent-dependent noise and a lag's conditional density alike."""
    mod = request.getfixturevalue(model).module_
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((9, mod.dec_log_std.shape[0]), generator=gen)
    z = torch.randn((5, mod.state_dim), generator=gen)
    got = mod.points_log_prob(x, mod.decoder_points(z), chunk_elements=1)
    want = torch.stack([mod.decode_log_prob(x[None], z[m].expand(9, 1, -1), 1)[:, 0]
                        for m in range(5)], 1)
    assert got.shape == (9, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_the_chain_is_the_prior_paths_and_its_points_lie_in_their_cores(tiny_fitted):
    from nldseg._estimator import (
        _CLOCK_CORE_FRACTION,
        _MARKOV_PATHS,
        _MARKOV_POINTS,
        _MARKOV_STEPS,
    )
    from nldseg._kinetics import landscape_core_thresholds, point_energies
    seg = tiny_fitted
    points = seg._markov_points
    assert points.shape == (3, _MARKOV_POINTS, seg.module_.latent_dim)
    thresholds = landscape_core_thresholds(seg.energy_, _CLOCK_CORE_FRACTION)
    for k in range(3):
        np.testing.assert_array_equal(seg.energy_.predict(points[k]), k)
        assert (point_energies(seg.module_, torch.as_tensor(points[k]))
                < thresholds[k]).all()
    assert len(np.unique(points[0], axis=0)) == _MARKOV_POINTS  # Drawn without replacement.
    # The same seed and paths as transition_matrix's.
    np.testing.assert_allclose(seg._markov_transition, seg.transition_matrix(
        n_trajectories=_MARKOV_PATHS, n_steps=_MARKOV_STEPS), rtol=0, atol=0)
    off = seg._markov_transition - np.diag(np.diag(seg._markov_transition))
    assert (off > 0).sum() >= 4  # The states do change.


def test_points_come_from_the_core_else_the_basin_else_the_minimum(tiny_fitted):
    land = tiny_fitted.energy_
    # Paths that sit at state 0's minimum, then at a point of state 1's basin
    # above its core; state 2 is never entered.
    above = land.minima[1] + 0.5 * (land.minima[0] - land.minima[1])
    assert land.predict(above[None])[0] == 1
    positions = np.stack([np.repeat(land.minima[0][None], 7, 0),
                          np.repeat(above[None], 7, 0)])[:, :, :].astype(np.float32)
    labels = np.array([[0] * 7, [1] * 7])
    energies = np.array([[0.0] * 7, [5.0] * 7])
    # The basins are the labels: the minimum of state 0, a point of state 1.
    chain = markov_state_model(PriorPaths(positions, labels, labels, energies), land,
                               thresholds=np.array([1.0, 1.0, 1.0]), n_points=5,
                               generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(chain.transition, np.eye(3))
    want = [land.minima[0], above, land.minima[2]]
    for k in range(3):
        np.testing.assert_allclose(chain.points[k], np.repeat(want[k][None], 5, 0),
                                   rtol=1e-6)


def _forward(log_b, start, transition):
    """The HMM forward filter, written out."""
    out, alpha = [], None
    for row in np.exp(log_b):
        alpha = start * row if alpha is None else (alpha @ transition) * row
        alpha = alpha / alpha.sum()
        out.append(alpha)
    return np.array(out)


def test_update_is_the_forward_filter_and_skips_frames_it_cannot_weigh():
    rng = np.random.default_rng(0)
    transition = np.array([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.2, 0.8]])
    start = np.array([0.5, 0.3, 0.2])
    filt = MarkovFilter(None, MarkovStateModel(transition, np.zeros((3, 2, 1))), start)
    log_b = rng.normal(size=(6, 3))
    alpha, got = None, []
    for row in log_b:
        alpha = filt.update(alpha, row[None])
        got.append(alpha[0])
    floored = (1 - filt.TRANSITION_FLOOR) * transition + filt.TRANSITION_FLOOR / 3
    np.testing.assert_allclose(got, _forward(log_b, start, floored), rtol=1e-12)
    # A frame with no finite density is not weighed: the chain only moves.
    both = filt.update(alpha, np.array([[-np.inf, np.nan, -np.inf]]))
    np.testing.assert_allclose(both[0], alpha[0] @ floored, rtol=1e-12)
    # A transition the paths never made stays possible: state 0 -> 2 directly.
    sure = filt.update(np.array([[1.0, 0.0, 0.0]]), np.array([[-1e4, -1e4, 0.0]]))
    assert sure[0, 2] > 0.99


@pytest.mark.parametrize("model", MODELS)
def test_markov_labels_are_the_forward_filter_of_the_chain(model, request):
    seg = _markov(request.getfixturevalue(model))
    X_test, y_test = _data(model, request)[1:]
    proba = seg.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(-1), 1.0, rtol=1e-12)
    # Recomputed by decode_log_prob per point and the recursion above.
    x = seg._prepare(X_test[:1], None).data
    points = torch.as_tensor(seg._markov_points.reshape(-1, seg._markov_points.shape[-1]))
    mod = seg.module_
    with torch.no_grad():
        lp = torch.stack([mod.decode_log_prob(torch.as_tensor(x)[None],
                                              p.expand(len(x), 1, -1), 1)[:, 0]
                          for p in points], 1).double()
    log_b = (torch.logsumexp(lp.view(len(x), 3, -1), -1)
             - np.log(seg._markov_points.shape[1])).numpy()
    floor = MarkovFilter.TRANSITION_FLOOR
    want = _forward(log_b - log_b.max(1, keepdims=True), seg.state_occupancy_
                    / seg.state_occupancy_.sum(),
                    (1 - floor) * seg._markov_transition + floor / 3)
    np.testing.assert_allclose(proba[0], want, rtol=1e-4, atol=1e-6)
    labels = seg.predict(X_test)
    assert len(np.unique(labels)) == 3
    assert segmentation_accuracy(y_test, labels) >= 0.9


@pytest.mark.parametrize("model", ["tiny_fitted", "tiny_lagged"])
def test_markov_stream_equals_predict_and_sequences_are_independent(model, request):
    seg = _markov(request.getfixturevalue(model))
    X_test = _data(model, request)[1]
    # Ragged: the filter runs the sequences side by side, longest first.
    seqs = [X_test[i, :20 + 7 * i] for i in range(len(X_test))]
    together = seg.predict_proba(seqs)
    for seq, got in zip(seqs, together):  # To the rounding of a batch's products.
        np.testing.assert_allclose(got, seg.predict_proba(seq), rtol=1e-10, atol=1e-15)
    stream = seg.stream()
    out = [stream.update(x_t) for x_t in seqs[-1]]
    np.testing.assert_array_equal([lab for lab, _ in out], seg.predict(seqs[-1]))
    np.testing.assert_allclose([p for _, p in out], together[-1], rtol=1e-6, atol=1e-9)


def test_one_state_is_certain(quiet_convergence, ragged_chain):
    from conftest import TINY_SEARCH
    seg = LangevinSegmenter(**dict(TINY_SEARCH, inference="markov")).fit(ragged_chain[0])
    assert seg.n_states_ == 1
    np.testing.assert_array_equal(seg.predict_proba(ragged_chain[0][:2]), 1.0)
    assert seg._markov_transition.shape == (1, 1)


def test_markov_chain_is_saved_and_a_file_without_it_simulates_the_same(
        tiny_fitted, tiny_data, tmp_path):
    seg = _markov(tiny_fitted)
    X_test = tiny_data[1]
    want = seg.predict_proba(X_test)
    seg.save(tmp_path / "m.nldseg")
    loaded = LangevinSegmenter.load(tmp_path / "m.nldseg")
    assert loaded.inference == "markov"
    np.testing.assert_array_equal(loaded.predict_proba(X_test), want)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(seg)).predict_proba(X_test),
                                  want)
    # A file written before inference="markov": the chain is simulated again,
    # from the same seed, clock and paths.
    payload = torch.load(tmp_path / "m.nldseg", weights_only=True)
    for name in ("_markov_transition", "_markov_points"):
        del payload["arrays"][name]
    torch.save(payload, tmp_path / "old.nldseg")
    old = LangevinSegmenter.load(tmp_path / "old.nldseg")
    assert old._markov_transition.size == 0
    np.testing.assert_allclose(old.predict_proba(X_test), want, rtol=1e-6, atol=1e-9)


def _two_state_filter(transition):
    """A MarkovFilter over 1-D frames with known densities N(-1, 1) and N(1, 1)."""
    chain = MarkovStateModel(np.asarray(transition, float), np.zeros((2, 1, 1), np.float32))
    state_filter = MarkovFilter(None, chain, np.array([0.5, 0.5]))
    means = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    state_filter.log_emissions = lambda x: (
        -0.5 * (x.double() - means) ** 2 - 0.5 * np.log(2 * np.pi)).numpy()
    return state_filter


def _chain_sequences(lengths, transition, seed):
    """Frames and true labels of a 2-state chain with N(-1, 1) / N(1, 1) frames."""
    from nldseg._validation import Sequences
    rng = np.random.default_rng(seed)
    frames, labels = [], []
    for n in lengths:
        y = [int(rng.integers(2))]
        for _ in range(n - 1):
            y.append(int(rng.random() < transition[y[-1]][1]))
        y = np.array(y)
        labels.append(y)
        frames.append((2.0 * y - 1.0 + rng.standard_normal(n))[:, None])
    data = np.concatenate(frames).astype(np.float32)
    return Sequences(data, np.asarray(lengths), "list"), labels


def test_reestimate_finds_the_chain_of_the_data():
    """Overlapping frames (one sd apart): Baum-Welch from a matrix far off lands
    on the true labels' own counts, and the likelihood rises every round."""
    truth = [[0.97, 0.03], [0.06, 0.94]]
    lengths = [300] * 30 + [1, 2, 57]  # Ragged, with a sequence of one frame.
    seqs, labels = _chain_sequences(lengths, truth, seed=0)
    counts = np.zeros((2, 2))
    for y in labels:
        np.add.at(counts, (y[:-1], y[1:]), 1)
    own = counts / counts.sum(1, keepdims=True)
    state_filter = _two_state_filter([[0.6, 0.4], [0.4, 0.6]])
    lls = [state_filter.reestimate(seqs, max_iter=n, tol=0.0)[2] for n in (1, 2, 3, 6)]
    assert np.all(np.diff(lls) > 0)
    est, n_iter, _ = state_filter.reestimate(seqs, max_iter=200, tol=1e-9)
    assert n_iter < 200
    np.testing.assert_allclose(est.sum(1), 1.0, atol=1e-12)
    assert np.abs(est - own).max() < 0.01, (est, own)
    assert np.abs(state_filter.transition - [[0.6, 0.4], [0.4, 0.6]]).max() < 1e-5  # Kept.


def test_reestimate_does_not_depend_on_the_order_of_the_sequences():
    truth = [[0.9, 0.1], [0.2, 0.8]]
    seqs, _ = _chain_sequences([40, 7, 25, 1, 40], truth, seed=1)
    from nldseg._validation import Sequences
    order = [3, 0, 4, 2, 1]
    pieces = [seqs.data[a:a + n] for a, n in zip(seqs.offsets, seqs.lengths)]
    shuffled = Sequences(np.concatenate([pieces[i] for i in order]),
                         seqs.lengths[order], "list")
    state_filter = _two_state_filter(truth)
    a = state_filter.reestimate(seqs, max_iter=5, tol=0.0)
    b = state_filter.reestimate(shuffled, max_iter=5, tol=0.0)
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-12)
    assert a[2] == pytest.approx(b[2], abs=1e-12)


def test_estimate_transition_matrix_reads_the_data_and_leaves_the_model(tiny_fitted,
                                                                       tiny_data):
    seg = tiny_fitted
    X, X_test, y_test = tiny_data
    before = seg.predict_proba(X_test)
    P = seg.estimate_transition_matrix(X[:40])
    assert P.shape == (3, 3)
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(P, seg.estimate_transition_matrix(X[:40]))
    assert not np.allclose(P, seg._markov_transition, atol=1e-3)  # It moved.
    # The data switch every 40 steps (switch_prob 0.025 to each other state).
    assert np.all(np.abs(np.diag(P) - 0.95) < 0.03), np.diag(P)
    np.testing.assert_array_equal(seg.predict_proba(X_test), before)
    with pytest.raises(TypeError, match="max_iter"):
        seg.estimate_transition_matrix(X[:5], max_iter=2.5)
    with pytest.raises(ValueError, match="tol"):
        seg.estimate_transition_matrix(X[:5], tol=-1.0)
    with pytest.raises(ValueError, match="features"):
        seg.estimate_transition_matrix(np.zeros((3, 10, 5)))
