"""Hostile input: every public method raises a clear error and damages nothing."""

import pickle

import numpy as np
import pytest

from nldseg import LangevinSegmenter
from nldseg._validation import MAX_ABS_VALUE

F = 8  # features of the tiny fitted model
ALL = ("fit", "predict", "predict_proba", "score", "transform")
INFER = ALL[1:]
_obj = np.full((10, F), None, dtype=object)
_obj[0, 0] = {"a": 1}

# (id, X, lengths, methods, error, message pattern)
CASES = [
    ("nan", np.full((10, F), np.nan), None, ALL, ValueError, "NaN"),
    ("+inf", np.full((10, F), np.inf), None, ALL, ValueError, "infinity"),
    ("-inf", np.full((10, F), -np.inf), None, ALL, ValueError, "infinity"),
    ("nan in list", [np.zeros((5, F)), np.full((5, F), np.nan)], None, ALL,
     ValueError, "NaN"),
    ("1-D", np.zeros(F), None, ALL, ValueError, "1 dimension"),
    ("4-D", np.zeros((2, 3, 4, F)), None, ALL, ValueError, "4 dimension"),
    ("wrong n_features", np.zeros((10, F + 1)), None, INFER, ValueError,
     f"{F + 1} features, but LangevinSegmenter is expecting {F}"),
    ("empty array", np.zeros((0, F)), None, ALL, ValueError, "0 sample"),
    ("empty 3-D", np.zeros((3, 0, F)), None, ALL, ValueError, "no time steps"),
    ("empty list", [], None, ALL, ValueError, "empty list"),
    ("mixed features", [np.zeros((5, F)), np.zeros((5, F - 1))], None, ALL,
     ValueError, "same number of features"),
    ("lengths sum", np.zeros((10, F)), [4, 5], ALL, ValueError, "lengths sum to 9"),
    ("lengths zero", np.zeros((10, F)), [10, 0], ALL, ValueError, ">= 1"),
    ("lengths negative", np.zeros((10, F)), [-1, 11], ALL, ValueError, ">= 1"),
    ("lengths fractional", np.zeros((10, F)), [4.5, 5.5], ALL, ValueError,
     "integers"),
    ("lengths 2-D", np.zeros((10, F)), [[5, 5]], ALL, ValueError, "1-D"),
    ("lengths with list", [np.zeros((10, F))], [10], ALL, ValueError,
     "lengths can only be given with a 2-D"),
    ("strings", np.full((10, F), "a"), None, ALL, TypeError, "strings"),
    ("object", _obj, None, ALL, TypeError, "not real numbers"),
    ("complex", np.ones((10, F)) * 1j, None, ALL, ValueError,
     "Complex data not supported"),
    ("None", None, None, ALL, TypeError, "NoneType"),
    ("ragged rows", [[1.0] * F, [1.0] * (F - 1)], None, ALL, ValueError,
     "could not be read as an array"),
    ("too short to fit", [np.zeros((1, F)), np.ones((10, F))], None, ("fit",),
     ValueError, r"only 1 time step.*at least 2"),
    ("empty sequence", [np.ones((4, F)), np.zeros((0, F))], None, ALL, ValueError,
     r"Sequence 1 is empty"),
    ("huge magnitude", np.full((10, F), 1e30), None, ALL, ValueError,
     "magnitude up to 1e\\+30"),
    ("huge in one entry", np.where(np.eye(10, F) > 0, -1e30, 0.0), None, ALL,
     ValueError, "magnitude"),
]


@pytest.fixture(scope="module")
def victim(tiny_fitted):
    """A private copy of the tiny model, so that a failure here cannot leak."""
    return pickle.loads(pickle.dumps(tiny_fitted))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_raises_clear_error_and_damages_nothing(victim, tiny_data,
                                                              case):
    _, X, lengths, methods, err, match = case
    X_ok = tiny_data[1][:2, :20]
    before = victim.predict_proba(X_ok)
    assert len(np.unique(before.argmax(-1))) >= 2
    state = {k: (v.copy() if isinstance(v, np.ndarray) else v)
             for k, v in vars(victim).items()}
    for name in methods:
        kwargs = {} if lengths is None else {"lengths": lengths}
        with pytest.raises(err, match=match):
            getattr(victim, name)(X, **kwargs)
        assert vars(victim).keys() == state.keys(), name
        for key, value in state.items():
            now = vars(victim)[key]
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(now, value)
            else:
                assert now is value, key
        np.testing.assert_array_equal(victim.predict_proba(X_ok), before)


@pytest.mark.parametrize("case", [c for c in CASES if "fit" in c[3]],
                         ids=[c[0] for c in CASES if "fit" in c[3]])
def test_failed_fit_leaves_new_estimator_unfitted(case):
    _, X, lengths, _, err, match = case
    est = LangevinSegmenter(max_iter=1)
    kwargs = {} if lengths is None else {"lengths": lengths}
    with pytest.raises(err, match=match):
        est.fit(X, **kwargs)
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(est))


def test_magnitude_limit_is_inclusive():
    X = np.random.default_rng(0).normal(size=(30, 2)) * MAX_ABS_VALUE / 10
    X[0, 0] = MAX_ABS_VALUE
    # One model, no refit of the depths: the check is the input's, not training's.
    LangevinSegmenter(hidden_size=4, context_size=2, max_iter=1, kl_warmup=0,
                      n_paths=1, random_state=0, n_init=1, n_lags=0,
                      depth_steps=0).fit(X)
