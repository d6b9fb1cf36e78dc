"""Fixtures shared by several test modules: one tiny fitted segmenter."""

import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences

TINY = dict(hidden_size=16, context_size=8, window_length=40, batch_size=32,
            max_iter=6, learning_rate_init=1e-2, kl_warmup=20, n_samples=4,
            random_state=0)


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
