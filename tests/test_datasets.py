"""Synthetic data generators."""

import numpy as np
import pytest

from nldseg.datasets import (
    make_langevin_sequences,
    make_markov_chain_sequences,
    make_oscillation_sequences,
    make_switching_ar_sequences,
    stationary_distribution,
)


def test_markov_chain_shapes_and_determinism():
    X, y = make_markov_chain_sequences(5, 40, n_features=4, random_state=0)
    assert X.shape == (5, 40, 4) and X.dtype == np.float64
    assert y.shape == (5, 40) and y.dtype == np.int64
    X2, y2 = make_markov_chain_sequences(5, 40, n_features=4, random_state=0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)


def test_markov_chain_statistics():
    _, y, params = make_markov_chain_sequences(200, 500, random_state=1,
                                               return_params=True)
    switch_rate = np.mean(np.diff(y, axis=1) != 0)
    assert switch_rate == pytest.approx(2 * 0.025, abs=0.003)
    np.testing.assert_allclose(np.bincount(y.ravel()) / y.size, 1 / 3, atol=0.02)
    np.testing.assert_allclose(params["transition_matrix"].sum(1), 1.0)
    assert np.all(np.linalg.eigvalsh(params["covariances"]) > 0)


def test_markov_chain_emissions_follow_the_state():
    X, y, params = make_markov_chain_sequences(50, 200, n_features=5, random_state=2,
                                               return_params=True)
    for k in range(3):
        np.testing.assert_allclose(X[y == k].mean(0), params["means"][k], atol=0.1)


def test_shared_emission_parameters():
    _, _, a = make_markov_chain_sequences(3, 10, random_state=0,
                                          emission_random_state=7, return_params=True)
    _, yb, b = make_markov_chain_sequences(8, 30, random_state=1,
                                           emission_random_state=7, return_params=True)
    np.testing.assert_array_equal(a["means"], b["means"])
    np.testing.assert_array_equal(a["covariances"], b["covariances"])
    _, ya = make_markov_chain_sequences(8, 30, random_state=0, emission_random_state=7)
    assert not np.array_equal(ya, yb)


def test_langevin_sequences():
    X, y, params = make_langevin_sequences(40, 300, random_state=0, return_params=True)
    assert X.shape == (40, 300, 10) and y.shape == (40, 300)
    assert set(np.unique(y)) == {0, 1, 2}
    dwell = 1 / np.mean(np.diff(y, axis=1) != 0)
    assert 10 < dwell < 200
    centers = params["well_centers"]
    assert centers.shape == (3, 2)
    # Labels are the nearest well of the hidden path.
    z = params["latents"]
    nearest = np.linalg.norm(z[..., None, :] - centers, axis=-1).argmin(-1)
    np.testing.assert_array_equal(y, nearest)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"n_sequences": 0}, ValueError, "n_sequences must be >= 1"),
    ({"switch_prob": 0.6}, ValueError, "switch_prob"),
    ({"switch_prob": -0.1}, ValueError, "switch_prob must be >= 0"),
    ({"n_features": 2.5}, TypeError, "n_features must be an int"),
])
def test_markov_chain_bad_parameters(kwargs, err, match):
    with pytest.raises(err, match=match):
        make_markov_chain_sequences(**kwargs)


def test_langevin_bad_parameters():
    with pytest.raises(ValueError, match="beta must be > 0"):
        make_langevin_sequences(beta=0)


UNEQUAL = [[0.95, 0.04, 0.01], [0.04, 0.95, 0.01], [0.2, 0.2, 0.6]]


