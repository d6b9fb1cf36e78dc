"""SequenceStandardScaler and SequenceClipper, and pipelines with LangevinSegmenter."""

import copy
import warnings

import numpy as np
import pytest
import sklearn
import torch
from conftest import TINY_SEARCH as TINY
from conftest import TINY_SEARCH_WELLS
from sklearn.exceptions import ConvergenceWarning, UnsetMetadataPassedError
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from nldseg import LangevinSegmenter
from nldseg._validation import scale_from_variance
from nldseg.preprocessing import SequenceClipper, SequenceStandardScaler

pytestmark = pytest.mark.usefixtures("quiet_convergence")


@pytest.fixture(scope="module")
def data(ragged_chain):
    """The same 24 sequences of distinct lengths (20..43) in every input form."""
    X = ragged_chain[0] * [1.0, 10.0, 0.1, 1.0] + [0.0, 5.0, -3.0, 100.0]
    seqs = [X[i, : 20 + i] for i in range(len(X))]
    lengths = [len(s) for s in seqs]
    return {"list": seqs, "stacked": np.concatenate(seqs), "lengths": lengths,
            "array3d": X[:, :20]}


# The scaler -------------------------------------------------------------------


@parametrize_with_checks([SequenceStandardScaler(),
                          SequenceStandardScaler(with_mean=False),
                          SequenceStandardScaler(with_std=False),
                          SequenceClipper(), SequenceClipper(n_sd=1.5)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_statistics_are_pooled_over_all_time_steps(data):
    scaler = SequenceStandardScaler().fit(data["list"])
    pooled = data["stacked"]
    np.testing.assert_allclose(scaler.mean_, pooled.mean(0))
    np.testing.assert_allclose(scaler.var_, pooled.var(0))
    np.testing.assert_allclose(scaler.scale_, pooled.std(0))
    assert scaler.n_samples_seen_ == len(pooled) == sum(data["lengths"])
    assert scaler.n_features_in_ == 4
    # Every form of the same rows gives the same statistics.
    for X, kw in [(pooled, {}), (pooled, {"lengths": data["lengths"]})]:
        other = SequenceStandardScaler().fit(X, **kw)
        np.testing.assert_allclose(other.mean_, scaler.mean_)
        np.testing.assert_allclose(other.scale_, scaler.scale_)


def test_output_mirrors_input_form(data):
    seqs, stacked, lengths = data["list"], data["stacked"], data["lengths"]
    scaler = SequenceStandardScaler().fit(seqs)
    out_list = scaler.transform(seqs)
    assert isinstance(out_list, list)
    assert [z.shape for z in out_list] == [s.shape for s in seqs]
    out_2d = scaler.transform(stacked, lengths=lengths)
    assert out_2d.shape == stacked.shape
    np.testing.assert_allclose(out_2d, np.concatenate(out_list))
    np.testing.assert_allclose(scaler.transform(stacked), out_2d)
    X3 = data["array3d"]
    out_3d = scaler.transform(X3)
    assert out_3d.shape == X3.shape
    np.testing.assert_allclose(out_3d[2], scaler.transform(X3[2]))
    z = SequenceStandardScaler().fit_transform(seqs)
    np.testing.assert_allclose(np.concatenate(z).mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.concatenate(z).std(0), 1.0)


def test_inverse_transform_round_trips_every_form(data):
    scaler = SequenceStandardScaler().fit(data["list"])
    back = scaler.inverse_transform(scaler.transform(data["list"]))
    for a, b in zip(back, data["list"]):
        np.testing.assert_allclose(a, b)
    kw = {"lengths": data["lengths"]}
    np.testing.assert_allclose(
        scaler.inverse_transform(scaler.transform(data["stacked"], **kw), **kw),
        data["stacked"])
    np.testing.assert_allclose(
        scaler.inverse_transform(scaler.transform(data["array3d"])), data["array3d"])


def test_input_is_not_modified_and_float32_is_kept(data):
    X = data["array3d"].copy()
    out = SequenceStandardScaler().fit_transform(X)
    np.testing.assert_array_equal(X, data["array3d"])
    assert out.dtype == np.float64
    out32 = SequenceStandardScaler().fit(X).transform(X.astype(np.float32))
    assert out32.dtype == np.float32 and out32.shape == X.shape
    np.testing.assert_allclose(out32, out, rtol=1e-5, atol=1e-5)


def test_constant_feature_is_only_centred():
    X = [np.column_stack([np.full(5, 3.0), np.arange(5.0)]),
         np.column_stack([np.full(3, 3.0), np.arange(3.0)])]
    scaler = SequenceStandardScaler().fit(X)
    assert scaler.var_[0] == 0.0 and scaler.scale_[0] == 1.0
    out = scaler.transform(X)
    np.testing.assert_array_equal(np.concatenate(out)[:, 0], 0.0)
    assert np.all(np.isfinite(np.concatenate(out)))


def test_scale_from_variance():
    var = np.array([4.0, 0.0, 1e-40, 1e-300])
    mean = np.array([0.0, 5.0, 1.0, 0.0])
    np.testing.assert_array_equal(scale_from_variance(var, mean, 100),
                                  [2.0, 1.0, 1.0, 1e-150])


def test_with_mean_and_with_std_flags(data):
    X = data["list"]
    pooled = data["stacked"]
    no_mean = SequenceStandardScaler(with_mean=False).fit(X)
    np.testing.assert_allclose(np.concatenate(no_mean.transform(X)),
                               pooled / pooled.std(0))
    no_std = SequenceStandardScaler(with_std=False).fit(X)
    assert no_std.scale_ is None and no_std.var_ is None
    np.testing.assert_allclose(np.concatenate(no_std.transform(X)),
                               pooled - pooled.mean(0))
    identity = SequenceStandardScaler(with_mean=False, with_std=False).fit(X)
    assert identity.mean_ is None
    np.testing.assert_array_equal(np.concatenate(identity.transform(X)), pooled)


def test_feature_names_out(data):
    scaler = SequenceStandardScaler().fit(data["array3d"])
    np.testing.assert_array_equal(scaler.get_feature_names_out(),
                                  ["x0", "x1", "x2", "x3"])


def _bad_inputs():
    return [
        (np.full((10, 4), np.nan), {}),
        (np.zeros(4), {}),
        (np.zeros((2, 3, 4, 4)), {}),
        ([], {}),
        ([np.zeros((5, 4)), np.zeros((5, 3))], {}),
        ([np.zeros((5, 4)), np.zeros((0, 4))], {}),
        (np.zeros((10, 4)), {"lengths": [4, 5]}),
        (np.zeros((10, 4)), {"lengths": [10, 0]}),
        (np.zeros((10, 4)), {"lengths": [4.5, 5.5]}),
        (np.zeros((2, 5, 4)), {"lengths": [5, 5]}),
        ([np.zeros((5, 4))], {"lengths": [5]}),
        (np.array([["a", "b"]]), {}),
    ]


@pytest.mark.parametrize("i", range(len(_bad_inputs())))
def test_bad_input_errors_are_the_segmenters(i):
    X, kw = _bad_inputs()[i]
    with pytest.raises((ValueError, TypeError)) as seg_err:
        LangevinSegmenter().fit(X, **kw)
    with pytest.raises(seg_err.type) as scaler_err:
        SequenceStandardScaler().fit(X, **kw)
    # sklearn's messages name the estimator class.
    assert str(scaler_err.value) == str(seg_err.value).replace(
        "LangevinSegmenter", "SequenceStandardScaler")


def test_transform_checks_features_and_fit(data):
    with pytest.raises(ValueError, match="not fitted"):
        SequenceStandardScaler().transform(data["array3d"])
    scaler = SequenceStandardScaler().fit(data["array3d"])
    with pytest.raises(ValueError, match="4 features"):
        scaler.transform(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="lengths sum to 9"):
        scaler.inverse_transform(np.zeros((10, 4)), lengths=[4, 5])


# Pipelines with the segmenter ---------------------------------------------------


def _pipe(**kw):
    return make_pipeline(SequenceStandardScaler(), LangevinSegmenter(**TINY, **kw))


@pytest.fixture(scope="module")
def list_pipe(data):
    """Pipeline fitted on the list: the reference for the other forms.

    A short fit with one well: compare its training (:func:`_same_training`),
    not its labels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _pipe().fit(data["list"])


@pytest.fixture(scope="module")
def wells_pipe(data):
    """Pipeline fitted on the list whose segmenter has 3 wells, to compare labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(SequenceStandardScaler(),
                             LangevinSegmenter(**TINY_SEARCH_WELLS)).fit(data["list"])
    assert pipe[-1].n_states_ == 3
    return pipe


def _same_training(a, b):
    """Two segmenters trained alike: the same loss curves, weights and wells."""
    assert a.loss_curve_ == b.loss_curve_
    state_a, state_b = a.module_.state_dict(), b.module_.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], rtol=0, atol=0)
    np.testing.assert_array_equal(a.energy_.minima, b.energy_.minima)
    np.testing.assert_array_equal(a.state_occupancy_, b.state_occupancy_)


