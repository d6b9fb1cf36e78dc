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

whose log-likelihood per step on held-out steps, under that candidate's
labels of them, is the score. The form reads one lag whatever the candidate
read, so that a segmentation into the states the data switch between scores
higher whether those states differ in level (a single frame tells them) or
in dynamics (how a frame follows the last); cutting an oscillation by phase
into short-lived pieces pays for its many changes in ``T`` and for pieces
whose dynamics mix several states.

:func:`fit_switching_ar` fits it (ridge regression per state, covariances
shrunk towards the pooled one, transitions with one pseudo-count each);
:func:`segment_log_likelihoods` scores labelled steps under it, segment by
segment, and :func:`segmentation_scores` does both, fitted on some segments
and scored on others. They take
the rows (standardised observations), the labels and the segments ``(start,
length)`` of those rows to use: pairs of consecutive rows within a segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nldseg._kinetics import row_stochastic, transition_counts

#: Ridge penalty on the regression weights (of standardised rows).
RIDGE = 1.0


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


def _ridge(design: np.ndarray, target: np.ndarray) -> tuple:
    """Ridge weights (1 + D, D) and the residuals' sum of squares (D, D)."""
    gram = design.T @ design + RIDGE * np.eye(design.shape[1])
    weights = np.linalg.solve(gram, design.T @ target)
    resid = target - design @ weights
    return weights, resid.T @ resid


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
    design, target, before, after = _pairs(rows, labels, segments)
    d = rows.shape[1]
    pooled_w, pooled_ss = _ridge(design, target)
    floor = 1e-6 * max(np.trace(pooled_ss) / max(len(target), 1) / d, 1e-12)
    pooled_cov = pooled_ss / max(len(target), 1) + floor * np.eye(d)
    weights = np.empty((n_states, d + 1, d))
    trils = np.empty((n_states, d, d))
    for k in range(n_states):
        mine = after == k
        if mine.any():
            weights[k], ss = _ridge(design[mine], target[mine])
        else:
            weights[k], ss = pooled_w, np.zeros((d, d))
        cov = (ss + (d + 2) * pooled_cov) / (mine.sum() + d + 2)
        trils[k] = np.linalg.cholesky(0.5 * (cov + cov.T))
    counts = sum((transition_counts(labels[a:a + n][None], n_states, 1)
                  for a, n in segments if n > 1), np.zeros((n_states, n_states)))
    return SwitchingAR(weights, trils, np.log(row_stochastic(counts + 1.0)))


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
                        train_segments: list, held_segments: list) -> tuple:
    """How well ``labels`` explain held-out rows, segment by segment.

    :func:`fit_switching_ar` on ``train_segments``, then
    :func:`segment_log_likelihoods` of ``held_segments`` (of
    ``train_segments`` when none are held out): ``(sums, steps)``, one of
    each per segment. Higher is better; scores of different labels of the
    same rows compare, segment by segment.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.repeat([0, 1, 0, 1], 250)
    >>> rows = rng.normal(size=(1000, 2)) + 3.0 * truth[:, None]
    >>> train, held = [(0, 400), (500, 400)], [(400, 100), (900, 100)]
    >>> good, steps = segmentation_scores(rows, truth, 2, train, held)
    >>> by_phase, _ = segmentation_scores(rows, np.arange(1000) // 50 % 2, 2, train, held)
    >>> steps.tolist(), bool(good.sum() > by_phase.sum())
    ([99, 99], True)
    """
    model = fit_switching_ar(rows, labels, train_segments, n_states)
    return segment_log_likelihoods(model, rows, labels, held_segments or train_segments)
