"""Evaluation metrics for unsupervised segmentation.

Unsupervised segmentation models return state labels whose numbering is
arbitrary: state ``2`` of the model may correspond to state ``0`` of the ground
truth. The functions below find the best one-to-one correspondence between
predicted and true labels with the Hungarian algorithm and score the relabelled
prediction. By default a predicted label left without a partner (there are more
predicted than true labels) counts as wrong, so that splitting the data into
more states than there are never raises the score; ``matching="many_to_one"``
gives the lenient reading, in which every such label takes the true label it
co-occurs with most.

Every function accepts labels in three forms:

- a 1-D array-like of shape (n_timesteps,), a single sequence;
- a 2-D array of shape (n_sequences, n_timesteps);
- a list (or tuple) of 1-D array-likes, one per sequence, of any lengths.

The matching is always computed once, on all sequences pooled together.
:func:`n_label_changes` counts the label switches of a labelling (its flicker).

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
    "n_label_changes",
    "segmentation_accuracy",
    "segmentation_scorer",
]

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_MATCHINGS = frozenset({"one_to_one", "many_to_one"})


def _check_matching(matching: object) -> str:
    """Check that ``matching`` names a matching rule and return it."""
    if not isinstance(matching, str) or matching not in _MATCHINGS:
        raise ValueError(
            f"matching must be one of {sorted(_MATCHINGS)}; got {matching!r}."
        )
    return matching


def _ndim(obj: object) -> int:
    """Number of dimensions of ``obj``, or -1 when it is a ragged nested sequence."""
    try:
        return np.ndim(obj)
    except ValueError:
        return -1


def _as_sequences(y: ArrayLike, name: str) -> tuple[list[np.ndarray], str]:
    """Split ``y`` into a list of raw 1-D arrays and record its input form.

    Returns the list of sequences and the form of ``y`` in the vocabulary of
    :data:`nldseg._validation.FORMS`: ``"stacked"`` (1-D), ``"batch"`` (2-D)
    or ``"list"``.
    """
    if isinstance(y, (list, tuple)):
        if len(y) == 0:
            raise ValueError(f"{name} is empty.")
        ndims = [_ndim(item) for item in y]
        if all(ndim == 0 for ndim in ndims):
            return [np.asarray(y)], "stacked"
        if all(ndim == 1 for ndim in ndims):
            return [np.asarray(item) for item in y], "list"
        raise ValueError(
            f"{name} must be a 1-D array-like of labels or a list of 1-D "
            "array-likes (one per sequence); got a list whose items are neither "
            "all scalars nor all 1-D."
        )
    arr = np.asarray(y)
    if arr.ndim == 1:
        return [arr], "stacked"
    if arr.ndim == 2:
        return list(arr), "batch"
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
    if form == "stacked":
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


def _unmatched_label(true_labels: np.ndarray) -> int:
    """Label for predicted labels left unmatched: ``-1``, or below every true label.

    ``true_labels`` is sorted. The value is ``-1`` when no true label is
    negative, otherwise one less than the smallest true label, so it never
    equals a true label and an unmatched step never counts as correct.
    """
    smallest = int(true_labels[0])
    if smallest >= 0:
        return -1
    if smallest == _INT64_MIN:
        raise ValueError(
            "y_true contains the smallest int64 label, so no integer is left to "
            "mark unmatched predicted labels; use matching='many_to_one' or "
            "relabel y_true."
        )
    return smallest - 1


def _mapping_arrays(
    y_true: np.ndarray, y_pred: np.ndarray, matching: str
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching on pooled 1-D int64 labels.

    Returns the sorted unique predicted labels and, aligned with them, the true
    label that each one is mapped to. ``row, col = linear_sum_assignment(-C)``
    on the contingency table ``C`` (true labels by predicted labels) maps
    predicted label ``col[i]`` to true label ``row[i]``. Predicted labels left
    unmatched (only when there are more predicted than true labels) get
    :func:`_unmatched_label` with ``matching="one_to_one"``, and the true label
    they co-occur with most (the smallest on ties) with ``"many_to_one"``.
    """
    true_labels, true_idx = np.unique(y_true, return_inverse=True)
    pred_labels, pred_idx = np.unique(y_pred, return_inverse=True)
    n_true, n_pred = len(true_labels), len(pred_labels)
    contingency = np.bincount(
        true_idx * n_pred + pred_idx, minlength=n_true * n_pred
    ).reshape(n_true, n_pred)
    row, col = linear_sum_assignment(-contingency)
    if matching == "many_to_one":
        target = true_labels[np.argmax(contingency, axis=0)]
    else:
        target = np.empty(n_pred, dtype=np.int64)
        if len(col) < n_pred:
            target[:] = _unmatched_label(true_labels)
    target[col] = true_labels[row]
    return pred_labels, target


