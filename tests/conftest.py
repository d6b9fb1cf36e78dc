"""Fixtures shared by several test modules: one tiny fitted segmenter."""

import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences

TINY = dict(hidden_size=16, context_size=8, window_length=40, batch_size=32,
            max_iter=6, learning_rate_init=1e-2, kl_warmup=20, n_samples=4,
            random_state=0)
# Fits that only need to run (pipelines, grid searches), not to learn.
TINY_SEARCH = dict(hidden_size=16, context_size=8, window_length=30, batch_size=32,
                   max_iter=3, kl_warmup=10, n_samples=2, random_state=0)


@pytest.fixture
def quiet_convergence():
    """Silence ConvergenceWarning (short fits) for the test using it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture(scope="session")
def ragged_chain():
    """``(X, y)``: 24 sequences of 43 steps, 3 states, 4 features, as 3-D arrays.

    Tests cut sequence ``i`` to ``20 + i`` steps to get distinct lengths.
    """
    return make_markov_chain_sequences(24, 43, n_states=3, n_features=4,
                                       switch_prob=0.05, random_state=0,
                                       emission_random_state=1)


@pytest.fixture(scope="session")
def tiny_data():
    """A 3-state chain with 5 features: 40 training and 6 test sequences."""
    X, _ = make_markov_chain_sequences(40, 60, n_states=3, n_features=5,
                                       random_state=0, emission_random_state=0)
    X_test, y_test = make_markov_chain_sequences(6, 50, n_states=3, n_features=5,
                                                 random_state=1,
                                                 emission_random_state=0)
    return X, X_test, y_test


@pytest.fixture(scope="session")
def tiny_fitted(tiny_data):
    """A segmenter fitted in a few seconds; tests must not modify it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LangevinSegmenter(**TINY).fit(tiny_data[0])


@pytest.fixture(scope="session")
def tiny_underdamped(tiny_data):
    """An underdamped segmenter fitted for two epochs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LangevinSegmenter(**dict(TINY, dynamics="underdamped",
                                        max_iter=2)).fit(tiny_data[0])
