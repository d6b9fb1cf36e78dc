"""Persistence: pickle/joblib, the safe save/load format, version warnings."""

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import joblib
import numpy as np
import pytest
import torch
from conftest import fit_three_wells
from sklearn.exceptions import NotFittedError

import nldseg
from nldseg import InconsistentVersionWarning, LangevinSegmenter
from nldseg._inference import hysteresis_labels


def _same_outputs(a, b, X):
    labels = a.predict(X)
    assert len(np.unique(labels)) >= 2  # Labels that could disagree.
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(labels, b.predict(X))
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert a.score(X) == b.score(X)


@pytest.mark.parametrize("model", ["tiny_fitted", "tiny_underdamped",
                                   "tiny_latent_noise"])
def test_safe_save_load_round_trip(model, tiny_data, tmp_path, request):
    seg = request.getfixturevalue(model)
    path = tmp_path / "model.nldseg"
    seg.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Same version: no warning.
        loaded = LangevinSegmenter.load(str(path))
    _same_outputs(seg, loaded, tiny_data[1])
    assert loaded.get_params() == seg.get_params()
    for name in ("n_states_", "n_features_in_", "n_iter_", "converged_", "beta_",
                 "gamma_", "mass_", "loss_curve_", "prior_time_scale_",
                 "training_dwell_time_", "depths_refitted_"):
        assert getattr(loaded, name) == getattr(seg, name), name
    np.testing.assert_array_equal(loaded.state_occupancy_, seg.state_occupancy_)
    np.testing.assert_array_equal(loaded.energy_.minima, seg.energy_.minima)
    for method in ("sampled", "zeroth_order", "second_order"):
        np.testing.assert_array_equal(loaded.energy_.occupancy(method),
                                      seg.energy_.occupancy(method))
    z = seg.energy_.minima + 0.1
    np.testing.assert_array_equal(loaded.energy_(z), seg.energy_(z))
    # The file holds only tensors and plain values: torch's safe loader reads it.
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "nldseg-model"


def test_pickle_and_joblib_round_trip(tiny_fitted, tiny_data, tmp_path):
    X = tiny_data[1]
    _same_outputs(tiny_fitted, pickle.loads(pickle.dumps(tiny_fitted)), X)
    joblib.dump(tiny_fitted, tmp_path / "m.joblib")
    _same_outputs(tiny_fitted, joblib.load(tmp_path / "m.joblib"), X)


def test_fitted_model_holds_no_accelerator_tensors(tiny_fitted):
    """What makes a model fitted on CUDA load on a machine without a GPU."""
    state = tiny_fitted.module_.state_dict()
    assert all(t.device.type == "cpu" for t in state.values())
    landscape = tiny_fitted.energy_
    for net in (landscape._energy32, landscape._energy64):
        assert all(p.device.type == "cpu" for p in net.parameters())


def test_pickle_from_another_version_warns_with_both(tiny_fitted, monkeypatch):
    monkeypatch.setattr(nldseg._estimator, "__version__", "0.0.1")
    blob = pickle.dumps(tiny_fitted)
    monkeypatch.undo()
    with pytest.warns(InconsistentVersionWarning,
                      match=rf"nldseg 0\.0\.1 .* nldseg {nldseg.__version__}"):
        pickle.loads(blob)