def _list_outputs(pipe, seqs):
    """Labels and probabilities of the list, stacked; the labels take 3 values."""
    labels = np.concatenate(pipe.predict(seqs))
    assert len(np.unique(labels)) == 3
    return labels, np.concatenate(pipe.predict_proba(seqs))


def test_pipeline_on_list_and_3d(data, list_pipe):
    seqs = data["list"]
    labels = list_pipe.predict(seqs)
    assert [lab.shape for lab in labels] == [(n,) for n in data["lengths"]]
    n_states = list_pipe[-1].n_states_
    proba = list_pipe.predict_proba(seqs)
    assert [p.shape for p in proba] == [(n, n_states) for n in data["lengths"]]
    assert np.isfinite(list_pipe.score(seqs))
    X3 = data["array3d"]
    pipe3 = _pipe().fit(X3)
    assert pipe3.predict(X3).shape == X3.shape[:2]
    assert pipe3.predict_proba(X3).shape == (*X3.shape[:2], pipe3[-1].n_states_)
    assert isinstance(pipe3.score(X3), float)
    # One 2-D array without lengths is one sequence.
    one = _pipe().fit(data["stacked"])
    assert one.predict(data["stacked"]).shape == (len(data["stacked"]),)
    assert np.isfinite(one.score(data["stacked"]))


