"""The thread guard: calls run on ``n_threads`` and give the caller's setting back."""

import numpy as np
import pytest
import torch
from sklearn.base import clone

from nldseg import _estimator, _inference
from nldseg._threads import check_threads, torch_threads


@pytest.fixture
def user_threads():
    """The caller runs torch on 2 threads during the test (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_check_threads():
    assert check_threads(None) == 1
    assert check_threads(-1) is None
    assert check_threads(3) == 3
    for bad in [0, -2, 1.5, True, "2"]:
        with pytest.raises(ValueError, match="n_threads must be None, -1 or a positive"):
            check_threads(bad)


def test_torch_threads_restores(user_threads):
    with torch_threads(None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == user_threads
    with pytest.raises(RuntimeError), torch_threads(3):
        assert torch.get_num_threads() == 3
        raise RuntimeError("inside")
    assert torch.get_num_threads() == user_threads
    with torch_threads(-1):
        assert torch.get_num_threads() == user_threads


def _spy(monkeypatch, owner, name, seen):
    """Record torch's thread count whenever ``owner.name`` is called."""
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, spy)


@pytest.mark.parametrize("n_threads, inside", [(None, 1), (-1, 2), (3, 3)])
def test_inference_and_stream_run_on_n_threads(tiny_fitted, tiny_data, user_threads,
                                               monkeypatch, n_threads, inside):
    X_test = tiny_data[1]
    seg = clone(tiny_fitted).set_params(n_threads=n_threads)
    for name in ["module_", "energy_", "n_states_", "n_features_in_", "scaler_mean_",
                 "scaler_scale_", "_oldest_first", "n_lags_", "training_dwell_time_",
                 "state_occupancy_", "_markov_transition", "_markov_points"]:
        setattr(seg, name, getattr(tiny_fitted, name))
    seen = []
    _spy(monkeypatch, _inference.PosteriorSampler, "latent_paths", seen)
    _spy(monkeypatch, _inference.PosteriorSampler, "elbo_sum", seen)
    _spy(monkeypatch, _inference.SegmentationStream, "_step", seen)
    _spy(monkeypatch, _inference.MarkovFilter, "log_emissions", seen)
    labels = seg.predict(X_test)
    seg.predict_proba(X_test[:2])
    seg.transform(X_test[:2])
    seg.score(X_test[:2])
    stream = seg.stream()
    online = [stream.update(x)[0] for x in X_test[0]]
    assert seen and set(seen) == {inside}
    assert torch.get_num_threads() == user_threads  # the caller's setting is back
    # Thread counts agree on the labels (a model whose labels can differ).
    assert len(np.unique(labels)) >= 2
    np.testing.assert_array_equal(labels, tiny_fitted.predict(X_test))
    assert online == labels[0].tolist()


def test_fit_runs_on_n_threads(tiny_data, user_threads, monkeypatch):
    from conftest import TINY

    seen = []
    _spy(monkeypatch, _estimator, "train", seen)
    seg = _estimator.LangevinSegmenter(**dict(TINY, max_iter=2, kl_warmup=1, n_lags=0))
    with pytest.warns(UserWarning):  # a one-well fit, a short budget
        seg.fit(tiny_data[0][:20])
    assert seen == [1] and torch.get_num_threads() == user_threads


def test_bad_n_threads(tiny_fitted, tiny_data):
    seg = clone(tiny_fitted).set_params(n_threads=0)
    with pytest.raises(ValueError, match="n_threads"):
        seg.fit(tiny_data[0][:4])
    assert not hasattr(seg, "module_")
    with pytest.raises(ValueError, match="n_threads"):
        _inference.SegmentationStream(None, None, np.zeros(1), np.ones(1), n_threads=0)
