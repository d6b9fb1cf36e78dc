"""Fixtures shared by several test modules: small fitted segmenters with 3 wells."""

import importlib.util
import warnings

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences, make_switching_ar_sequences

# Finds the 3 states of tiny_data (overdamped and underdamped) in a fixed
# budget of 72 steps at a constant rate (no held-out data, no annealing).
# Every fixture fits on the CPU: the seeds below were chosen on the CPU's
# random streams, and CUDA's differ (on a GPU machine device="auto" would give
# other models). The CUDA path has its own tests (pytest -m cuda).
TINY = dict(device="cpu", hidden_size=32, context_size=16, window_length=40,
            batch_size=64, max_iter=72, early_stopping=False, learning_rate="constant",
            learning_rate_init=1e-2, kl_warmup=60, n_paths=4, random_state=0,
            # A shared noise forms its wells within these 72 steps; the default
            # ("latent") needs more and has its own fixture, tiny_latent_noise.
            decoder_covariance="full",
            # One model on single frames, not the default two restarts and a
            # model with one lag (tested on their own).
            n_init=1, n_lags=0,
            # No refit of the depths after training (its own tests, in
            # test_estimator.py): 2-4 s per fit.
            depth_steps=0,
            # The fixtures' Gaussian noise, as these tests were written for;
            # the default Student-t noise has its own tests (test_model.py,
            # and an end-to-end fit in test_kinetics.py).
            decoder_noise="gaussian")
# Fits that only need to run (pipelines, grid searches), not to learn: one
# well, so tests of these compare loss curves and weights, not labels.
TINY_SEARCH = dict(device="cpu", hidden_size=16, context_size=8, window_length=30,
                   batch_size=32, max_iter=6, early_stopping=False, kl_warmup=10, n_paths=2,
                   random_state=0, decoder_covariance="full", n_init=1, n_lags=0,
                   decoder_noise="gaussian")
# The same data (ragged_chain) trained long enough to find its 3 states, for
# the pipeline tests that compare labels.
TINY_SEARCH_WELLS = dict(TINY_SEARCH, hidden_size=32, context_size=16,
                         window_length=15, dt=1.0, batch_size=8, max_iter=112,
                         learning_rate="constant", learning_rate_init=1e-2)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run the tests on one torch thread, as nldseg runs its own calls.

    Tests that call the private training and kinetics functions directly
    would otherwise run on torch's default (one thread per core), and those
    that hand work to worker processes would start each worker on it too:
    two workers of two threads on a 2-core machine made one test take 15 to
    110 s from run to run (the oversubscription :mod:`nldseg._threads`
    describes). Tests of the thread guard set their own count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def quiet_convergence():
    """Silence the warnings of short fits (budget, one well) for the test using it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(scope="session")
def ragged_chain():
    """``(X, y)``: 24 sequences of 43 steps, 3 states, 4 features, as 3-D arrays.

    Tests cut sequence ``i`` to ``20 + i`` steps to get distinct lengths. The
    states' emissions are well apart (``mean_scale=3``), so that a short fit
    (``TINY_SEARCH_WELLS``) finds them.
    """
    return make_markov_chain_sequences(24, 43, n_states=3, n_features=4,
                                       switch_prob=0.05, mean_scale=3.0,
                                       random_state=0, emission_random_state=1)


@pytest.fixture(scope="session")
def tiny_data():
    """A 3-state chain with 8 features: 120 training and 6 test sequences.

    Returns ``(X, X_test, y_test)``; every test sequence visits at least two
    states.
    """
    X, _ = make_markov_chain_sequences(120, 100, n_states=3, n_features=8,
                                       switch_prob=0.025, random_state=0,
                                       emission_random_state=1)
    X_test, y_test = make_markov_chain_sequences(6, 50, n_states=3, n_features=8,
                                                 switch_prob=0.025, random_state=1,
                                                 emission_random_state=1)
    assert all(len(set(y)) >= 2 for y in y_test)
    return X, X_test, y_test


def fit_three_wells(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # A budget shorter than warm-up.
        seg = LangevinSegmenter(**dict(TINY, **params)).fit(X)
    # With one well every label is 0 and every probability row [1.]: a test
    # comparing labels or probabilities could not fail.
    assert seg.n_states_ == 3, seg.n_states_
    return seg


@pytest.fixture(scope="session")
def tiny_fitted(tiny_data):
    """An overdamped segmenter with 3 wells; tests must not modify it."""
    return fit_three_wells(tiny_data[0])


@pytest.fixture(scope="session")
def tiny_latent_noise(tiny_data):
    """A segmenter whose decoder noise depends on the latent state, 3 wells."""
    # With a noise that follows the latent state the wells take longer to form.
    return fit_three_wells(tiny_data[0], decoder_covariance="latent", max_iter=120)


@pytest.fixture(scope="session")
def tiny_underdamped(tiny_data):
    """An underdamped segmenter with 3 wells; tests must not modify it."""
    # 96 steps: in TINY's 72 the quadratic encoder's fit still had 2 wells.
    return fit_three_wells(tiny_data[0], dynamics="underdamped", max_iter=96)


@pytest.fixture(scope="session")
def lagged_regimes():
    """3 regimes of a vector autoregression, same N(0, I) frames in each.

    Returns ``(X, X_test, y_test)``: 120 training and 6 test sequences, 4
    features. Only how a frame follows the previous one tells the regimes.
    """
    X, _ = make_switching_ar_sequences(120, 100, n_states=3, n_features=4,
                                       switch_prob=0.025, random_state=0,
                                       emission_random_state=1)
    X_test, y_test = make_switching_ar_sequences(6, 60, n_states=3, n_features=4,
                                                 switch_prob=0.025, random_state=1,
                                                 emission_random_state=1)
    return X, X_test, y_test


@pytest.fixture(scope="session")
def tiny_lagged(lagged_regimes):
    """A segmenter with ``n_lags=1`` that found the 3 regimes, 3 wells."""
    return fit_three_wells(lagged_regimes[0], decoder_covariance="latent", n_lags=1,
                            max_iter=200, random_state=1)


def pytest_collection_modifyitems(config, items):
    """Skip the service's docstring examples where its extra is not installed
    (``pip install 'nldseg[serve]'``), as test_serving.py skips itself."""
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"nldseg[serve] is not installed ({', '.join(missing)} "
                                   "missing)")
    for item in items:
        if item.nodeid.startswith("nldseg/serving.py::"):
            item.add_marker(skip)