def test_pipeline_lengths_without_metadata_routing(data, list_pipe, wells_pipe):
    """Routing off: fit takes ``<step>__lengths``; predict passes ``**params`` on
    to the final step only (the scaler's transform does not need lengths)."""
    stacked, lengths, seqs = data["stacked"], data["lengths"], data["list"]
    pipe = _pipe().fit(stacked, sequencestandardscaler__lengths=lengths,
                       langevinsegmenter__lengths=lengths)
    # The segmenter was trained on the same sequences as from the list.
    _same_training(pipe[-1], list_pipe[-1])
    labels, proba = _list_outputs(wells_pipe, seqs)
    np.testing.assert_array_equal(wells_pipe.predict(stacked, lengths=lengths), labels)
    np.testing.assert_array_equal(wells_pipe.predict_proba(stacked, lengths=lengths),
                                  proba)
    # Without lengths the stacked X is one sequence: other labels.
    assert np.any(wells_pipe.predict(stacked) != labels)
    # The scaler's statistics do not depend on lengths: routing them to the
    # segmenter alone trains the same model.
    seg_only = _pipe().fit(stacked, langevinsegmenter__lengths=lengths)
    _same_training(seg_only[-1], list_pipe[-1])
    with pytest.raises(ValueError, match="stepname__parameter"):
        _pipe().fit(stacked, lengths=lengths)
    # Pipeline.score drops **params when routing is off (sklearn 1.9): the
    # stacked X is scored as ONE sequence. Score a list (or 3-D array), or call
    # the final step on the transformed data.
    assert pipe.score(stacked, lengths=lengths) == pipe.score(stacked)
    assert pipe.score(stacked) != list_pipe.score(seqs)
    assert (pipe[-1].score(pipe[:-1].transform(stacked), lengths=lengths)
            == list_pipe.score(seqs))


def _requesting(pipe, scaler_transform):
    """A copy of a fitted pipeline whose segmenter requests lengths for predict."""
    pipe = copy.deepcopy(pipe)
    pipe[0].set_transform_request(lengths=scaler_transform)
    pipe[-1].set_predict_request(lengths=True).set_predict_proba_request(lengths=True)
    return pipe


def test_pipeline_lengths_with_metadata_routing(data, list_pipe, wells_pipe):
    stacked, lengths, seqs = data["stacked"], data["lengths"], data["list"]
    labels, proba = _list_outputs(wells_pipe, seqs)
    with sklearn.config_context(enable_metadata_routing=True):
        scaler = (SequenceStandardScaler().set_fit_request(lengths=True)
                  .set_transform_request(lengths=True)
                  .set_inverse_transform_request(lengths=True))
        seg = (LangevinSegmenter(**TINY).set_fit_request(lengths=True)
               .set_predict_request(lengths=True)
               .set_predict_proba_request(lengths=True))
        pipe = make_pipeline(scaler, seg).fit(stacked, lengths=lengths)
        _same_training(pipe[-1], list_pipe[-1])
        routed = _requesting(wells_pipe, scaler_transform=True)
        np.testing.assert_array_equal(routed.predict(stacked, lengths=lengths), labels)
        np.testing.assert_array_equal(routed.predict_proba(stacked, lengths=lengths),
                                      proba)
        # Bad lengths now reach the scaler's validation first.
        with pytest.raises(ValueError, match="lengths sum to"):
            pipe.predict(stacked, lengths=lengths[:-1])
        # A step that takes lengths but neither requests nor declines it is an
        # error once lengths are passed; declining is fine. The pipeline calls
        # the scaler's fit_transform, so its fit and transform requests must
        # agree.
        undecided = make_pipeline(SequenceStandardScaler(),
                                  LangevinSegmenter(**TINY).set_fit_request(lengths=True))
        with pytest.raises(UnsetMetadataPassedError, match="lengths"):
            undecided.fit(stacked, lengths=lengths)
        half = make_pipeline(SequenceStandardScaler().set_fit_request(lengths=False),
                             LangevinSegmenter(**TINY).set_fit_request(lengths=True))
        with pytest.raises(ValueError, match="Conflicting metadata requests"):
            half.fit(stacked, lengths=lengths)
        declined = make_pipeline(
            SequenceStandardScaler().set_fit_request(lengths=False)
            .set_transform_request(lengths=False),
            LangevinSegmenter(**TINY).set_fit_request(lengths=True)
            .set_predict_request(lengths=True))
        declined.fit(stacked, lengths=lengths)
        _same_training(declined[-1], list_pipe[-1])
        declined_wells = _requesting(wells_pipe, scaler_transform=False)
        np.testing.assert_array_equal(declined_wells.predict(stacked, lengths=lengths),
                                      labels)


