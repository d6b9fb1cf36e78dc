r"""How well a segmentation explains its data: a switching AR(1) model fitted to it.

``n_lags="auto"`` trains models on single frames and on frames with one lag
and compares them by held-out ELBO. The ELBO judges the *observations'*
density; a model that reads the previous observation can win it by
predicting each step from the last one, while its latent path carries
little of the state (a smooth recording). Whether the wells of the winner
are the better *states* is asked here instead, of the labels alone: each
candidate's labels of the training steps fit one model of the same form,

.. math::

    x_t = b_k + A_k x_{t-1} + \varepsilon_t, \quad
    \varepsilon_t \sim \mathcal N(0, \Sigma_k), \quad k = s_t, \qquad
    P(s_t = l \mid s_{t-1} = k) = T_{kl},

whose log-likelihood per step, under that candidate's labels, on steps the
fit did not see is the score. The form reads one lag whatever the candidate
read, so that a segmentation into the states the data switch between scores
higher whether those states differ in level (a single frame tells them) or
in dynamics (how a frame follows the last); cutting an oscillation by phase
into short-lived pieces pays for its many changes in ``T`` and for pieces
whose dynamics mix several states.

:func:`fit_switching_ar` fits it (ridge regression per state, covariances
shrunk towards the pooled one, transitions with one pseudo-count each);
:func:`segment_log_likelihoods` scores labelled steps under it, segment by
segment, and :func:`segmentation_scores` cross-fits: every fold of segments
scored under the model fitted to the others, so that every step counts
(a single recording of 4,000 steps holds out only 4 blocks of 100, too few
to judge a gain by) and none is scored by a fit that saw it. The fits of
all the folds come from one pass over the steps: the sums a fit needs
(:class:`_Statistics`) add over steps, and the others' are the whole's
minus the fold's. They take the rows (standardised observations), the
labels and the segments ``(start, length)`` of those rows to use: pairs of
consecutive rows within a segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nldseg._kinetics import row_stochastic, transition_counts

#: Ridge penalty on the regression weights (of standardised rows).
RIDGE = 1.0
#: :func:`segmentation_scores` cross-fits at most this many folds.
MAX_FOLDS = 20


@dataclass
class SwitchingAR:
    """A fitted switching AR(1) model.

    ``weights`` (n_states, 1 + D, D): the rows of ``[1, x_{t-1}]`` mapped to
    the mean of ``x_t``; ``scale_trils`` (n_states, D, D): the noise's
    Cholesky factors; ``log_transitions`` (n_states, n_states).
    """

    weights: np.ndarray
    scale_trils: np.ndarray
    log_transitions: np.ndarray


def _pairs(rows: np.ndarray, labels: np.ndarray, segments: list) -> tuple:
    """Design ``[1, x_{t-1}]``, targets ``x_t``, and ``s_{t-1}, s_t`` within segments."""
    index = np.concatenate([np.arange(a + 1, a + n) for a, n in segments] or
                           [np.zeros(0, dtype=np.int64)]).astype(np.int64)
    design = np.hstack([np.ones((len(index), 1)), rows[index - 1]])
    return design, rows[index], labels[index - 1], labels[index]


@dataclass
class _Statistics:
    """What a fit needs of labelled steps, per state: sums that add over steps.

    ``gram`` (K, 1 + D, 1 + D) and ``cross`` (K, 1 + D, D) are each state's
    ``X^T X`` and ``X^T Y`` (design ``X``, targets ``Y``), ``square`` (K, D,
    D) its ``Y^T Y``, ``steps`` (K,) its count; ``transitions`` (K, K) the
    consecutive labels' counts. The statistics of all steps but a fold's are
    the whole's minus the fold's.
    """

    gram: np.ndarray
    cross: np.ndarray
    square: np.ndarray
    steps: np.ndarray
    transitions: np.ndarray

    def __sub__(self, other: _Statistics) -> _Statistics:
        return _Statistics(*(getattr(self, f) - getattr(other, f)
                             for f in self.__dataclass_fields__))


def _statistics(rows: np.ndarray, labels: np.ndarray, segments: list,
                n_states: int) -> _Statistics:
    design, target, _, after = _pairs(rows, labels, segments)
    d = rows.shape[1]
    gram, cross = np.zeros((n_states, d + 1, d + 1)), np.zeros((n_states, d + 1, d))
    square, steps = np.zeros((n_states, d, d)), np.zeros(n_states)
    for k in range(n_states):
        mine = after == k
        gram[k] = design[mine].T @ design[mine]
        cross[k] = design[mine].T @ target[mine]
        square[k] = target[mine].T @ target[mine]
        steps[k] = mine.sum()
    transitions = sum((transition_counts(labels[a:a + n][None], n_states, 1)
                       for a, n in segments if n > 1), np.zeros((n_states, n_states)))
    return _Statistics(gram, cross, square, steps, transitions)


def _ridge(gram: np.ndarray, cross: np.ndarray, square: np.ndarray) -> tuple:
    """Ridge weights (1 + D, D) and the residuals' sum of squares (D, D)."""
    weights = np.linalg.solve(gram + RIDGE * np.eye(len(gram)), cross)
    residual = square - weights.T @ cross - cross.T @ weights + weights.T @ gram @ weights
    return weights, residual