def label_mapping(
    y_true: ArrayLike, y_pred: ArrayLike, *, matching: str = "one_to_one"
) -> dict[int, int]:
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

    matching : {"one_to_one", "many_to_one"}, default="one_to_one"
        What a predicted label left unmatched by the one-to-one assignment
        (there are more predicted than true labels) is mapped to. With
        ``"one_to_one"``, to the unmatched marker: ``-1``, or one less than
        the smallest true label when `y_true` has negative labels, a value
        that is never a true label. With ``"many_to_one"``, to the true label
        it co-occurs with most often (the smallest such label on ties).

    Returns
    -------
    mapping : dict of int to int
        ``{pred_label: true_label}`` for every label that occurs in `y_pred`;
        unmatched labels map to the unmatched marker with
        ``matching="one_to_one"``.

    Raises
    ------
    ValueError
        If `matching` is not one of the allowed values, or if the labels are
        invalid (see :func:`match_labels`).

    See Also
    --------
    match_labels : Relabel `y_pred` with this mapping.
    segmentation_accuracy : Accuracy after matching.

    Notes
    -----
    With ``matching="one_to_one"`` at most one predicted label is mapped to
    each true label; with ``"many_to_one"`` several predicted labels may share
    a true label. When there are fewer predicted labels than true labels, every
    predicted label is matched and some true labels receive none; both rules
    then agree.

    Examples
    --------
    >>> from nldseg.metrics import label_mapping
    >>> label_mapping([0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 0, 0])
    {0: 2, 1: 0, 2: 1}

    A fourth predicted label is left unmatched:

    >>> label_mapping([0, 0, 0, 1, 1, 1], [5, 5, 6, 7, 7, 7])
    {5: 0, 6: -1, 7: 1}
    >>> label_mapping([0, 0, 0, 1, 1, 1], [5, 5, 6, 7, 7, 7], matching="many_to_one")
    {5: 0, 6: 0, 7: 1}
    """
    matching = _check_matching(matching)
    true_seqs, pred_seqs, _ = _check_pair(y_true, y_pred)
    pred_labels, target = _mapping_arrays(
        np.concatenate(true_seqs), np.concatenate(pred_seqs), matching
    )
    return {int(p): int(t) for p, t in zip(pred_labels, target)}


def _match_sequences(
    true_seqs: list[np.ndarray], pred_seqs: list[np.ndarray], matching: str
) -> list[np.ndarray]:
    """Relabel validated predicted sequences into the true label space."""
    pooled_pred = np.concatenate(pred_seqs)
    pred_labels, target = _mapping_arrays(
        np.concatenate(true_seqs), pooled_pred, matching
    )
    matched = target[np.searchsorted(pred_labels, pooled_pred)]
    splits = np.cumsum([len(seq) for seq in pred_seqs])[:-1]
    return np.split(matched, splits)


def match_labels(
    y_true: ArrayLike, y_pred: ArrayLike, *, matching: str = "one_to_one"
) -> np.ndarray | list[np.ndarray]:
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

    matching : {"one_to_one", "many_to_one"}, default="one_to_one"
        With ``"one_to_one"``, steps of a predicted label left unmatched (there
        are more predicted than true labels) get the unmatched marker: ``-1``,
        or one less than the smallest true label when `y_true` has negative
        labels, never a true label. With ``"many_to_one"``, they get the true
        label their predicted label co-occurs with most often.

    Returns
    -------
    y_matched : ndarray of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of ndarray of shape (n_timesteps_i,)
        `y_pred` relabelled into the label space of `y_true`, as int64. The
        output has the form of `y_pred`: a 1-D array for a 1-D input, a 2-D
        array for a 2-D array input and a list of 1-D arrays for a list input.

    Raises
    ------
    ValueError
        If `matching` is not one of the allowed values, if the labels are not
        integer-valued, or if `y_true` and `y_pred` do not line up.

    See Also
    --------
    label_mapping : The ``{pred_label: true_label}`` mapping used here.
    segmentation_accuracy : Fraction of time steps labelled correctly after
        matching.

    Notes
    -----
    The default one-to-one matching does not reward over-segmentation: with
    ``"many_to_one"``, giving every time step its own label would reproduce
    `y_true` exactly. When there are fewer predicted states than true states,
    some true states are never predicted, under either rule.

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

    Splitting true state 0 in two leaves one half unmatched:

    >>> match_labels([0, 0, 0, 0, 1, 1], [3, 3, 3, 4, 5, 5])
    array([ 0,  0,  0, -1,  1,  1])
    >>> match_labels([0, 0, 0, 0, 1, 1], [3, 3, 3, 4, 5, 5], matching="many_to_one")
    array([0, 0, 0, 0, 1, 1])
    """
    matching = _check_matching(matching)
    true_seqs, pred_seqs, pred_form = _check_pair(y_true, y_pred)
    matched = _match_sequences(true_seqs, pred_seqs, matching)
    if pred_form == "stacked":
        return matched[0]
    if pred_form == "batch":
        return np.stack(matched)
    return matched


