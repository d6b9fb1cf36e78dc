"""Delay embedding (``n_lags``): states told apart by their dynamics."""
import copy

import numpy as np
import pytest

from nldseg import LangevinSegmenter
from nldseg._estimator import _LandscapeFit
from nldseg._validation import delay_embed
from nldseg.metrics import segmentation_accuracy


def test_delay_embed_reads_own_sequence_and_past_only():
    data = np.arange(14.0).reshape(7, 2)
    out = delay_embed(data, np.array([4, 3]), 2)
    assert out.shape == (7, 6)
    # Row 5 (second row of the second sequence): x_5, x_4, then x_4 again
    # (the sequence's first row stands in for the rows before it).
    np.testing.assert_array_equal(out[5], [10, 11, 8, 9, 8, 9])
    np.testing.assert_array_equal(out[2], [4, 5, 2, 3, 0, 1])
    np.testing.assert_array_equal(out[0], [0, 1, 0, 1, 0, 1])
    oldest = delay_embed(data, np.array([4, 3]), 2, oldest_first=True)
    np.testing.assert_array_equal(oldest[5], [8, 9, 8, 9, 10, 11])
    np.testing.assert_array_equal(oldest[2], [0, 1, 2, 3, 4, 5])
    # Causal: changing a later row changes no earlier embedded row.
    later = data.copy()
    later[2] += 100
    np.testing.assert_array_equal(delay_embed(later, np.array([4, 3]), 2)[:2], out[:2])
    assert delay_embed(data, np.array([7]), 0) is data


def test_lags_find_regimes_that_differ_in_dynamics_only(tiny_lagged, lagged_regimes):
    _, X_test, y_test = lagged_regimes
    # Frames are N(0, I) in every regime: only the lagged view separates them.
    assert tiny_lagged.module_.decoder[-1].out_features == 2 * X_test.shape[2]
    assert segmentation_accuracy(y_test, tiny_lagged.predict(X_test)) > 0.85


def test_lagged_stream_and_prefixes_equal_predict(tiny_lagged, lagged_regimes):
    _, X_test, _ = lagged_regimes
    x = X_test[0]
    labels, proba = tiny_lagged.predict(x), tiny_lagged.predict_proba(x)
    assert len(set(labels)) >= 2  # The comparison below can fail.
    stream = tiny_lagged.stream()
    out = [stream.update(x_t) for x_t in x]
    np.testing.assert_array_equal([lab for lab, _ in out], labels)
    np.testing.assert_allclose(np.stack([p for _, p in out]), proba, atol=1e-6)
    # Online: the labels of a prefix are those of the whole sequence.
    np.testing.assert_array_equal(tiny_lagged.predict(x[:25]), labels[:25])
    # Sequences do not read each other: stacked with lengths = one by one.
    stacked = tiny_lagged.predict(np.vstack(X_test[:3]), lengths=[60] * 3)
    np.testing.assert_array_equal(stacked, np.concatenate(tiny_lagged.predict(X_test[:3])))


def test_lagged_save_load_sample_score(tiny_lagged, lagged_regimes, tmp_path):
    _, X_test, _ = lagged_regimes
    path = tmp_path / "lagged.nldseg"
    tiny_lagged.save(path)
    loaded = LangevinSegmenter.load(path)
    assert loaded.n_lags == 1
    np.testing.assert_array_equal(loaded.predict(X_test), tiny_lagged.predict(X_test))
    assert loaded.score(X_test) == pytest.approx(tiny_lagged.score(X_test))
    X_new, y_new = tiny_lagged.sample(3, 20, random_state=0)
    assert X_new.shape == (3, 20, X_test.shape[2]) and y_new.shape == (3, 20)
    assert np.isfinite(tiny_lagged.score(X_test))


def test_lagged_model_decodes_the_newest_observation_given_the_previous(
        tiny_lagged, lagged_regimes):
    _, X_test, _ = lagged_regimes
    assert tiny_lagged._oldest_first
    frames = tiny_lagged._prepare(X_test[:1], None).data
    np.testing.assert_array_equal(frames[1:, :4], frames[:-1, 4:])  # x_{t-1}, x_t
    assert tiny_lagged.module_.given_features == 4


