"""Safe persistence of fitted segmenters: parameters as JSON, weights as tensors.

An artifact is one file written by :func:`torch.save` that holds only strings,
numbers, dicts and tensors: the estimator's parameters and fitted scalars as
JSON text, and its weights and fitted arrays as tensors. :func:`load_estimator`
reads it with ``torch.load(..., weights_only=True)``, which refuses to build
arbitrary Python objects, so a file from an untrusted place cannot run code on
load (unlike pickle and joblib).
"""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from nldseg._landscape import EnergyLandscape
from nldseg._model import build_model, freeze
from nldseg._version import __version__

FORMAT = "nldseg-model"
FORMAT_VERSION = 1

_FITTED_SCALARS = ("n_states_", "beta_", "gamma_", "mass_", "prior_time_scale_",
                   "training_dwell_time_", "depths_refitted_",
                   "n_iter_", "converged_", "n_features_in_", "loss_curve_",
                   "validation_scores_", "_oldest_first", "n_lags_")
_FITTED_ARRAYS = ("state_occupancy_", "scaler_mean_", "scaler_scale_",
                  "candidate_lags_", "candidate_scores_", "candidate_wells_",
                  "candidate_state_scores_",
                  "lag_elbo_gain_", "lag_state_gain_",
                  "_markov_transition", "_markov_points")
# Parameters renamed since a file could have been written: old name -> new name.
_RENAMED_PARAMS = {"n_samples": "n_paths"}
# Parameters added since: the value that reproduces what older versions did.
_ADDED_PARAMS = {"decoder_covariance": "diag", "decoder_noise": "gaussian",
                 "early_stopping": False,
                 "validation_fraction": 0.1,
                 "n_threads": None,  # Not part of the model: today's default.
                 "n_jobs": "auto",  # Not part of the model either.
                 "distributed": False, "n_lags": 0,
                 "encoder_input": "linear",
                 "inference": "paths", "prior_weight": 0.5, "n_particles": 64,
                 "density_weight": 0.0,
                 "depth_steps": 0,  # Fitted before the depths were refitted.
                 "n_init": 1,
                 "switch_margin": 0.0,  # Labels were the argmax.
                 "switch_hold": 0}
# Fitted attributes added since: a factory of the value an older fit stands for.
_ADDED_FITTED = {"validation_scores_": list,
                 # Fitted before the clock was calibrated: none to use.
                 "prior_time_scale_": lambda: float("nan"),
                 # Fitted before it was measured: switch_hold="auto" holds 0 steps.
                 "training_dwell_time_": lambda: float("nan"),
                 # Fitted before the depths were refitted.
                 "depths_refitted_": lambda: False,
                 # Delay embeddings were newest first, and the decoder
                 # explained the whole embedded frame.
                 "_oldest_first": lambda: False,
                 # Fitted before the candidates were reported.
                 "candidate_lags_": lambda: np.array([], dtype=int),
                 "candidate_scores_": lambda: np.array([]),
                 "lag_elbo_gain_": lambda: np.full(2, np.nan),
                 # Fitted before the wells of two candidates were compared.
                 "candidate_wells_": lambda: np.array([]),
                 # Fitted before the candidates' labels were compared.
                 "candidate_state_scores_": lambda: np.array([]),
                 "lag_state_gain_": lambda: np.full(2, np.nan),
                 # Fitted before inference="markov": empty, the chain is then
                 # simulated when that inference is asked for.
                 "_markov_transition": lambda: np.zeros((0, 0)),
                 "_markov_points": lambda: np.zeros((0, 0, 0), dtype=np.float32)}


class InconsistentVersionWarning(UserWarning):
    """A model written by another nldseg version is being loaded.

    Parameters
    ----------
    original_version : str
        Version that wrote the model.
    current_version : str
        Version loading it.
    """

    def __init__(self, original_version: str, current_version: str) -> None:
        self.original_version = original_version
        self.current_version = current_version
        super().__init__(
            f"This model was written by nldseg {original_version} and is being "
            f"loaded with nldseg {current_version}. It may fail or give different "
            f"results; refit it with nldseg {current_version} if you can.")


def warn_if_other_version(original_version: str | None) -> None:
    """Warn with :class:`InconsistentVersionWarning` when versions differ."""
    if original_version is not None and original_version != __version__:
        warnings.warn(InconsistentVersionWarning(str(original_version), __version__),
                      stacklevel=3)


def add_missing_fitted(fitted: dict) -> dict:
    """``fitted`` attributes of an older fit, completed with those added since."""
    for name, make in _ADDED_FITTED.items():
        fitted.setdefault(name, make())
    return fitted


