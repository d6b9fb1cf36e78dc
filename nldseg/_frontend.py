"""What the command line and the service share: the model's description, labelling.

:func:`model_summary` is what ``nldseg info`` prints and ``GET /model``
answers; :func:`label_sequences` is what ``nldseg predict`` writes and
``POST /predict`` answers.
"""

from __future__ import annotations

import json
import platform

import numpy as np
import sklearn
import torch
from sklearn.utils.validation import check_is_fitted

from nldseg._inference import hold_steps, hysteresis_labels
from nldseg._version import __version__


def _json_value(value):
    """``value`` if JSON can hold it as it is, else its ``repr``."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def versions() -> dict:
    """Versions of nldseg and of the packages that decide its outputs."""
    return {"nldseg": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


def model_summary(estimator) -> dict:
    """Parameters, states, occupancy, training outcome and versions of a fitted model.

    Every value is a JSON value (a parameter that is not, such as a
    ``RandomState``, is given as its ``repr``).
    """
    check_is_fitted(estimator)
    return {
        "n_features": int(estimator.n_features_in_),
        "n_states": int(estimator.n_states_),
        "state_occupancy": [float(p) for p in estimator.state_occupancy_],
        "n_iter": int(estimator.n_iter_),
        "converged": bool(estimator.converged_),
        "parameters": {name: _json_value(value)
                       for name, value in sorted(estimator.get_params().items())},
        "versions": versions(),
    }


def label_sequences(estimator, sequences: list, with_proba: bool) -> tuple:
    """``(labels, proba)`` of a list of 2-D sequences; ``proba`` is None unless asked.

    With probabilities, ``predict_proba`` runs once and the labels are read
    from it by the estimator's ``switch_margin`` and ``switch_hold``, which is
    what ``predict`` returns.
    """
    if not with_proba:
        return estimator.predict(sequences), None
    proba = estimator.predict_proba(sequences)
    hold = hold_steps(estimator.switch_hold, estimator.training_dwell_time_)
    return [hysteresis_labels(p, estimator.switch_margin, hold=hold) for p in proba], proba