def test_markov_chain_with_a_transition_matrix():
    X, y, params = make_markov_chain_sequences(300, 400, transition_matrix=UNEQUAL,
                                               n_features=3, random_state=0,
                                               return_params=True)
    pi = params["stationary_distribution"]
    np.testing.assert_allclose(pi @ np.asarray(UNEQUAL), pi, atol=1e-12)
    np.testing.assert_allclose(pi, [20 / 41, 20 / 41, 1 / 41], atol=1e-12)
    # The chain starts from its stationary law, so shares hold at every step.
    np.testing.assert_allclose(np.bincount(y.ravel()) / y.size, pi, atol=0.01)
    np.testing.assert_allclose(np.bincount(y[:, 0], minlength=3) / 300, pi, atol=0.06)
    # The empirical transition frequencies follow the matrix.
    counts = np.zeros((3, 3))
    np.add.at(counts, (y[:, :-1].ravel(), y[:, 1:].ravel()), 1)
    np.testing.assert_allclose(counts / counts.sum(1, keepdims=True), UNEQUAL,
                               atol=0.01)
    np.testing.assert_array_equal(params["transition_matrix"], UNEQUAL)


@pytest.mark.parametrize("matrix, match", [
    ([[0.5, 0.5]], "square matrix"),
    ([[1.0]], "n_states >= 2"),
    ([[0.9, 0.2], [0.5, 0.5]], "sum to 1"),
    ([[1.1, -0.1], [0.5, 0.5]], "non-negative"),
])
def test_bad_transition_matrix(matrix, match):
    with pytest.raises(ValueError, match=match):
        make_markov_chain_sequences(2, 10, transition_matrix=matrix)


def test_stationary_distribution():
    np.testing.assert_allclose(stationary_distribution([[0.9, 0.1], [0.3, 0.7]]),
                               [0.75, 0.25])


def test_switching_ar_frames_carry_no_state_information():
    X, y, params = make_switching_ar_sequences(200, 300, random_state=0,
                                               return_params=True)
    assert X.shape == (200, 300, 4) and set(np.unique(y)) == {0, 1, 2}
    a, q = params["dynamics"], params["noise_covariances"]
    # Every regime leaves N(0, I) invariant: A A^T + Q = I.
    np.testing.assert_allclose(a @ a.transpose(0, 2, 1) + q, np.broadcast_to(
        np.eye(4), q.shape), atol=1e-12)
    for k in range(3):
        frames = X[y == k]
        np.testing.assert_allclose(frames.mean(0), 0.0, atol=0.1)  # autocorrelated
        np.testing.assert_allclose(np.cov(frames.T), np.eye(4), atol=0.1)
    # ...but the regimes differ in how a frame follows the previous one:
    # lag-1 autocorrelation rho cos(theta_k) = 0.9, 0, -0.9.
    lag1 = [np.mean(np.sum(X[:, 1:] * X[:, :-1], -1)[y[:, 1:] == k]) / 4
            for k in range(3)]
    np.testing.assert_allclose(lag1, [0.9, 0.0, -0.9], atol=0.05)


def test_langevin_well_depths_set_the_shares():
    _, y, params = make_langevin_sequences(60, 1500, n_wells=4,
                                           well_depths=[1.1, 0.78, 0.42, 0.0],
                                           random_state=0, return_params=True)
    pi = params["stationary_distribution"]
    assert pi.shape == (4,) and np.all(np.diff(pi) < 0)
    np.testing.assert_allclose(pi.sum(), 1.0)
    np.testing.assert_allclose(np.bincount(y.ravel(), minlength=4) / y.size, pi,
                               atol=0.03)
    _, _, equal = make_langevin_sequences(2, 5, random_state=0, return_params=True)
    np.testing.assert_allclose(equal["stationary_distribution"], 1 / 3, atol=1e-4)
    with pytest.raises(ValueError, match="well_depths must hold 3"):
        make_langevin_sequences(2, 5, well_depths=[1.0, 2.0])