def test_model_file_that_embedded_the_newest_first_loads_as_it_was(tiny_lagged,
                                                                   lagged_regimes,
                                                                   tmp_path):
    """Older files embedded ``[x_t, x_{t-1}]`` and weighed the whole frame."""
    import json

    import torch
    _, X_test, _ = lagged_regimes
    tiny_lagged.save(tmp_path / "m.nldseg")
    payload = torch.load(tmp_path / "m.nldseg", weights_only=True)
    fitted = json.loads(payload["fitted"])
    del fitted["_oldest_first"]
    payload["fitted"] = json.dumps(fitted)
    torch.save(payload, tmp_path / "old.nldseg")
    old = LangevinSegmenter.load(tmp_path / "old.nldseg")
    assert old._oldest_first is False and old.module_.given_features == 0
    frames = old._prepare(X_test[:1], None).data
    np.testing.assert_array_equal(frames[1:, 4:], frames[:-1, :4])  # x_t, x_{t-1}
    x = X_test[0]
    stream = old.stream()
    np.testing.assert_array_equal([stream.update(x_t)[0] for x_t in x], old.predict(x))
    X_new, _ = old.sample(2, 5, random_state=0)
    assert X_new.shape == (2, 5, 4)


def test_lagged_score_is_in_the_units_of_one_observation_per_step(tiny_lagged,
                                                                   lagged_regimes):
    """The likelihood is of ``x_t`` given ``x_{t-1}``: one Jacobian per step."""
    import copy
    _, X_test, _ = lagged_regimes
    rescaled = copy.deepcopy(tiny_lagged)
    rescaled.scaler_mean_ = 10.0 * tiny_lagged.scaler_mean_
    rescaled.scaler_scale_ = 10.0 * tiny_lagged.scaler_scale_
    # The same standardised frames, in units 10 times smaller.
    shift = tiny_lagged.score(X_test) - rescaled.score(10.0 * X_test)
    assert shift == pytest.approx(X_test.shape[2] * np.log(10.0), rel=1e-4)


def _lag1_traces(X, y, n_states):
    """Per state, the trace of ``E[x_t x_{t-1}^T]`` over steps whose pair is in it."""
    now, before = X[:, 1:].reshape(-1, X.shape[2]), X[:, :-1].reshape(-1, X.shape[2])
    both = (y[:, 1:] == y[:, :-1]).reshape(-1)
    label = y[:, 1:].reshape(-1)
    return sorted(float((now[both & (label == k)] * before[both & (label == k)]).sum(1)
                        .mean()) for k in range(n_states))


def test_sample_runs_the_decoder_as_an_autoregression(tiny_lagged, lagged_regimes):
    """Each regime's lag-1 correlation comes back in the samples: slow drift,
    sign alternation... (drawn frame by frame, every trace would be near 0)."""
    from nldseg.datasets import make_switching_ar_sequences
    X, y = make_switching_ar_sequences(40, 200, n_states=3, n_features=4,
                                       switch_prob=0.025, random_state=5,
                                       emission_random_state=1)
    X_new, y_new = tiny_lagged.sample(40, 200, random_state=0)
    want, got = _lag1_traces(X, y, 3), _lag1_traces(X_new, y_new, 3)
    assert max(abs(w) for w in want) > 2  # Regimes far from white noise.
    for w, g in zip(want, got):
        if abs(w) > 2:  # A tiny model's coefficients: near, not equal.
            assert g * w > 0 and abs(g) > 0.5 * abs(w), (want, got)
        else:
            assert abs(g) < 1, (want, got)


def _record_training(monkeypatch) -> list:
    """The models of each ``train`` call of ``fit``, in order (one list per call)."""
    from nldseg import _estimator
    calls = []
    train = _estimator.train
    monkeypatch.setattr(_estimator, "train",
                        lambda modules, *a, **k: calls.append(modules) or train(
                            modules, *a, **k))
    return calls


def _record_state_fractions(monkeypatch) -> list:
    """The ``min_state_fraction`` each well search of ``fit`` is given, in order."""
    from nldseg import _estimator
    fractions = []
    build = _estimator.build_landscape
    monkeypatch.setattr(_estimator, "build_landscape", lambda *a, **k: fractions.append(
        k["min_state_fraction"]) or build(*a, **k))
    return fractions