def test_pipeline_score_with_metadata_routing(data, list_pipe):
    with sklearn.config_context(enable_metadata_routing=True):
        seg = LangevinSegmenter(**TINY).set_score_request(lengths=True)
        scaler = SequenceStandardScaler().set_fit_request(lengths=True)
        scaler.set_transform_request(lengths=True)
        pipe = make_pipeline(scaler, seg).fit(data["list"])
        assert pipe.score(data["stacked"], lengths=data["lengths"]) == (
            list_pipe.score(data["list"]))


def test_failed_refit_leaves_fitted_scaler_unchanged(data):
    scaler = SequenceStandardScaler().fit(data["list"])
    before = {k: v.copy() if isinstance(v, np.ndarray) else v
              for k, v in vars(scaler).items()}
    with pytest.raises(ValueError, match="NaN"):
        scaler.fit(np.full((10, 3), np.nan))
    assert vars(scaler).keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(vars(scaler)[key], value)


# The clipper ------------------------------------------------------------------


def test_clipper_clips_to_median_and_mad_band_in_every_form(data):
    clipper = SequenceClipper(n_sd=2.0).fit(data["list"])
    stacked = data["stacked"]
    median = np.median(stacked, axis=0)
    scale = 1.4826 * np.median(np.abs(stacked - median), axis=0)
    np.testing.assert_allclose(clipper.median_, median)
    np.testing.assert_allclose(clipper.scale_, scale)
    np.testing.assert_allclose(clipper.lower_, median - 2.0 * scale)
    np.testing.assert_allclose(clipper.upper_, median + 2.0 * scale)
    expected = np.clip(stacked, median - 2.0 * scale, median + 2.0 * scale)
    assert (expected != stacked).any() and (expected == stacked).any()
    out = clipper.transform(data["list"])
    assert [len(o) for o in out] == data["lengths"]
    np.testing.assert_allclose(np.concatenate(out), expected)
    np.testing.assert_allclose(
        clipper.transform(data["stacked"], lengths=data["lengths"]), expected)
    assert clipper.transform(data["array3d"]).shape == data["array3d"].shape
    # The same fit whatever the grouping into sequences.
    again = SequenceClipper(n_sd=2.0).fit(stacked, lengths=data["lengths"])
    np.testing.assert_array_equal(again.lower_, clipper.lower_)


def test_clipper_leaves_gaussian_frames_nearly_alone_and_cuts_heavy_tails():
    rng = np.random.default_rng(0)
    gauss = rng.normal(size=(20, 500, 3))
    tails = rng.standard_t(2, size=(20, 500, 3))
    for X, most, least in ((gauss, 0.01, 0.0), (tails, 0.2, 0.02)):
        share = np.mean(SequenceClipper().fit_transform(X) != X)
        assert least < share < most, share


def test_clipper_uses_the_sd_where_most_values_are_equal():
    X = np.zeros((1, 100, 2))
    X[0, :10, 0] = 5.0  # MAD 0 in feature 0; feature 1 constant.
    clipper = SequenceClipper().fit(X)
    assert clipper.scale_[0] == pytest.approx(np.std(X[0, :, 0]))
    assert clipper.scale_[1] == 1.0
    np.testing.assert_array_equal(clipper.transform(X)[0, :, 1], 0.0)
    assert clipper.transform(X)[0, 0, 0] == pytest.approx(3.0 * np.std(X[0, :, 0]))


@pytest.mark.parametrize("n_sd, error", [(0.0, ValueError), (-1.0, ValueError),
                                         (np.inf, ValueError), ("3", TypeError),
                                         (True, TypeError)])
def test_clipper_rejects_bad_n_sd_and_keeps_its_fit(data, n_sd, error):
    clipper = SequenceClipper().fit(data["list"])
    lower = clipper.lower_.copy()
    with pytest.raises(error, match="n_sd"):
        clipper.set_params(n_sd=n_sd).fit(data["list"])
    np.testing.assert_array_equal(clipper.lower_, lower)