def segmentation_accuracy(
    y_true: ArrayLike, y_pred: ArrayLike, *, per_sequence: bool = False,
    matching: str = "one_to_one",
) -> float | np.ndarray:
    """Fraction of time steps labelled correctly after Hungarian matching.

    The predicted labels are relabelled once with :func:`match_labels`, on all
    sequences pooled, and compared with the true labels. By default the
    matching is one-to-one: the steps of a predicted label left without a
    partner count as wrong.

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

    matching : {"one_to_one", "many_to_one"}, default="one_to_one"
        With ``"one_to_one"``, each true label is matched to at most one
        predicted label, and the steps of the predicted labels left over (when
        there are more predicted than true labels) are wrong. With
        ``"many_to_one"``, each left-over predicted label counts as the true
        label it co-occurs with most, which rewards over-segmentation (see
        Notes); use it only to reproduce figures computed that way.

    Returns
    -------
    accuracy : float or ndarray of shape (n_sequences,)
        The pooled accuracy in ``[0, 1]`` if `per_sequence` is False, otherwise
        the accuracy of each sequence. A single 1-D sequence counts as one
        sequence, so ``per_sequence=True`` then gives an array of length 1.

    Raises
    ------
    ValueError
        If `matching` is not one of the allowed values, or if the labels are
        invalid (see :func:`match_labels`).
    TypeError
        If `per_sequence` is not a bool.

    See Also
    --------
    match_labels : Relabel predicted states into the true label space.
    n_label_changes : Number of label switches, to report flicker.

    Notes
    -----
    With sequences of different lengths the pooled accuracy weights every time
    step equally, so it differs in general from the mean of the per-sequence
    accuracies.

    One-to-one matching makes more states no free gain: a labelling with
    ``k`` predicted and ``m`` true states scores the fraction of steps covered
    by its best ``min(k, m)`` matched pairs. Under ``"many_to_one"`` a label
    per time step scores 1.0 and many random labels score better than few.

    Examples
    --------
    >>> import numpy as np
    >>> from nldseg.metrics import segmentation_accuracy
    >>> y_true = [[0, 0, 1, 1], [1, 1, 0, 0]]
    >>> y_pred = [[1, 1, 0, 0], [0, 0, 0, 0]]
    >>> print(f"{segmentation_accuracy(y_true, y_pred):.2f}")
    0.75
    >>> segmentation_accuracy(y_true, y_pred, per_sequence=True).shape
    (2,)

    A fourth predicted state is unmatched, so its step is wrong:

    >>> print(f"{segmentation_accuracy([0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 0, 3]):.3f}")
    0.833
    >>> segmentation_accuracy([0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 0, 3],
    ...                       matching="many_to_one")
    1.0

    A label per step scores 3 / 300 here, not 1.0:

    >>> y_true = np.repeat([0, 1, 2], 100)
    >>> segmentation_accuracy(y_true, np.arange(300))
    0.01
    >>> segmentation_accuracy(y_true, np.arange(300), matching="many_to_one")
    1.0
    """
    if not isinstance(per_sequence, (bool, np.bool_)):
        raise TypeError(f"per_sequence must be a bool; got {type(per_sequence).__name__}.")
    matching = _check_matching(matching)
    true_seqs, pred_seqs, _ = _check_pair(y_true, y_pred)
    matched = _match_sequences(true_seqs, pred_seqs, matching)
    if per_sequence:
        return np.array(
            [np.mean(m == t) for m, t in zip(matched, true_seqs)], dtype=np.float64
        )
    n_correct = sum(int(np.count_nonzero(m == t)) for m, t in zip(matched, true_seqs))
    n_total = sum(len(t) for t in true_seqs)
    return float(n_correct / n_total)