def test_saved_file_from_another_version_warns_with_both(tiny_fitted, tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr(nldseg._persistence, "__version__", "9.9.9")
    tiny_fitted.save(tmp_path / "m.nldseg")
    monkeypatch.undo()
    with pytest.warns(InconsistentVersionWarning) as record:
        LangevinSegmenter.load(tmp_path / "m.nldseg")
    w = record[0].message
    assert (w.original_version, w.current_version) == ("9.9.9", nldseg.__version__)


def _as_older_version(params: dict, fitted: dict) -> None:
    """Rewrite a model's parameters and fitted attributes as an older nldseg wrote them."""
    params["n_samples"] = params.pop("n_paths")  # Renamed since.
    del params["early_stopping"], params["validation_fraction"]  # Added since.
    del params["n_threads"]  # Added since.
    del fitted["validation_scores_"], fitted["_oldest_first"]  # Added since.
    del fitted["candidate_lags_"], fitted["candidate_scores_"]  # Added since.
    del fitted["lag_elbo_gain_"], fitted["candidate_wells_"]  # Added since.
    del fitted["candidate_state_scores_"], fitted["lag_state_gain_"]  # Added since.


def _check_upgraded(seg, loaded, X) -> None:
    _same_outputs(seg, loaded, X)
    assert loaded.n_paths == seg.n_paths
    assert loaded.early_stopping is False and loaded.validation_fraction == 0.1
    assert loaded.n_threads is None
    assert loaded.validation_scores_ == []
    assert loaded._oldest_first is False
    assert loaded.candidate_lags_.shape == loaded.candidate_scores_.shape == (0,)
    assert loaded.candidate_wells_.shape == loaded.candidate_state_scores_.shape == (0,)
    assert loaded.lag_elbo_gain_.shape == (2,) and np.isnan(loaded.lag_elbo_gain_).all()
    assert loaded.lag_state_gain_.shape == (2,) and np.isnan(loaded.lag_state_gain_).all()
    np.testing.assert_array_equal(loaded.decoder_df_, np.full(8, np.inf))  # Gaussian.


def test_pickle_from_an_older_version_gets_todays_names(tiny_fitted, tiny_data):
    state = tiny_fitted.__getstate__()
    _as_older_version(state, state)
    state["_nldseg_version"] = "0.0.1"
    loaded = LangevinSegmenter.__new__(LangevinSegmenter)
    with pytest.warns(InconsistentVersionWarning):
        loaded.__setstate__(state)
    _check_upgraded(tiny_fitted, loaded, tiny_data[1])


def _resaved(seg, tmp_path, name: str, edit) -> LangevinSegmenter:
    """``seg`` saved, its parameters and fitted attributes rewritten by ``edit``, loaded."""
    seg.save(tmp_path / "m.nldseg")
    payload = torch.load(tmp_path / "m.nldseg", weights_only=True)
    params, fitted = json.loads(payload["params"]), json.loads(payload["fitted"])
    both = dict(fitted, **payload["arrays"])  # Attributes stored as JSON or as tensors.
    edit(params, both)
    payload["params"] = json.dumps(params)
    payload["fitted"] = json.dumps({k: v for k, v in both.items() if k in fitted})
    payload["arrays"] = {k: v for k, v in both.items() if k in payload["arrays"]}
    torch.save(payload, tmp_path / name)
    return LangevinSegmenter.load(tmp_path / name)


def test_saved_file_from_an_older_version_gets_todays_names(tiny_fitted, tiny_data,
                                                            tmp_path):
    loaded = _resaved(tiny_fitted, tmp_path, "old.nldseg", _as_older_version)
    _check_upgraded(tiny_fitted, loaded, tiny_data[1])


def test_model_file_from_before_the_depths_refit_says_none_was_made(tiny_fitted,
                                                                     tmp_path):
    seg = copy.copy(tiny_fitted).set_params(depth_steps=400)
    seg.depths_refitted_ = True

    def drop_refit(params, fitted):
        del params["depth_steps"], fitted["depths_refitted_"]

    loaded = _resaved(seg, tmp_path, "old.nldseg", drop_refit)
    assert loaded.depth_steps == 0 and loaded.depths_refitted_ is False


def test_model_file_from_before_the_calibrated_clock_runs_the_prior_as_trained(
        tiny_fitted, tmp_path):
    def drop_clock(params, fitted):
        del fitted["prior_time_scale_"]

    loaded = _resaved(tiny_fitted, tmp_path, "old.nldseg", drop_clock)
    assert np.isnan(loaded.prior_time_scale_)
    kw = dict(n_trajectories=16, n_steps=50, random_state=0)
    with pytest.warns(UserWarning, match="calibrated the prior's clock"):
        P = loaded.transition_matrix(**kw)
    np.testing.assert_array_equal(P, tiny_fitted.transition_matrix(**kw, clock="model"))


def test_model_file_from_before_the_switch_hold_labels_as_it_did(tiny_fitted,
                                                                 tiny_data, tmp_path):
    """A file without ``switch_hold`` nor ``training_dwell_time_`` holds no step."""
    def drop_hold(params, fitted):
        del params["switch_hold"], fitted["training_dwell_time_"]

    loaded = _resaved(tiny_fitted, tmp_path, "old.nldseg", drop_hold)
    assert loaded.switch_hold == 0 and np.isnan(loaded.training_dwell_time_)
    proba = loaded.predict_proba(tiny_data[1])
    np.testing.assert_array_equal(
        loaded.predict(tiny_data[1]),
        [hysteresis_labels(p, loaded.switch_margin) for p in proba])
    loaded.set_params(switch_hold="auto")  # No dwell measured: "auto" holds 0 steps.
    np.testing.assert_array_equal(
        loaded.predict(tiny_data[1]),
        [hysteresis_labels(p, loaded.switch_margin) for p in proba])


def test_model_file_from_before_the_quadratic_encoder_loads_as_linear(tiny_data,
                                                                       tmp_path):
    X, X_test, _ = tiny_data
    seg = fit_three_wells(X, encoder_input="linear")
    loaded = _resaved(seg, tmp_path, "old.nldseg",
                      lambda params, _: params.pop("encoder_input"))  # Added since.
    assert loaded.encoder_input == "linear"
    _same_outputs(seg, loaded, X_test)
    with pytest.raises(ValueError, match="damaged or incompatible"):
        # The weights of another encoder.
        _resaved(seg, tmp_path, "bad.nldseg",
                 lambda params, _: params.update(encoder_input="quadratic"))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_load_refuses_code_execution(tmp_path):
    path = tmp_path / "evil.nldseg"
    torch.save({"format": "nldseg-model", "payload": _Exploit()}, path)
    with pytest.raises(ValueError, match="not a safe nldseg model file"):
        LangevinSegmenter.load(path)


def test_load_rejects_foreign_and_damaged_files(tiny_fitted, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an nldseg model file"):
        LangevinSegmenter.load(other)
    text = tmp_path / "text.nldseg"
    text.write_text("hello")
    with pytest.raises(ValueError, match="nldseg model file"):
        LangevinSegmenter.load(text)
    good = tmp_path / "good.nldseg"
    tiny_fitted.save(good)
    payload = torch.load(good, weights_only=True)
    del payload["module_state"]["energy.lin1.weight"]
    torch.save(payload, tmp_path / "damaged.nldseg")
    with pytest.raises(ValueError, match="damaged or incompatible"):
        LangevinSegmenter.load(tmp_path / "damaged.nldseg")


def test_save_needs_fitted_model_and_json_parameters(tiny_fitted, tmp_path):
    with pytest.raises(NotFittedError):
        LangevinSegmenter().save(tmp_path / "x.nldseg")
    seg = pickle.loads(pickle.dumps(tiny_fitted))
    seg.set_params(random_state=np.random.RandomState(0))
    with pytest.raises(TypeError, match="random_state, pass an int"):
        seg.save(tmp_path / "x.nldseg")
    assert not (tmp_path / "x.nldseg").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_fitted_on_cuda_predicts_without_gpu(tiny_data, tmp_path):
    from conftest import TINY

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(**dict(TINY, device="cuda")).fit(tiny_data[0])
    np.save(tmp_path / "X.npy", tiny_data[1])
    np.save(tmp_path / "expected.npy", seg.predict_proba(tiny_data[1]))
    joblib.dump(seg, tmp_path / "m.joblib")
    seg.save(tmp_path / "m.nldseg")
    script = textwrap.dedent(f"""
        import joblib, numpy as np, torch
        from nldseg import LangevinSegmenter
        assert not torch.cuda.is_available()
        X = np.load({str(tmp_path / 'X.npy')!r})
        expected = np.load({str(tmp_path / 'expected.npy')!r})
        for seg in (joblib.load({str(tmp_path / 'm.joblib')!r}),
                    LangevinSegmenter.load({str(tmp_path / 'm.nldseg')!r})):
            np.testing.assert_array_equal(seg.predict_proba(X), expected)
        print("ok")
    """)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_model_file_from_before_the_particle_filter_labels_by_paths(tiny_fitted, tiny_data,
                                                                   tmp_path):
    def before_filter(params, _):
        for name in ("inference", "prior_weight", "n_particles"):  # Added since.
            params.pop(name)

    loaded = _resaved(tiny_fitted, tmp_path, "old.nldseg", before_filter)
    assert loaded.inference == "paths"
    paths = copy.copy(tiny_fitted).set_params(inference="paths")
    _same_outputs(paths, loaded, tiny_data[1])


@pytest.mark.parametrize("tempering, inference, prior_weight",
                         [(0.0, "paths", 0.5), (0.5, "filter", 0.5), (1.0, "filter", 1.0)])
def test_model_file_with_filter_tempering_loads(tiny_fitted, tmp_path, tempering,
                                                inference, prior_weight):
    """A short-lived version's ``filter_tempering`` maps onto today's parameters."""
    def with_tempering(params, _):
        for name in ("inference", "prior_weight"):
            params.pop(name)
        params["filter_tempering"] = tempering

    loaded = _resaved(tiny_fitted, tmp_path, "old.nldseg", with_tempering)
    assert (loaded.inference, loaded.prior_weight) == (inference, prior_weight)
