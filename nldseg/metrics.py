"""Evaluation metrics for unsupervised segmentation.

Unsupervised segmentation models return state labels whose numbering is
arbitrary: state ``2`` of the model may correspond to state ``0`` of the ground
truth. The functions below find the best one-to-one correspondence between
predicted and true labels with the Hungarian algorithm and score the relabelled
prediction.

Every function accepts labels in three forms:

- a 1-D array-like of shape (n_timesteps,), a single sequence;
- a 2-D array of shape (n_sequences, n_timesteps);
- a list (or tuple) of 1-D array-likes, one per sequence, of any lengths.

The matching is always computed once, on all sequences pooled together.

:data:`segmentation_scorer` and :func:`make_segmentation_scorer` turn
:func:`segmentation_accuracy` into a scorer for
:class:`~sklearn.model_selection.GridSearchCV` and
:func:`~sklearn.model_selection.cross_validate`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

__all__ = [
    "label_mapping",
    "make_segmentation_scorer",
    "match_labels",
    "segmentation_accuracy",
    "segmentation_scorer",
]

_INT64_MAX = np.iinfo(np.int64).max


def _ndim(obj: object) -> int:
    """Number of dimensions of ``obj``, or -1 when it is a ragged nested sequence."""
    try:
        return np.ndim(obj)
    except ValueError:
        return -1


def _as_sequences(y: ArrayLike, name: str) -> tuple[list[np.ndarray], str]:
    """Split ``y`` into a list of raw 1-D arrays and record its input form.

    Returns the list of sequences and the form of ``y``: ``"1d"``, ``"2d"`` or
    ``"list"``.
    """
    if isinstance(y, (list, tuple)):
        if len(y) == 0:
            raise ValueError(f"{name} is empty.")
        ndims = [_ndim(item) for item in y]
        if all(ndim == 0 for ndim in ndims):
            return [np.asarray(y)], "1d"
        if all(ndim == 1 for ndim in ndims):
            return [np.asarray(item) for item in y], "list"
        raise ValueError(
            f"{name} must be a 1-D array-like of labels or a list of 1-D "
            "array-likes (one per sequence); got a list whose items are neither "
            "all scalars nor all 1-D."
        )
    arr = np.asarray(y)
    if arr.ndim == 1:
        return [arr], "1d"
    if arr.ndim == 2:
        return list(arr), "2d"
    raise ValueError(
        f"{name} must be 1-D of shape (n_timesteps,), 2-D of shape "
        f"(n_sequences, n_timesteps) or a list of 1-D arrays; got an array with "
        f"ndim={arr.ndim}."
    )


def _check_label_array(arr: np.ndarray, name: str) -> np.ndarray:
    """Check that ``arr`` holds integer-valued labels and return it as int64."""
    if arr.size == 0:
        raise ValueError(f"{name} is empty.")
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.int64)
    if kind == "u":
        if arr.dtype.itemsize >= 8 and arr.max() > _INT64_MAX:
            raise ValueError(f"{name} contains labels too large for int64.")
        return arr.astype(np.int64)
    if kind == "i":
        return arr.astype(np.int64, copy=False)
    if kind == "f":
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN.")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains infinite values.")
        non_integer = arr != np.round(arr)
        if non_integer.any():
            bad = arr[non_integer][0]
            raise ValueError(
                f"{name} must contain integer labels; got the non-integer value "
                f"{float(bad)}."
            )
        return arr.astype(np.int64)
    raise TypeError(
        f"{name} must contain integer labels; got an array of dtype {arr.dtype}."
    )


def _check_labels(y: ArrayLike, name: str) -> tuple[list[np.ndarray], str]:
    """Validate ``y`` and return its sequences as int64 arrays and its form."""
    sequences, form = _as_sequences(y, name)
    if form == "1d":
        return [_check_label_array(sequences[0], name)], form
    if len(sequences) == 0:
        raise ValueError(f"{name} is empty.")
    return [
        _check_label_array(seq, f"{name}[{i}]") for i, seq in enumerate(sequences)
    ], form


def _check_pair(
    y_true: ArrayLike, y_pred: ArrayLike
) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Validate both label sets and check that their sequences line up."""
    true_seqs, _ = _check_labels(y_true, "y_true")
    pred_seqs, pred_form = _check_labels(y_pred, "y_pred")
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(
            "y_true and y_pred must have the same number of sequences; y_true has "
            f"{len(true_seqs)} and y_pred has {len(pred_seqs)}."
        )
    if len(true_seqs) == 1 and len(true_seqs[0]) != len(pred_seqs[0]):
        raise ValueError(
            "y_true and y_pred must have the same length; y_true has "
            f"{len(true_seqs[0])} time steps and y_pred has {len(pred_seqs[0])}."
        )
    for i, (seq_true, seq_pred) in enumerate(zip(true_seqs, pred_seqs)):
        if len(seq_true) != len(seq_pred):
            raise ValueError(
                f"Sequence {i} has {len(seq_true)} time steps in y_true but "
                f"{len(seq_pred)} in y_pred."
            )
    return true_seqs, pred_seqs, pred_form