def _fit(stats: _Statistics) -> SwitchingAR:
    """:func:`fit_switching_ar` from the steps' :class:`_Statistics`."""
    n_states, d = stats.square.shape[:2]
    n = stats.steps.sum()
    pooled_w, pooled_ss = _ridge(stats.gram.sum(0), stats.cross.sum(0), stats.square.sum(0))
    floor = 1e-6 * max(np.trace(pooled_ss) / max(n, 1) / d, 1e-12)
    pooled_cov = pooled_ss / max(n, 1) + floor * np.eye(d)
    weights = np.empty((n_states, d + 1, d))
    trils = np.empty((n_states, d, d))
    for k in range(n_states):
        mine = round(stats.steps[k])  # After subtracting a fold: 0 up to rounding.
        if mine:
            weights[k], ss = _ridge(stats.gram[k], stats.cross[k], stats.square[k])
        else:
            weights[k], ss = pooled_w, np.zeros((d, d))
        cov = (ss + (d + 2) * pooled_cov) / (mine + d + 2)
        trils[k] = np.linalg.cholesky(0.5 * (cov + cov.T))
    return SwitchingAR(weights, trils, np.log(row_stochastic(stats.transitions + 1.0)))


def fit_switching_ar(rows: np.ndarray, labels: np.ndarray, segments: list,
                     n_states: int) -> SwitchingAR:
    """Fit a switching AR(1) model to labelled rows (module docstring).

    Each state's weights are a ridge regression (:data:`RIDGE`) on its own
    steps; its noise covariance is its residuals' shrunk towards the pooled
    fit's as if that one had been seen on ``D + 2`` more steps, so that a
    state with few steps (or none: then the pooled fit) stays well posed.
    The transitions count the segments' consecutive labels plus one each.

    Parameters
    ----------
    rows : ndarray of shape (n_rows, n_features)
        Standardised observations, sequences end to end.
    labels : ndarray of shape (n_rows,)
        A state in ``0..n_states-1`` for every row.
    segments : list of (int, int)
        ``(start, length)`` of the runs of rows whose consecutive pairs are
        used; a pair never spans two segments.
    n_states : int

    Returns
    -------
    SwitchingAR
    """
    return _fit(_statistics(rows, labels, segments, n_states))


def segment_log_likelihoods(model: SwitchingAR, rows: np.ndarray, labels: np.ndarray,
                            segments: list) -> tuple:
    """Summed log-likelihood of each segment's labelled steps, and their count.

    Each step after the first of a segment counts ``log N(x_t; b_k + A_k
    x_{t-1}, Sigma_k) + log T[s_{t-1}, s_t]``.

    Parameters
    ----------
    model : SwitchingAR
        From :func:`fit_switching_ar`.
    rows, labels, segments
        As for :func:`fit_switching_ar`, standardised alike.

    Returns
    -------
    sums : ndarray of shape (n_segments,)
    steps : ndarray of shape (n_segments,)
        ``length - 1`` of each segment (0 for a single step).
    """
    design, target, before, after = _pairs(rows, labels, segments)
    d = rows.shape[1]
    mean = np.einsum("ni,nij->nj", design, model.weights[after])
    trils = model.scale_trils[after]
    white = np.linalg.solve(trils, (target - mean)[..., None])[..., 0]
    log_det = np.log(np.diagonal(trils, axis1=1, axis2=2)).sum(1)
    log_p = (-0.5 * (white * white).sum(1) - log_det - 0.5 * d * np.log(2 * np.pi)
             + model.log_transitions[before, after])
    steps = np.array([max(n - 1, 0) for _, n in segments], dtype=np.int64)
    owner = np.repeat(np.arange(len(segments)), steps)
    return np.bincount(owner, weights=log_p, minlength=len(segments)), steps


def segmentation_scores(rows: np.ndarray, labels: np.ndarray, n_states: int,
                        segments: list) -> tuple:
    """How well ``labels`` explain the rows, cross-fitted fold by fold.

    The segments are dealt round robin to at most :data:`MAX_FOLDS` folds
    (each its own fold when there are no more), and each fold's steps are
    scored by :func:`segment_log_likelihoods` under the model that
    :func:`fit_switching_ar` fits to the other folds' steps. All steps are
    scored, none by a model that saw it (unless there is one segment: then
    in sample). Returns ``(sums, steps)``, one of
    each per fold. Higher is better; scores of different labels of the same
    rows and segments compare, fold by fold.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.repeat([0, 1, 0, 1], 250)
    >>> rows = rng.normal(size=(1000, 2)) + 3.0 * truth[:, None]
    >>> segments = [(0, 400), (400, 100), (500, 400), (900, 100)]
    >>> good, steps = segmentation_scores(rows, truth, 2, segments)
    >>> by_phase, _ = segmentation_scores(rows, np.arange(1000) // 50 % 2, 2, segments)
    >>> steps.tolist(), bool(good.sum() > by_phase.sum())
    ([399, 99, 399, 99], True)
    """
    folds = [segments[i::MAX_FOLDS] for i in range(min(len(segments), MAX_FOLDS))]
    fold_stats = [_statistics(rows, labels, fold, n_states) for fold in folds]
    whole = _Statistics(*(sum(getattr(f, name) for f in fold_stats)
                          for name in _Statistics.__dataclass_fields__))
    sums, steps = np.zeros(len(folds)), np.zeros(len(folds), dtype=np.int64)
    for i, fold in enumerate(folds):
        # A single fold has no others: it is scored by the model fitted to it.
        others = whole - fold_stats[i] if len(folds) > 1 else whole
        fold_sums, fold_steps = segment_log_likelihoods(_fit(others), rows, labels, fold)
        sums[i], steps[i] = fold_sums.sum(), fold_steps.sum()
    return sums, steps