def test_auto_lags_keep_one_lag_where_only_dynamics_tell_the_states(lagged_regimes,
                                                                     monkeypatch):
    """On regimes with the same N(0, I) frames, "auto" trains a frame model and
    a model with one lag side by side and keeps the lag: its held-out ELBO is
    higher by far, and it finds the 3 regimes."""
    import warnings

    from conftest import TINY

    calls = _record_training(monkeypatch)
    fractions = _record_state_fractions(monkeypatch)
    X, X_test, y_test = lagged_regimes
    params = dict(TINY, decoder_covariance="latent", max_iter=200, random_state=1,
                  early_stopping=True, n_lags="auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = LangevinSegmenter(**params).fit(X)
    assert len(calls) == 1  # One training: the candidates compete in it.
    assert [m.given_features for m in calls[0]] == [0, 4]  # Frames, then one lag.
    assert seg.n_lags == "auto" and seg.n_lags_ == 1
    np.testing.assert_array_equal(seg.candidate_lags_, [0, 1])
    frames, lagged = seg.candidate_scores_
    assert lagged > frames + 0.5, seg.candidate_scores_  # Nats per step.
    gain, se = seg.lag_elbo_gain_  # Paired, on the same held-out windows.
    assert gain > 0.5 and gain > 2 * se, seg.lag_elbo_gain_
    assert seg.module_ is calls[0][1]
    # A kept lag asks no more of a state. The frame model's wells were looked
    # for too: one, so no labels were compared.
    assert fractions == [0.005, 0.005]
    np.testing.assert_array_equal(seg.candidate_wells_, [1, 3])
    assert np.isnan(seg.candidate_state_scores_).all()
    assert seg.n_states_ == 3
    assert segmentation_accuracy(y_test, seg.predict(X_test)) > 0.9
    assert not [w for w in caught if "single well" in str(w.message)]


def test_auto_lags_keep_frames_where_frames_tell_the_states(tiny_data, monkeypatch):
    """On a chain whose frames separate its states, the frame model's held-out
    ELBO is the higher once trained: kept, with the default 0.005 rule for its
    wells. (At 150 steps the model with a lag was still ahead: the previous
    observation tells a sticky state before the latent path has learnt to.)"""
    from conftest import TINY

    fractions = _record_state_fractions(monkeypatch)
    X, X_test, y_test = tiny_data
    seg = LangevinSegmenter(**dict(TINY, n_lags="auto", early_stopping=True,
                                   max_iter=300)).fit(X)
    np.testing.assert_array_equal(seg.candidate_lags_, [0, 1])
    frames, lagged = seg.candidate_scores_
    assert frames > lagged, seg.candidate_scores_
    assert seg.lag_elbo_gain_[0] < 0, seg.lag_elbo_gain_
    assert seg.n_lags_ == 0 and seg.module_.given_features == 0
    assert fractions == [0.005]
    assert seg.n_states_ == 3
    assert segmentation_accuracy(y_test, seg.predict(X_test)) > 0.9


@pytest.mark.parametrize("n_lags, n_init, lags", [
    ("auto", 2, [0, 0, 1, 1]), ("auto", 1, [0, 1]), (0, 2, [0, 0]), (2, 1, [2])])
@pytest.mark.parametrize("kept", [0, -1])
def test_candidates_and_the_kept_one(n_lags, n_init, lags, kept, lagged_regimes,
                                     monkeypatch):
    """Which models "fit" trains, on which frames, and what it keeps (stand-in
    training: the decision alone)."""
    from nldseg import _estimator
    from nldseg._training import TrainingResult
    seen = {}

    def fake_train(modules, data, *args, **kwargs):
        seen["given"] = [m.given_features for m in modules]
        seen["widths"] = [x.shape[1] for x in data]
        scores = [float(i) for i in range(len(modules))]
        return TrainingResult([1.0], 1, False, [], kept=kept % len(modules),
                              restart_scores=scores)

    monkeypatch.setattr(_estimator, "train", fake_train)
    X = lagged_regimes[0][:6]
    seg = LangevinSegmenter(device="cpu", hidden_size=8, context_size=4, n_init=n_init,
                            n_lags=n_lags, random_state=0).fit(X)
    assert seen["given"] == [4 * lag for lag in lags]
    assert seen["widths"] == [4 * (lag + 1) for lag in lags]
    np.testing.assert_array_equal(seg.candidate_lags_, lags)
    np.testing.assert_array_equal(seg.candidate_scores_, np.arange(len(lags)))
    assert seg.n_lags_ == lags[kept]
    assert seg.module_.given_features == 4 * lags[kept]
    assert seg.predict(X).shape == X.shape[:2]


@pytest.mark.parametrize("frame_wells, lag_wells, frames_explain_better, clear, kept_lag", [
    (4, 1, False, True, 0), (3, 2, True, True, 0), (3, 2, True, False, 1),
    (3, 2, False, True, 1), (1, 3, True, True, 1), (1, 1, True, True, 1)])
def test_a_lag_gives_way_to_frames_whose_states_explain_more(
        frame_wells, lag_wells, frames_explain_better, clear, kept_lag, lagged_regimes,
        monkeypatch):
    """When the lag wins by held-out ELBO, the best frame model is trained to
    the end too and kept instead if its energy has several wells and the lag's
    has one, or both have several and its labels explain the held-out steps
    better by more than two standard errors of the per-segment differences
    (the segmentation score, on the training split's segments); each
    model's own training record and final warnings come with it (stand-ins
    for training, the well search, the labels and the score: the decision
    alone)."""
    import types
    import warnings

    from nldseg import _estimator, _kinetics
    from nldseg._training import TrainingResult
    seen = {"scored": []}
    split = ([(0, 30), (40, 30)], [(30, 10), (70, 10)])

    def said(text):  # As warnings.catch_warnings(record=True) keeps them.
        return warnings.WarningMessage(UserWarning(text), UserWarning, __file__, 1)

    def fake_train(modules, data, *args, finish_rival=False, **kwargs):
        seen["finish_rival"] = finish_rival
        seen["modules"] = modules
        frames = TrainingResult([2.0, 1.0], 2, True, [-1.0],
                                finish_warnings=[said("frame model's")])
        return TrainingResult([3.0], 1, False, [-0.5], kept=2,
                              restart_scores=[-1.0, -2.0, -0.5, float("nan")],
                              level_gain=(0.5, 0.1), rival=0, rival_result=frames,
                              finish_warnings=[said("lag model's")],
                              train_segments=split[0], held_segments=split[1])

    def fake_landscape(self, module, z_data, *args):
        frames = module is seen["modules"][0]
        wells = frame_wells if frames else lag_wells
        landscape = types.SimpleNamespace(n_states=wells, frames=frames,
                                          occupancy=lambda kind: np.full(wells, 1 / wells))
        return _LandscapeFit(landscape, 1.0, 10.0, False)

    def fake_labels(self, seqs, module, landscape, dwell, inference=None):
        assert inference == "filter"  # Not the segmenter's own: fit ignores it.
        assert seqs.data.shape[1] == (4 if landscape.frames else 8)
        return np.full(len(seqs.data), int(landscape.frames))

    def fake_scores(rows, labels, n_states, segments):
        seen["scored"].append(n_states)
        assert segments == sorted(split[0] + split[1])
        assert rows.shape == (len(labels), 4)
        # Per held-out segment: the better labels by 1 nat per step on each,
        # or by 1 on one and 0 on the other (a gain within its error).
        better = labels[0] == frames_explain_better
        return (np.array([10.0, 10.0 if clear else 0.0]) if better
                else np.zeros(2)), np.array([10, 10])

    monkeypatch.setattr(_estimator, "train", fake_train)
    monkeypatch.setattr(_estimator, "segmentation_scores", fake_scores)
    monkeypatch.setattr(LangevinSegmenter, "_fit_landscape", fake_landscape)
    monkeypatch.setattr(LangevinSegmenter, "_labels", fake_labels)

    def fake_chain(self, module, landscape, time_scale):
        seen.setdefault("chains", []).append(module)
        return _kinetics.MarkovStateModel(np.eye(landscape.n_states),
                                          np.zeros((landscape.n_states, 1, 3)))

    monkeypatch.setattr(LangevinSegmenter, "_markov_chain", fake_chain)
    X = lagged_regimes[0][:6]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = LangevinSegmenter(device="cpu", hidden_size=8, context_size=4,
                                random_state=0).fit(X)
    assert seen["finish_rival"] is True
    compared = frame_wells > 1 and lag_wells > 1
    assert seen["scored"] == ([lag_wells, frame_wells] if compared else [])
    np.testing.assert_array_equal(seg.candidate_wells_,
                                  [frame_wells, np.nan, lag_wells, np.nan])
    better = 1.0 if clear else 0.5
    np.testing.assert_array_equal(
        seg.candidate_state_scores_,
        [better * frames_explain_better, np.nan, better * (not frames_explain_better),
         np.nan] if compared else np.full(4, np.nan))
    # The lag's gain over the frames and its error: per segment -1 and -1,
    # or -1 and 0 (its opposite when the lag's labels explain better).
    sign = -1 if frames_explain_better else 1
    np.testing.assert_allclose(seg.lag_state_gain_, [sign * better, 0.0 if clear else 0.5]
                               if compared else [np.nan, np.nan])
    assert seg.n_lags_ == kept_lag
    assert seg.n_states_ == (lag_wells if kept_lag else frame_wells)
    assert seg.module_ is seen["modules"][2 if kept_lag else 0]
    assert seen["chains"] == [seg.module_]  # Only the kept model's chain.
    assert seg._markov_transition.shape == (seg.n_states_,) * 2
    assert seg.loss_curve_ == ([3.0] if kept_lag else [2.0, 1.0])
    assert seg.converged_ is (not kept_lag)
    np.testing.assert_array_equal(seg.lag_elbo_gain_, [0.5, 0.1])
    given = [str(w.message) for w in caught]
    assert ("lag model's" in given) is bool(kept_lag)
    assert ("frame model's" in given) is (not kept_lag)


def test_no_second_model_is_finished_for_a_given_n_states(lagged_regimes,
                                                          monkeypatch):
    from nldseg import _estimator
    from nldseg._training import TrainingResult
    seen = {}

    def fake_train(modules, data, *args, finish_rival=False, **kwargs):
        seen["finish_rival"] = finish_rival
        return TrainingResult([1.0], 1, False, [], kept=0,
                              restart_scores=[0.0] * len(modules))

    monkeypatch.setattr(_estimator, "train", fake_train)
    LangevinSegmenter(n_states=2, device="cpu", hidden_size=8, context_size=4,
                      random_state=0).fit(lagged_regimes[0][:6])
    assert seen["finish_rival"] is False


@pytest.mark.parametrize("bad", [-1, 1.5, "1"])
def test_bad_n_lags_is_rejected(bad, lagged_regimes):
    with pytest.raises((ValueError, TypeError), match="n_lags"):
        LangevinSegmenter(n_lags=bad).fit(lagged_regimes[0][:4])


def test_compare_states_scores_the_labels_predict_gives(tiny_lagged, lagged_regimes):
    """The real comparison (no stand-ins): each candidate labels the training
    steps as predict does, and its score is the cross-fitted switching AR(1)
    score of those labels on the standardised single frames; a candidate
    against itself gains nothing, with no error."""
    import torch

    from nldseg._switching_ar import segmentation_scores
    from nldseg._validation import check_sequences

    seg = tiny_lagged
    X = lagged_regimes[0][:30]
    seqs = check_sequences(seg, X, reset=False)
    frames = {lag: torch.as_tensor(seg._model_frames(
        seqs.data, seqs.lengths, seg.scaler_mean_, seg.scaler_scale_, n_lags=lag,
        oldest_first=True)) for lag in (0, 1)}
    fit = _LandscapeFit(seg.energy_, seg.prior_time_scale_, seg.training_dwell_time_,
                        seg.depths_refitted_)
    starts = np.concatenate([[0], np.cumsum(seqs.lengths)[:-1]])
    segments = [(int(a), int(n)) for a, n in zip(starts, seqs.lengths)]
    means, gain = seg._compare_states(frames, seqs, segments,
                                      [(1, seg.module_, fit), (1, seg.module_, fit)])
    # The particle filter's labels, whatever the segmenter's inference.
    labels = np.concatenate(copy.copy(seg).set_params(inference="filter").predict(X))
    assert len(np.unique(labels)) == 3
    sums, steps = segmentation_scores(frames[0].numpy().astype(np.float64), labels, 3,
                                      segments)
    assert len(sums) == 20  # 30 sequences dealt to 20 folds.
    assert means == [pytest.approx(sums.sum() / steps.sum())] * 2
    assert np.isfinite(means[0]) and gain == (0.0, 0.0)