def _mapping_arrays(
    y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching on pooled 1-D int64 labels.

    Returns the sorted unique predicted labels and, aligned with them, the true
    label that each one is mapped to.
    """
    true_labels, true_idx = np.unique(y_true, return_inverse=True)
    pred_labels, pred_idx = np.unique(y_pred, return_inverse=True)
    n_true, n_pred = len(true_labels), len(pred_labels)
    contingency = np.bincount(
        true_idx * n_pred + pred_idx, minlength=n_true * n_pred
    ).reshape(n_true, n_pred)
    row, col = linear_sum_assignment(-contingency)
    target = true_labels[np.argmax(contingency, axis=0)]
    target[col] = true_labels[row]
    return pred_labels, target


def label_mapping(y_true: ArrayLike, y_pred: ArrayLike) -> dict[int, int]:
    """Map each predicted label to a true label by Hungarian matching.

    The contingency table between true and predicted labels is built on all
    sequences pooled, and the one-to-one assignment that maximises the number
    of agreeing time steps is found with
    :func:`scipy.optimize.linear_sum_assignment`.

    Parameters
    ----------
    y_true : array-like of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of array-like of shape (n_timesteps_i,)
        Ground-truth integer state labels.

    y_pred : array-like of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of array-like of shape (n_timesteps_i,)
        Predicted integer state labels, laid out like `y_true`.

    Returns
    -------
    mapping : dict of int to int
        ``{pred_label: true_label}`` for every label that occurs in `y_pred`.

    See Also
    --------
    match_labels : Relabel `y_pred` with this mapping.
    segmentation_accuracy : Accuracy after matching.

    Notes
    -----
    When there are more predicted labels than true labels, the Hungarian
    algorithm matches only as many predicted labels as there are true labels;
    every unmatched predicted label is mapped to the true label it co-occurs
    with most often (the smallest such label on ties), so several predicted
    labels may share a true label. When there are fewer predicted labels than
    true labels, some true labels receive no predicted label.

    Examples
    --------
    >>> from nldseg.metrics import label_mapping
    >>> label_mapping([0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 0, 0])
    {0: 2, 1: 0, 2: 1}
    """
    true_seqs, pred_seqs, _ = _check_pair(y_true, y_pred)
    pred_labels, target = _mapping_arrays(
        np.concatenate(true_seqs), np.concatenate(pred_seqs)
    )
    return {int(p): int(t) for p, t in zip(pred_labels, target)}


def _match_sequences(
    true_seqs: list[np.ndarray], pred_seqs: list[np.ndarray]
) -> list[np.ndarray]:
    """Relabel validated predicted sequences into the true label space."""
    pooled_pred = np.concatenate(pred_seqs)
    pred_labels, target = _mapping_arrays(np.concatenate(true_seqs), pooled_pred)
    matched = target[np.searchsorted(pred_labels, pooled_pred)]
    splits = np.cumsum([len(seq) for seq in pred_seqs])[:-1]
    return np.split(matched, splits)


def match_labels(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray | list[np.ndarray]:
    """Relabel predicted states into the true label space.

    Predicted labels are matched to true labels by the Hungarian algorithm on
    the contingency table of all sequences pooled (see :func:`label_mapping`),
    then every predicted label is replaced by its matched true label.

    Parameters
    ----------
    y_true : array-like of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of array-like of shape (n_timesteps_i,)
        Ground-truth integer state labels. Labels may be any integers.

    y_pred : array-like of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of array-like of shape (n_timesteps_i,)
        Predicted integer state labels, with the same number of sequences and
        the same sequence lengths as `y_true`.

    Returns
    -------
    y_matched : ndarray of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of ndarray of shape (n_timesteps_i,)
        `y_pred` relabelled into the label space of `y_true`, as int64. The
        output has the form of `y_pred`: a 1-D array for a 1-D input, a 2-D
        array for a 2-D array input and a list of 1-D arrays for a list input.

    See Also
    --------
    label_mapping : The ``{pred_label: true_label}`` mapping used here.
    segmentation_accuracy : Fraction of time steps labelled correctly after
        matching.

    Notes
    -----
    When there are more predicted states than true states, the extra predicted
    states (those left unmatched by the one-to-one assignment) are mapped to the
    true state they co-occur with most often, so an over-segmented prediction
    is not penalised for splitting a true state in two. When there are fewer
    predicted states, some true states are never predicted.

    Examples
    --------
    >>> import numpy as np
    >>> from nldseg.metrics import match_labels
    >>> y_true = np.array([0, 0, 1, 1, 2, 2])
    >>> y_pred = (y_true + 1) % 3
    >>> match_labels(y_true, y_pred)
    array([0, 0, 1, 1, 2, 2])
    >>> matched = match_labels([[0, 0, 1], [1, 0, 0]], [[5, 5, 7], [7, 5, 5]])
    >>> matched
    [array([0, 0, 1]), array([1, 0, 0])]
    """
    true_seqs, pred_seqs, pred_form = _check_pair(y_true, y_pred)
    matched = _match_sequences(true_seqs, pred_seqs)
    if pred_form == "1d":
        return matched[0]
    if pred_form == "2d":
        return np.stack(matched)
    return matched


def segmentation_accuracy(
    y_true: ArrayLike, y_pred: ArrayLike, *, per_sequence: bool = False
) -> float | np.ndarray:
    """Fraction of time steps labelled correctly after Hungarian matching.

    The predicted labels are relabelled once with :func:`match_labels`, on all
    sequences pooled, and compared with the true labels.

    Parameters
    ----------
    y_true : array-like of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of array-like of shape (n_timesteps_i,)
        Ground-truth integer state labels.

    y_pred : array-like of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of array-like of shape (n_timesteps_i,)
        Predicted integer state labels, with the same number of sequences and
        the same sequence lengths as `y_true`.

    per_sequence : bool, default=False
        If False, return the accuracy over all time steps of all sequences. If
        True, return the accuracy of each sequence separately, still computed
        with the single pooled matching, e.g. to report a mean and a standard
        deviation over sequences.

    Returns
    -------
    accuracy : float or ndarray of shape (n_sequences,)
        The pooled accuracy in ``[0, 1]`` if `per_sequence` is False, otherwise
        the accuracy of each sequence. A single 1-D sequence counts as one
        sequence, so ``per_sequence=True`` then gives an array of length 1.

    See Also
    --------
    match_labels : Relabel predicted states into the true label space.

    Notes
    -----
    With sequences of different lengths the pooled accuracy weights every time
    step equally, so it differs in general from the mean of the per-sequence
    accuracies.

    Examples
    --------
    >>> from nldseg.metrics import segmentation_accuracy
    >>> y_true = [[0, 0, 1, 1], [1, 1, 0, 0]]
    >>> y_pred = [[1, 1, 0, 0], [0, 0, 0, 0]]
    >>> print(f"{segmentation_accuracy(y_true, y_pred):.2f}")
    0.75
    >>> segmentation_accuracy(y_true, y_pred, per_sequence=True).shape
    (2,)
    """
    if not isinstance(per_sequence, (bool, np.bool_)):
        raise TypeError(f"per_sequence must be a bool; got {type(per_sequence).__name__}.")
    true_seqs, pred_seqs, _ = _check_pair(y_true, y_pred)
    matched = _match_sequences(true_seqs, pred_seqs)
    if per_sequence:
        return np.array(
            [np.mean(m == t) for m, t in zip(matched, true_seqs)], dtype=np.float64
        )
    n_correct = sum(int(np.count_nonzero(m == t)) for m, t in zip(matched, true_seqs))
    n_total = sum(len(t) for t in true_seqs)
    return float(n_correct / n_total)


class _SegmentationScorer:
    """Callable ``(estimator, X, y_true) -> float``: matched accuracy of ``predict(X)``.

    Made by :func:`make_segmentation_scorer`; see there.
    """

    def __init__(self, per_sequence: bool = False) -> None:
        self.per_sequence = per_sequence

    def __call__(
        self, estimator: object, X: object, y_true: ArrayLike, *,
        lengths: ArrayLike | None = None,
    ) -> float:
        if y_true is None:
            raise ValueError(
                "The segmentation scorer needs the true state labels y; pass y to "
                "fit of the search (e.g. GridSearchCV(...).fit(X, y)), or use the "
                "estimator's own unsupervised score (scoring=None)."
            )
        if lengths is None:
            y_pred = estimator.predict(X)
        else:
            y_pred = estimator.predict(X, lengths=lengths)
        if not self.per_sequence:
            return segmentation_accuracy(y_true, y_pred)
        if lengths is not None:
            # A 2-D X with lengths gives 1-D labels of all sequences stacked.
            bounds = np.cumsum(np.asarray(lengths, dtype=np.int64))[:-1]
            true_seqs, form = _as_sequences(y_true, "y_true")
            if form == "1d":
                y_true = np.split(true_seqs[0], bounds)
            y_pred = np.split(np.asarray(y_pred), bounds)
        per_seq = segmentation_accuracy(y_true, y_pred, per_sequence=True)
        return float(np.mean(per_seq))

    def __repr__(self) -> str:
        return f"make_segmentation_scorer(per_sequence={self.per_sequence})"


def make_segmentation_scorer(*, per_sequence: bool = False) -> _SegmentationScorer:
    """Make a scorer of Hungarian-matched segmentation accuracy.

    The scorer is a callable ``scorer(estimator, X, y_true, *, lengths=None)``
    that labels ``X`` with ``estimator.predict`` and returns
    :func:`segmentation_accuracy` of the labels against `y_true`, so it can be
    passed as ``scoring=`` to :class:`~sklearn.model_selection.GridSearchCV`,
    :func:`~sklearn.model_selection.cross_val_score` and
    :func:`~sklearn.model_selection.cross_validate`. The label matching is
    computed on each held-out fold as a whole, so the arbitrary numbering of
    the states never costs accuracy. Higher is better.

    Parameters
    ----------
    per_sequence : bool, default=False
        If False, score the fraction of all held-out time steps labelled
        correctly (every step weighs the same). If True, score the mean of the
        per-sequence accuracies (every sequence weighs the same, whatever its
        length); the matching is still pooled over the fold.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y_true, *, lengths=None) -> float``. ``X`` is
        any input the estimator's ``predict`` accepts; `y_true` holds the true
        state of every time step, laid out like the predicted labels: a list
        of 1-D arrays for a list ``X``, a 2-D array
        ``(n_sequences, n_timesteps)`` for a 3-D ``X``, a 1-D array for a 2-D
        ``X``. ``lengths`` is passed on to ``predict`` for a 2-D ``X`` holding
        several sequences.

    Raises
    ------
    TypeError
        If `per_sequence` is not a bool.

    See Also
    --------
    segmentation_scorer : The scorer with ``per_sequence=False``.
    segmentation_accuracy : The metric.

    Notes
    -----
    Cross-validation must split whole sequences, so search over a list of
    sequences or a 3-D array (whose first axis indexes sequences), with `y_true`
    in the matching form. A 2-D ``X`` of sequences stacked with ``lengths``
    cannot be split by :class:`~sklearn.model_selection.KFold` without cutting
    sequences; convert it first with ``np.split(X, np.cumsum(lengths)[:-1])``.

    Examples
    --------
    >>> from sklearn.model_selection import cross_val_score
    >>> from nldseg import LangevinSegmenter
    >>> from nldseg.datasets import make_markov_chain_sequences
    >>> from nldseg.metrics import make_segmentation_scorer
    >>> X, y = make_markov_chain_sequences(12, 40, n_features=4, random_state=0)
    >>> seg = LangevinSegmenter(hidden_size=8, context_size=4, max_iter=2,
    ...                         n_iter_no_change=2, kl_warmup=0, random_state=0)
    >>> scorer = make_segmentation_scorer(per_sequence=True)
    >>> scorer
    make_segmentation_scorer(per_sequence=True)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     scores = cross_val_score(seg, X, y, scoring=scorer, cv=2)
    >>> scores.shape
    (2,)
    """
    if not isinstance(per_sequence, (bool, np.bool_)):
        raise TypeError(f"per_sequence must be a bool; got {type(per_sequence).__name__}.")
    return _SegmentationScorer(per_sequence=bool(per_sequence))


segmentation_scorer = make_segmentation_scorer()
"""Scorer of pooled Hungarian-matched accuracy, for ``scoring=`` in model selection.

``segmentation_scorer(estimator, X, y_true, *, lengths=None)`` labels ``X`` with
``estimator.predict`` and returns :func:`segmentation_accuracy` against
`y_true` (see :func:`make_segmentation_scorer`). Use it as
``GridSearchCV(LangevinSegmenter(), param_grid, scoring=segmentation_scorer)``
and fit the search with the true labels: ``search.fit(X, y)``.
"""
