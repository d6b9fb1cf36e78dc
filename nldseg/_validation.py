"""Turn every accepted input into one internal form; raise every input error.

Accepted ``X``:

- a 2-D array ``(n_samples, n_features)``: one sequence, or several stacked
  end to end when ``lengths`` is given;
- a 3-D array ``(n_sequences, n_timesteps, n_features)``;
- a list (or tuple) of 2-D arrays ``(n_timesteps_i, n_features)`` of any lengths
  (a list of 1-D rows is read as a 2-D array, as everywhere in scikit-learn).

The internal form is a :class:`Sequences`: one float array ``(n_total, n_features)``
and the lengths of the sequences in it, plus the input's form so that outputs
can mirror it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils.validation import validate_data

#: The input forms, one vocabulary for observations and labels alike:
#: ``"stacked"``, the steps of one or several sequences along the first axis of
#: one array (``X`` 2-D, labels 1-D); ``"batch"``, sequences of equal length
#: along the first axis (``X`` 3-D, labels 2-D); ``"list"``, one array per
#: sequence, of any lengths.
FORMS = frozenset({"stacked", "batch", "list"})

#: Largest accepted absolute input value. The model computes in float32, where
#: squares of larger values overflow (float32 max is 3.4e38); such magnitudes
#: are almost always a units or corruption error.
MAX_ABS_VALUE = 1e15


@dataclass
class Sequences:
    """Validated sequences: concatenated rows, their lengths and the input form."""

    data: np.ndarray  # (n_total, n_features), float64 or float32
    lengths: np.ndarray  # (n_sequences,), int64, all >= 1
    form: str  # one of FORMS

    @property
    def offsets(self) -> np.ndarray:
        """Start row of each sequence in :attr:`data`."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """Split per-row ``values`` (n_total, ...) into one array per sequence."""
        return np.split(values, np.cumsum(self.lengths)[:-1])


def active_by_step(lengths: np.ndarray) -> list[np.ndarray]:
    """The sequences still running at each step, longest first.

    Element ``t`` holds the indices of the sequences longer than ``t`` steps,
    in order of decreasing length (ties in index order), so that those
    running at step ``t`` are a prefix of those running at ``t - 1``.
    """
    order = np.argsort(-lengths, kind="stable")
    return [order[:int(np.count_nonzero(lengths > t))]
            for t in range(int(lengths.max()) if len(lengths) else 0)]


def _check_lengths(lengths, n_rows: int) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D sequence of integers, "
                         f"got shape {arr.shape}.")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or not np.all(
                arr == np.round(arr)):
            raise ValueError(f"lengths must contain integers, got {arr.tolist()!r}.")
    arr = arr.astype(np.int64)
    if np.any(arr < 1):
        raise ValueError(f"lengths must all be >= 1, got {arr.tolist()!r}.")
    if arr.sum() != n_rows:
        raise ValueError(f"lengths sum to {int(arr.sum())} but X has {n_rows} rows.")
    return arr


@contextmanager
def unchanged_on_error(estimator):
    """Restore ``estimator``'s attributes if the block raises (Ctrl-C included).

    ``fit`` runs inside it so that bad input or a failed fit never leaves a
    fitted estimator half-changed (``validate_data(reset=True)`` alone sets
    ``n_features_in_`` before anything else is checked).
    """
    state = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(state)
        raise


def _check_magnitude(data: np.ndarray) -> None:
    peak = float(np.max(np.abs(data))) if data.size else 0.0
    if peak > MAX_ABS_VALUE:
        raise ValueError(f"X contains values of magnitude up to {peak:.3g}; values "
                         f"beyond {MAX_ABS_VALUE:.0e} overflow the model's float32 "
                         f"arithmetic. Rescale X (e.g. change its units).")


def _check_min_length(lengths: np.ndarray, min_length: int) -> None:
    short = np.flatnonzero(lengths < min_length)
    if short.size:
        i = int(short[0])
        raise ValueError(f"Sequence {i} has only {int(lengths[i])} time step(s) "
                         f"(n_samples = {int(lengths[i])}), fewer than the "
                         f"{min_length} needed here; {short.size} sequence(s) are "
                         f"too short. Fitting needs at least 2 steps per sequence "
                         f"(one transition); inference needs 1.")


def check_sequences(estimator, X, *, lengths=None, reset: bool,
                    min_length: int = 1) -> Sequences:
    """Validate ``X`` (and ``lengths``) for ``estimator``.

    Sets or checks ``n_features_in_`` through sklearn's ``validate_data`` (with
    ``reset``), rejects NaN/inf, values beyond :data:`MAX_ABS_VALUE`, sparse,
    complex, object and string data, empty inputs, mixed feature counts and
    sequences shorter than ``min_length``, and returns a :class:`Sequences`.
    """
    seqs = _check_sequences(estimator, X, lengths=lengths, reset=reset)
    _check_magnitude(seqs.data)
    _check_min_length(seqs.lengths, min_length)
    return seqs


def check_observation(x_t, n_features: int) -> np.ndarray:
    """Validate one observation for streaming; return it as float64 (n_features,)."""
    try:
        row = np.asarray(x_t)
    except Exception as exc:  # e.g. ragged nested lists
        raise ValueError(f"Could not read the observation as an array: {exc}") from exc
    if row.dtype.kind not in "biuf":
        raise TypeError(f"The observation must be numeric (real), got dtype "
                        f"{row.dtype}.")
    if row.ndim == 2 and row.shape[0] == 1:
        row = row[0]
    if row.shape != (n_features,):
        raise ValueError(f"Expected one observation of shape ({n_features},) or "
                         f"(1, {n_features}), got shape {row.shape}.")
    row = row.astype(np.float64)
    if not np.all(np.isfinite(row)):
        raise ValueError("The observation contains NaN or infinity.")
    _check_magnitude(row)
    return row


def _as_array(X, what: str) -> np.ndarray:
    """``np.asarray(X)`` with errors that say what went wrong."""
    if X is None or isinstance(X, (str, bytes, dict, set)):
        raise TypeError(f"{what} must be an array-like of numbers, got "
                        f"{type(X).__name__}.")
    try:
        arr = np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what} could not be read as an array ({exc}). Put "
                         f"sequences of different lengths in a list of 2-D "
                         f"arrays.") from exc
    _check_dtype(arr, what)
    return arr


def _check_dtype(arr: np.ndarray, what: str) -> None:
    """Reject strings, complex numbers and objects that are not real numbers."""
    kind = arr.dtype.kind
    if kind in "US":
        raise TypeError(f"{what} holds strings (dtype {arr.dtype}); real numbers "
                        f"are required.")
    if kind == "c":
        raise ValueError(f"Complex data not supported: {what} has dtype "
                         f"{arr.dtype}; real numbers are required.")
    if kind in "mMV":
        raise TypeError(f"{what} has dtype {arr.dtype}; real numbers are required.")
    if kind == "O":
        try:
            arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what} has dtype object and holds values that are not "
                            f"real numbers ({exc}).") from exc


def _check_sequences(estimator, X, *, lengths=None, reset: bool) -> Sequences:
    kwargs = {"reset": reset, "dtype": [np.float64, np.float32],
              "ensure_all_finite": True}
    if isinstance(X, (list, tuple)) and len(X) and np.ndim(X[0]) < 2:
        # A list of rows is an ordinary 2-D array, as everywhere in sklearn.
        X = _as_array(X, "X")
    if isinstance(X, (list, tuple)):
        if lengths is not None:
            raise ValueError("lengths can only be given with a 2-D array X; a list of "
                             "sequences carries its own lengths.")
        if len(X) == 0:
            raise ValueError("X is an empty list; expected at least one sequence.")
        arrays = []
        for i, seq in enumerate(X):
            if hasattr(seq, "toarray") or hasattr(seq, "tocsr"):
                raise TypeError("Sparse data was passed, but dense data is required.")
            a = _as_array(seq, f"Sequence {i}")
            if a.ndim != 2:
                raise ValueError(f"Each sequence in the list must be a 2-D array "
                                 f"(n_timesteps, n_features); sequence {i} has "
                                 f"shape {a.shape}.")
            if arrays and a.shape[1] != arrays[0].shape[1]:
                raise ValueError(f"All sequences must have the same number of "
                                 f"features; sequence 0 has {arrays[0].shape[1]} "
                                 f"and sequence {i} has {a.shape[1]}.")
            if a.shape[0] == 0:
                raise ValueError(f"Sequence {i} is empty (0 time steps).")
            arrays.append(a)
        lens = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        data = validate_data(estimator, np.concatenate(arrays), **kwargs)
        return Sequences(data, lens, "list")
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):
        # Let sklearn raise its standard sparse-data error.
        validate_data(estimator, X, accept_sparse=False, **kwargs)
    arr = _as_array(X, "X")
    ndim = arr.ndim
    if ndim == 3:
        if lengths is not None:
            raise ValueError("lengths can only be given with a 2-D array X; a 3-D "
                             "array holds sequences of equal length.")
        n_seq, n_t, n_feat = arr.shape
        if n_seq == 0 or n_t == 0:
            raise ValueError(f"X of shape {arr.shape} holds no time steps.")
        data = validate_data(estimator, arr.reshape(n_seq * n_t, n_feat), **kwargs)
        return Sequences(data, np.full(n_seq, n_t, dtype=np.int64), "batch")
    if ndim not in (2,):
        raise ValueError(
            f"Expected a 2-D array (n_samples, n_features), a 3-D array "
            f"(n_sequences, n_timesteps, n_features) or a list of 2-D arrays; got "
            f"an array with {ndim} dimension(s). Reshape your data either using "
            f"array.reshape(-1, 1) if your data has a single feature or "
            f"array.reshape(1, -1) if it contains a single sample.")
    data = validate_data(estimator, X, **kwargs)
    if lengths is None:
        lens = np.array([data.shape[0]], dtype=np.int64)
    else:
        lens = _check_lengths(lengths, data.shape[0])
    return Sequences(data, lens, "stacked")


def format_output(seqs: Sequences, per_row: np.ndarray):
    """Shape per-row results (n_total, ...) like the input ``seqs`` was shaped.

    ``stacked`` -> (n_samples, ...), ``batch`` -> (n_sequences, n_timesteps,
    ...), ``list`` -> list of (n_timesteps_i, ...) arrays.
    """
    if seqs.form == "stacked":
        return per_row
    if seqs.form == "batch":
        return per_row.reshape(len(seqs.lengths), int(seqs.lengths[0]),
                               *per_row.shape[1:])
    return seqs.split(per_row)


def delay_embed(data: np.ndarray, lengths: np.ndarray, n_lags: int, *,
                oldest_first: bool = False) -> np.ndarray:
    """Each row beside the ``n_lags`` rows before it in its own sequence.

    Row ``t`` of a sequence becomes ``[x_t, x_{t-1}, ..., x_{t-n_lags}]``, or
    with ``oldest_first`` ``[x_{t-n_lags}, ..., x_{t-1}, x_t]``; before a
    sequence's first row the first row is repeated (``x_{-1} = x_0``), so no
    row reads another sequence and row ``t`` reads ``x[:t+1]`` only
    (causal). ``n_lags=0`` returns ``data`` itself.

    Parameters
    ----------
    data : ndarray of shape (n_total, n_features)
        Rows of the sequences, concatenated.
    lengths : ndarray of shape (n_sequences,)
        Rows per sequence.
    n_lags : int
        Previous rows placed beside each row.
    oldest_first : bool, default=False
        Order of the blocks: the newest row last (so that a density factored
        in column order ends with ``p(x_t | x_{t-n_lags}..x_{t-1})``) rather
        than first.

    Returns
    -------
    embedded : ndarray of shape (n_total, n_features * (n_lags + 1))
        Same dtype as ``data``; column block ``l`` holds ``x_{t-l}``, or
        ``x_{t-n_lags+l}`` with ``oldest_first``.

    Examples
    --------
    >>> import numpy as np
    >>> delay_embed(np.arange(5.0)[:, None], np.array([3, 2]), 1).tolist()
    [[0.0, 0.0], [1.0, 0.0], [2.0, 1.0], [3.0, 3.0], [4.0, 3.0]]
    >>> delay_embed(np.arange(3.0)[:, None], np.array([3]), 1, oldest_first=True).tolist()
    [[0.0, 0.0], [0.0, 1.0], [1.0, 2.0]]
    """
    if n_lags == 0:
        return data
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = np.arange(data.shape[0])
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    blocks = [data] + [data[np.maximum(rows - lag, starts)] for lag in range(1, n_lags + 1)]
    return np.concatenate(blocks[::-1] if oldest_first else blocks, axis=1)


def pad_windows(data: torch.Tensor, windows: list, device) -> tuple:
    """Pad windows ``(start, length)`` of the rows of ``data`` into a batch.

    Returns ``(x, mask)`` of shape (B, T, D) and (B, T), with ``T`` the longest
    window; steps past a window's end repeat its last row and have mask 0.
    """
    starts = torch.tensor([s for s, _ in windows], device=device)
    lens = torch.tensor([n for _, n in windows], device=device)
    t_max = int(lens.max())
    offs = torch.arange(t_max, device=device)
    mask = offs[None, :] < lens[:, None]
    idx = starts[:, None] + torch.minimum(offs[None, :], lens[:, None] - 1)
    return data[idx], mask.to(data.dtype)


def scale_from_variance(var: np.ndarray, mean: np.ndarray,
                        n_samples: int) -> np.ndarray:
    """Standard deviations to divide by, with 1 for (numerically) constant features.

    A feature counts as constant when its variance is within the rounding error
    of a two-pass variance of ``n_samples`` float64 values around ``mean`` (the
    bound used by :class:`sklearn.preprocessing.StandardScaler`). Dividing such
    a feature by its tiny standard deviation would turn rounding noise into
    values of order one, so it is only centred. The one constant-feature rule
    of nldseg: the segmenter's own standardisation and
    :class:`~nldseg.preprocessing.SequenceStandardScaler` use it.

    Parameters
    ----------
    var : ndarray of shape (n_features,)
        Per-feature variance.
    mean : ndarray of shape (n_features,)
        Per-feature mean.
    n_samples : int
        Number of rows the statistics were computed on.

    Returns
    -------
    scale : ndarray of shape (n_features,)
        ``sqrt(var)``, with 1.0 where the feature is constant.
    """
    eps = np.finfo(np.float64).eps
    upper_bound = n_samples * eps * var + (n_samples * mean * eps) ** 2
    scale = np.sqrt(var)
    scale[var <= upper_bound] = 1.0
    return scale


@dataclass(frozen=True)
class IntParam:
    """An integer parameter of at least ``low`` (``None`` allowed if ``none_ok``,
    and the strings of ``words``)."""

    low: int
    none_ok: bool = False
    words: tuple = ()

    def check(self, name: str, value) -> None:
        if (value is None and self.none_ok) or (isinstance(value, str)
                                                and value in self.words):
            return
        what = (f"an integer >= {self.low}" if self.low != 1 else "a positive integer")
        what += " or None" if self.none_ok else ""
        what += "".join(f" or {word!r}" for word in self.words)
        if not isinstance(value, Integral) or isinstance(value, bool):
            raise TypeError(f"{name} must be {what}, got {value!r} of type "
                            f"{type(value).__name__}.")
        if value < self.low:
            raise ValueError(f"{name} must be {what}, got {value!r}.")


@dataclass(frozen=True)
class RealParam:
    """A finite real parameter in ``(low, high)``, ``[low, high)`` etc."""

    low: float = 0.0
    high: float | None = None
    low_closed: bool = False
    high_closed: bool = False

    def check(self, name: str, value) -> None:
        if not isinstance(value, Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a real number, got {value!r} of type "
                            f"{type(value).__name__}.")
        ok = np.isfinite(value) and (value >= self.low if self.low_closed
                                     else value > self.low)
        if self.high is not None:
            ok = ok and (value <= self.high if self.high_closed else value < self.high)
        if not ok:
            if self.high is not None:
                bounds = (f"in {'[' if self.low_closed else '('}{self.low:g}, "
                          f"{self.high:g}{']' if self.high_closed else ')'}")
            elif self.low == 0 and not self.low_closed:
                bounds = "a positive finite number"
            else:
                bounds = f"a finite number >= {self.low:g}"
            raise ValueError(f"{name} must be {bounds}, got {value!r}.")


@dataclass(frozen=True)
class OptionParam:
    """A string parameter taking one of ``options``."""

    options: frozenset

    def check(self, name: str, value) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be one of {sorted(self.options)}, got "
                            f"{value!r} of type {type(value).__name__}.")
        if value not in self.options:
            raise ValueError(f"{name} must be one of {sorted(self.options)}, got "
                             f"{value!r}.")


@dataclass(frozen=True)
class BoolParam:
    """A boolean parameter."""

    def check(self, name: str, value) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {value!r} of type "
                            f"{type(value).__name__}.")


def check_params(params: dict, rules: dict) -> None:
    """Check every parameter in ``rules`` (name -> rule) against ``params``.

    A value of the wrong type raises ``TypeError``, a value out of range
    ``ValueError``; both name the parameter and what it must be.
    """
    for name, rule in rules.items():
        rule.check(name, params[name])


#: numpydoc entries of ``fit``'s sequence arguments, one home for every
#: estimator and transformer (:func:`sequence_docs` puts them in).
FIT_SEQUENCES_DOC = """\
X : array-like of shape (n_samples, n_features), \
        (n_sequences, n_timesteps, n_features) or list of arrays
    Training sequences: one 2-D array (one sequence, or several with
    ``lengths``), a 3-D array, or a list of 2-D arrays of any lengths.
y : None
    Ignored; present for API consistency.
lengths : array-like of int, default=None
    Lengths of the sequences stacked in a 2-D ``X``; must sum to
    ``n_samples``."""

#: The same for a frame-by-frame ``transform`` (``lengths`` only validated).
TRANSFORM_SEQUENCES_DOC = """\
X : array-like of shape (n_samples, n_features), \
        (n_sequences, n_timesteps, n_features) or list of arrays
    Sequences, in any form accepted by :meth:`fit`.
lengths : array-like of int, default=None
    Lengths of the sequences stacked in a 2-D ``X``. Only validated:
    the transform is the same for every time step."""


def sequence_docs(method):
    """Put ``{fit_sequences}`` / ``{transform_sequences}`` into a method's docstring.

    (A method's docstring is indented by 8 spaces; none under ``python -OO``.)
    """
    if method.__doc__:
        for key, text in (("{fit_sequences}", FIT_SEQUENCES_DOC),
                          ("{transform_sequences}", TRANSFORM_SEQUENCES_DOC)):
            method.__doc__ = method.__doc__.replace(key, text.replace("\n", "\n" + " " * 8))
    return method