def rename_old_params(params: dict) -> dict:
    """``params`` of an older version in today's names.

    Renamed parameters take their new names; parameters added since get the
    value that reproduces the older behaviour (e.g. a diagonal decoder).
    """
    params = dict(params)
    for old, new in _RENAMED_PARAMS.items():
        if old in params:
            params[new] = params.pop(old)
    if "filter_tempering" in params:
        # A short-lived version tempered the whole particle weight by this
        # exponent; 0 meant the path fractions. The nearest today: the same
        # exponent on the prior's ratio (the likelihood now counts in full).
        tempering = params.pop("filter_tempering")
        params.setdefault("inference", "paths" if tempering == 0 else "filter")
        params.setdefault("prior_weight", tempering if tempering > 0 else 0.5)
    for name, value in _ADDED_PARAMS.items():
        params.setdefault(name, value)
    return params


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def _to_json(name: str, value) -> str:
    try:
        return json.dumps(value, default=_json_default, allow_nan=True)
    except TypeError as exc:
        raise TypeError(
            f"Cannot save: {name} must hold only JSON values (numbers, strings, "
            f"booleans, None); got {value!r}. For random_state, pass an int "
            f"(set_params(random_state=0) does not refit).") from exc


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def save_estimator(estimator, path) -> None:
    """Write a fitted segmenter to ``path`` in the safe format."""
    check_is_fitted(estimator)
    params = estimator.get_params(deep=False)
    for name, value in params.items():
        _to_json(f"parameter {name}", value)
    fitted = {name: getattr(estimator, name) for name in _FITTED_SCALARS}
    if hasattr(estimator, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(n) for n in estimator.feature_names_in_]
    land = estimator.energy_.state_dict()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nldseg_version": __version__,
        "estimator": type(estimator).__name__,
        "params": _to_json("the parameters", params),
        "fitted": _to_json("the fitted attributes", fitted),
        "arrays": {name: _tensor(getattr(estimator, name)) for name in _FITTED_ARRAYS},
        "module_state": {k: v.detach().cpu().clone()
                         for k, v in estimator.module_.state_dict().items()},
        "landscape_arrays": {k: _tensor(v) for k, v in land["arrays"].items()},
        "landscape_scalars": _to_json("the energy landscape", land["scalars"]),
        "occupancies": {k: _tensor(v) for k, v in land["occupancies"].items()},
    }
    torch.save(payload, os.fspath(path))


def _read(path) -> dict:
    try:
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{os.fspath(path)!r} is not a safe nldseg model file: loading it would "
            f"need arbitrary Python objects, which are refused ({exc}).") from exc
    except Exception as exc:  # torch raises many types for non-torch files
        raise ValueError(f"{os.fspath(path)!r} is not a readable nldseg model file: "
                         f"{exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not an nldseg model file (no "
                         f"{FORMAT!r} header).")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} uses file format {payload['format_version']}, newer "
            f"than this nldseg ({__version__}) reads ({FORMAT_VERSION}); upgrade "
            f"nldseg (the file was written by {payload.get('nldseg_version')}).")
    return payload


def load_estimator(cls, path):
    """Read a segmenter written by :func:`save_estimator` (no code is executed)."""
    payload = _read(path)
    warn_if_other_version(payload.get("nldseg_version"))
    try:
        return _rebuild(cls, payload)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is a damaged or incompatible nldseg "
                         f"model file: {type(exc).__name__}: {exc}") from exc


def _rebuild(cls, payload: dict):
    estimator = cls(**rename_old_params(json.loads(payload["params"])))
    fitted = add_missing_fitted(json.loads(payload["fitted"]))
    fitted.setdefault("n_lags_", estimator.n_lags)  # From before n_lags="auto".
    module = build_model(int(fitted["n_features_in_"]),
                         dict(estimator.get_params(), n_lags=fitted["n_lags_"]),
                         conditional_lags=fitted["_oldest_first"])
    module.load_state_dict(payload["module_state"], strict=True)
    freeze(module)
    landscape = EnergyLandscape.from_state_dict(module.energy, {
        "scalars": json.loads(payload["landscape_scalars"]),
        "arrays": {k: v.numpy() for k, v in payload["landscape_arrays"].items()},
        "occupancies": {k: v.numpy() for k, v in payload["occupancies"].items()}})
    for key, value in fitted.items():
        if key == "feature_names_in_":
            value = np.asarray(value, dtype=object)
        setattr(estimator, key, value)
    for key, value in payload["arrays"].items():
        setattr(estimator, key, value.numpy())
    estimator.module_ = module
    estimator.energy_ = landscape
    return estimator