def n_label_changes(y: ArrayLike) -> int:
    """Number of times the label changes between consecutive time steps.

    Counted within each sequence (never across the boundary between two
    sequences) and summed over the sequences. A segmentation that flickers
    between states has many more changes than the true labels.

    Parameters
    ----------
    y : array-like of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of array-like of shape (n_timesteps_i,)
        Integer state labels, true or predicted.

    Returns
    -------
    n_changes : int
        The number of steps ``t >= 1`` whose label differs from that of step
        ``t - 1`` of the same sequence, summed over all sequences.

    Raises
    ------
    ValueError
        If `y` is empty, holds non-integer values or is not one of the accepted
        forms.
    TypeError
        If `y` does not hold numbers.

    See Also
    --------
    segmentation_accuracy : Accuracy after matching.

    Examples
    --------
    >>> from nldseg.metrics import n_label_changes
    >>> n_label_changes([0, 0, 1, 1, 0])
    2
    >>> n_label_changes([[0, 1, 1], [2, 2, 2]])
    1
    >>> n_label_changes([[0, 1, 0, 1], [5], [3, 3]])
    3
    """
    sequences, _ = _check_labels(y, "y")
    return int(sum(np.count_nonzero(seq[1:] != seq[:-1]) for seq in sequences))


class _SegmentationScorer:
    """Callable ``(estimator, X, y_true) -> float``: matched accuracy of ``predict(X)``.

    Made by :func:`make_segmentation_scorer`; see there.
    """

    def __init__(self, per_sequence: bool = False,
                 matching: str = "one_to_one") -> None:
        self.per_sequence = per_sequence
        self.matching = matching

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
            return segmentation_accuracy(y_true, y_pred, matching=self.matching)
        if lengths is not None:
            # A 2-D X with lengths gives 1-D labels of all sequences stacked.
            bounds = np.cumsum(np.asarray(lengths, dtype=np.int64))[:-1]
            true_seqs, form = _as_sequences(y_true, "y_true")
            if form == "stacked":
                y_true = np.split(true_seqs[0], bounds)
            y_pred = np.split(np.asarray(y_pred), bounds)
        per_seq = segmentation_accuracy(y_true, y_pred, per_sequence=True,
                                        matching=self.matching)
        return float(np.mean(per_seq))

    def __repr__(self) -> str:
        return (f"make_segmentation_scorer(per_sequence={self.per_sequence}, "
                f"matching={self.matching!r})")


def make_segmentation_scorer(
    *, per_sequence: bool = False, matching: str = "one_to_one"
) -> _SegmentationScorer:
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

    matching : {"one_to_one", "many_to_one"}, default="one_to_one"
        Passed on to :func:`segmentation_accuracy`. With the default, the steps
        of predicted states left unmatched (more predicted than true states)
        are wrong, so a search cannot gain by choosing models with more states.
        ``"many_to_one"`` maps each of them to the true state it co-occurs
        with most, which favours over-segmenting models.

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
    ValueError
        If `matching` is not one of the allowed values.

    See Also
    --------
    segmentation_scorer : The scorer with ``per_sequence=False`` and one-to-one
        matching.
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
    make_segmentation_scorer(per_sequence=True, matching='one_to_one')
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     scores = cross_val_score(seg, X, y, scoring=scorer, cv=2)
    >>> scores.shape
    (2,)
    """
    if not isinstance(per_sequence, (bool, np.bool_)):
        raise TypeError(f"per_sequence must be a bool; got {type(per_sequence).__name__}.")
    matching = _check_matching(matching)
    return _SegmentationScorer(per_sequence=bool(per_sequence), matching=matching)


segmentation_scorer = make_segmentation_scorer()
"""Scorer of pooled Hungarian-matched accuracy, for ``scoring=`` in model selection.

``segmentation_scorer(estimator, X, y_true, *, lengths=None)`` labels ``X`` with
``estimator.predict`` and returns :func:`segmentation_accuracy` against
`y_true` with one-to-one matching (see :func:`make_segmentation_scorer`). Use
it as ``GridSearchCV(LangevinSegmenter(), param_grid, scoring=segmentation_scorer)``
and fit the search with the true labels: ``search.fit(X, y)``.
"""
