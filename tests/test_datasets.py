"""Synthetic data generators."""

import numpy as np
import pytest

from nldseg.datasets import make_langevin_sequences, make_markov_chain_sequences


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
