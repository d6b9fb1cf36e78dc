"""Model selection with LangevinSegmenter: grid search, CV over whole sequences."""

import numpy as np
import pytest
import sklearn
from conftest import TINY_SEARCH as TINY
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline

from nldseg import LangevinSegmenter
from nldseg.metrics import segmentation_accuracy, segmentation_scorer
from nldseg.preprocessing import SequenceStandardScaler

pytestmark = pytest.mark.usefixtures("quiet_convergence")


@pytest.fixture(scope="module")
def data(ragged_chain):
    """24 sequences of distinct lengths (20..43) as a list, and a 3-D array."""
    X, y = ragged_chain
    seqs = [X[i, : 20 + i] for i in range(len(X))]
    labels = [y[i, : 20 + i] for i in range(len(y))]
    return {"list": (seqs, labels), "array3d": (X[:, :30], y[:, :30])}


class _RecordingSegmenter(LangevinSegmenter):
    """Remembers the shape of every sequence it was fitted on."""

    def fit(self, X, y=None, *, lengths=None):
        self.fit_shapes_ = [np.shape(seq) for seq in X]
        return super().fit(X, y, lengths=lengths)


def _check_result(search, grid):
    assert search.best_params_ in search.cv_results_["params"]
    for name, value in search.best_params_.items():
        assert value in grid[name]
    assert len(search.cv_results_["params"]) == np.prod([len(v) for v in grid.values()])
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert np.isfinite(search.best_score_)


def test_grid_search_default_score_on_a_list_in_parallel(data):
    seqs, _ = data["list"]
    grid = {"beta": [0.5, 2.0], "gamma": [1.0, 2.0]}
    search = GridSearchCV(LangevinSegmenter(**TINY), grid, cv=2, n_jobs=2,
                          error_score="raise").fit(seqs)
    _check_result(search, grid)
    # The default score is the held-out ELBO per step (LangevinSegmenter.score).
    assert np.all(search.cv_results_["mean_test_score"] < 0)
    best = search.best_estimator_
    assert best.beta_ == search.best_params_["beta"]
    assert best.gamma_ == search.best_params_["gamma"]
    assert search.score(seqs) == best.score(seqs)
    assert [lab.shape for lab in search.predict(seqs)] == [(len(s),) for s in seqs]


@pytest.mark.parametrize("form", ["list", "array3d"])
def test_grid_search_with_supervised_scorer_splits_whole_sequences(data, form):
    X, y = data[form]
    n_seq = len(X)
    cv = KFold(2, shuffle=True, random_state=0)
    seen = []

    def recording_scorer(estimator, X_test, y_test):
        # Each fold's model was fitted on whole sequences and is scored on
        # the other whole sequences, with their labels.
        seen.append((estimator.fit_shapes_, [np.shape(s) for s in X_test],
                     [np.shape(s) for s in y_test]))
        return segmentation_scorer(estimator, X_test, y_test)

    grid = {"beta": [0.5, 2.0]}
    search = GridSearchCV(_RecordingSegmenter(**TINY), grid, cv=cv,
                          scoring=recording_scorer, error_score="raise").fit(X, y)
    _check_result(search, grid)
    assert np.all((search.cv_results_["mean_test_score"] >= 0)
                  & (search.cv_results_["mean_test_score"] <= 1))
    shapes = [np.shape(seq) for seq in X]
    folds = list(cv.split(np.arange(n_seq)))
    assert len(seen) == len(grid["beta"]) * len(folds)
    for k, (train_shapes, test_shapes, label_shapes) in enumerate(seen):
        train, test = folds[k % len(folds)]
        assert train_shapes == [shapes[i] for i in train]
        assert test_shapes == [shapes[i] for i in test]
        assert label_shapes == [s[:1] for s in test_shapes]
    assert search.best_estimator_.fit_shapes_ == shapes
    assert search.score(X, y) == segmentation_accuracy(y, search.predict(X))


def test_grid_search_through_a_pipeline(data):
    seqs, labels = data["list"]
    pipe = make_pipeline(SequenceStandardScaler(), LangevinSegmenter(**TINY))
    grid = {"langevinsegmenter__beta": [0.5, 2.0]}
    search = GridSearchCV(pipe, grid, cv=2, error_score="raise").fit(seqs)
    _check_result(search, grid)
    best = search.best_estimator_
    assert best[-1].beta == search.best_params_["langevinsegmenter__beta"]
    assert best[0].n_samples_seen_ == sum(len(s) for s in seqs)


def test_grid_search_through_a_pipeline_with_metadata_routing(data):
    # With routing on, the supervised scorer works; the default score does not
    # yet (see test_preprocessing.test_pipeline_score_with_metadata_routing).
    seqs, labels = data["list"]
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(SequenceStandardScaler(), LangevinSegmenter(**TINY))
        grid = {"langevinsegmenter__gamma": [1.0, 2.0]}
        search = GridSearchCV(pipe, grid, cv=2, scoring=segmentation_scorer,
                              error_score="raise").fit(seqs, labels)
    _check_result(search, grid)


def test_grid_search_on_a_dask_cluster_equals_one_process(data):
    """GridSearchCV over beta/gamma on joblib's dask backend (2 workers)."""
    pytest.importorskip("distributed")
    import joblib
    from distributed import Client, LocalCluster

    seqs, _ = data["list"]
    grid = {"beta": [0.5, 2.0], "gamma": [1.0, 2.0]}
    local = GridSearchCV(LangevinSegmenter(**TINY), grid, cv=2).fit(seqs)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with joblib.parallel_backend("dask"):
            search = GridSearchCV(LangevinSegmenter(**TINY), grid, cv=2, n_jobs=-1,
                                  error_score="raise").fit(seqs)
        ran_on = {w for w in client.run(lambda: 1)}  # Both workers answered.
    assert len(ran_on) == 2
    _check_result(search, grid)
    assert search.best_params_ == local.best_params_
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               local.cv_results_["mean_test_score"], rtol=1e-4)