def test_oscillation_shapes_determinism_and_shared_emissions():
    X, y = make_oscillation_sequences(3, 500, random_state=0)
    assert X.shape == (3, 500, 4) and X.dtype == np.float64
    assert y.shape == (3, 500) and y.dtype == np.int64
    X2, y2 = make_oscillation_sequences(3, 500, random_state=0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    _, _, a = make_oscillation_sequences(1, 50, random_state=1,
                                         emission_random_state=7, return_params=True)
    _, _, b = make_oscillation_sequences(1, 50, random_state=2,
                                         emission_random_state=7, return_params=True)
    for key in ("postures", "loadings", "periods"):
        np.testing.assert_array_equal(a[key], b[key])


def test_oscillation_activities_follow_their_parameters():
    X, y, params = make_oscillation_sequences(
        4, 6000, switch_prob=1 / 3000, noise=0.05, phase_noise=0.0,
        random_state=0, return_params=True)
    periods, postures, loadings = (params["periods"], params["postures"],
                                   params["loadings"])
    np.testing.assert_allclose(np.sort(periods), np.geomspace(20, 80, 4))
    assert params["transition_matrix"].shape == (4, 4)
    np.testing.assert_allclose(params["stationary_distribution"], 0.25)
    assert (np.diff(y, axis=1) != 0).sum() < 4 * 6000 / 500  # long segments
    for k in range(4):
        # Steps well inside a segment: the posture has settled (time constant
        # 20 steps), so the frames' mean is the posture and their covariance
        # the cycle's, W W^T / 2, plus the noise.
        inside = (y == k) & np.roll(y == k, 200, axis=1) & np.roll(y == k, -1, axis=1)
        inside[:, :200] = False
        frames = X[inside]
        assert len(frames) > 1000
        np.testing.assert_allclose(frames.mean(0), postures[k], atol=0.1)
        expected = loadings[k] @ loadings[k].T / 2 + 0.05**2 * np.eye(4)
        np.testing.assert_allclose(np.cov(frames.T), expected, atol=0.1)
        # Each activity repeats itself after its own period: the frames one
        # period apart agree better than those half a period apart.
        T = int(round(periods[k]))
        inner = inside & np.roll(inside, T, axis=1)
        inner[:, :T] = False
        centred = X - postures[k]
        full = np.sum(centred * np.roll(centred, T, axis=1), -1)[inner].mean()
        half = np.roll(centred, T // 2, axis=1)
        opposite = np.sum(centred * half, -1)[inner].mean()
        assert full > 0.5 * np.trace(expected) and opposite < 0


def test_oscillation_pattern_spread():
    # 0: one phase pattern, scaled by each activity's amplitude (0.5 to 2).
    _, _, p = make_oscillation_sequences(1, 10, pattern_spread=0.0, random_state=3,
                                         return_params=True)
    flat = p["loadings"].reshape(4, -1)
    ratios = flat / flat[:1]
    np.testing.assert_allclose(ratios, ratios[:, :1] * np.ones_like(ratios))
    assert np.all((ratios[:, 0] > 0.25 - 1e-9) & (ratios[:, 0] < 4 + 1e-9))
    # Large: the patterns are unrelated (cosines between activities spread).
    _, _, p = make_oscillation_sequences(1, 10, pattern_spread=100.0, random_state=3,
                                         return_params=True)
    unit = p["loadings"].reshape(4, -1)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    assert np.abs(unit @ unit.T - np.eye(4)).max() < 0.95


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(pattern_spread=-0.1), ValueError, "pattern_spread"),
    (dict(period_range=(1.0, 10.0)), ValueError, "period_range"),
    (dict(period_range=(30.0, 10.0)), ValueError, "period_range"),
    (dict(period_range=5.0), TypeError, "period_range"),
    (dict(posture_rate=0.0), ValueError, "posture_rate"),
    (dict(posture_rate=1.5), ValueError, "posture_rate"),
    (dict(noise=-1.0), ValueError, "noise"),
    (dict(switch_prob=0.5), ValueError, "switch_prob"),
    (dict(n_states=1), ValueError, "n_states"),
])
def test_oscillation_bad_parameters(kwargs, err, match):
    with pytest.raises(err, match=match):
        make_oscillation_sequences(1, 100, **kwargs)
