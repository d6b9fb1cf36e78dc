"""The switching AR(1) score of a segmentation (no model trained)."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from nldseg._switching_ar import (
    MAX_FOLDS,
    SwitchingAR,
    fit_switching_ar,
    segment_log_likelihoods,
    segmentation_scores,
)


def switching_ar_log_likelihood(model, rows, labels, segments) -> float:
    sums, steps = segment_log_likelihoods(model, rows, labels, segments)
    return sums.sum() / steps.sum()


def segmentation_score(rows, labels, n_states, segments) -> float:
    sums, steps = segmentation_scores(rows, labels, n_states, segments)
    return sums.sum() / steps.sum()


def _rotation(period: float) -> np.ndarray:
    angle = 2 * np.pi / period
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _oscillations(n_steps: int = 4000, seed: int = 0) -> tuple:
    """Two states that rotate a 2-D point at periods 12 and 40 steps, with the
    same circle as marginal: frames alone do not tell them."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_steps // 400) % 2, 400)
    rows = np.empty((n_steps, 2))
    point = np.array([1.0, 0.0])
    for t, state in enumerate(truth):
        point = _rotation(12.0 if state else 40.0) @ point
        rows[t] = point + 0.05 * rng.normal(size=2)
    return rows, truth


SEGMENTS = [(0, 1800), (1800, 200), (2000, 1800), (3800, 200)]


def test_fit_recovers_each_states_dynamics():
    rows, truth = _oscillations()
    model = fit_switching_ar(rows, truth, [(0, len(rows))], 2)
    for state, period in ((0, 40.0), (1, 12.0)):
        np.testing.assert_allclose(model.weights[state, 1:].T, _rotation(period),
                                   atol=0.02)
        np.testing.assert_allclose(model.weights[state, 0], 0.0, atol=0.02)
        noise = model.scale_trils[state] @ model.scale_trils[state].T
        np.testing.assert_allclose(noise, 0.05**2 * np.eye(2) * 2, rtol=0.5, atol=2e-3)
    transitions = np.exp(model.log_transitions)
    np.testing.assert_allclose(transitions.sum(1), 1.0)
    assert transitions[0, 0] > 0.99 and transitions[1, 1] > 0.99


def test_log_likelihood_is_the_mean_over_the_segments_pairs():
    """Each step after a segment's first: Gaussian of its AR mean plus the
    transition's log; no pair spans two segments."""
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(9, 2))
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0])
    weights = rng.normal(size=(2, 3, 2))
    trils = np.array([[[1.0, 0.0], [0.3, 0.5]], [[0.7, 0.0], [-0.2, 1.2]]])
    log_t = np.log(np.array([[0.8, 0.2], [0.4, 0.6]]))
    model = SwitchingAR(weights, trils, log_t)
    segments = [(0, 4), (4, 1), (5, 4)]
    expected = []
    for t in (1, 2, 3, 6, 7, 8):
        k, prev = labels[t], labels[t - 1]
        mean = np.concatenate([[1.0], rows[t - 1]]) @ weights[k]
        cov = trils[k] @ trils[k].T
        expected.append(multivariate_normal(mean, cov).logpdf(rows[t]) + log_t[prev, k])
    got = switching_ar_log_likelihood(model, rows, labels, segments)
    np.testing.assert_allclose(got, np.mean(expected), rtol=1e-10)
    sums, steps = segment_log_likelihoods(model, rows, labels, segments)
    np.testing.assert_array_equal(steps, [3, 0, 3])
    np.testing.assert_allclose(sums, [sum(expected[:3]), 0.0, sum(expected[3:])])
    sums, steps = segment_log_likelihoods(model, rows, labels, [(4, 1)])
    assert sums.tolist() == [0.0] and steps.tolist() == [0]


def test_dynamics_states_beat_phase_pieces_and_one_state():
    """States that differ in tempo only: the true labels explain held-out steps
    better than one state, or than cutting the circle into two halves (what a
    frame-by-frame clustering finds)."""
    rows, truth = _oscillations()
    true_score = segmentation_score(rows, truth, 2, SEGMENTS)
    halves = (rows[:, 0] > 0).astype(int)
    assert true_score > segmentation_score(rows, halves, 2, SEGMENTS) + 0.5
    assert true_score > segmentation_score(rows, np.zeros_like(truth), 1, SEGMENTS) + 0.5
    quarters = 2 * (rows[:, 0] > 0) + (rows[:, 1] > 0)
    assert true_score > segmentation_score(rows, quarters, 4, SEGMENTS)


def test_level_states_beat_merged_ones():
    """Three levels under an AR(1) wander: splitting off the third one explains
    the held-out steps better than merging it into another. (Under a wander
    close to a random walk the previous step predicts the next whatever the
    level, and the two score alike: at 0.9 per step, 0.012 nats apart.)"""
    rng = np.random.default_rng(2)
    truth = np.repeat(np.arange(20) % 3, 200)
    levels = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    rows, x = np.empty((len(truth), 2)), np.zeros(2)
    for t, state in enumerate(truth):
        x = levels[state] + 0.5 * (x - levels[state]) + 0.2 * rng.normal(size=2)
        rows[t] = x
    segments = [(0, 1100), (1100, 100), (1200, 700), (1900, 100), (2000, 1900),
                (3900, 100)]
    merged = np.minimum(truth, 1)
    assert (segmentation_score(rows, truth, 3, segments)
            > segmentation_score(rows, merged, 2, segments) + 0.05)


def test_each_fold_is_scored_by_a_fit_to_the_other_folds():
    """Cross-fitting from summed statistics equals refitting without the fold;
    more segments than MAX_FOLDS are dealt to folds round robin."""
    rng = np.random.default_rng(3)
    rows = 0.1 * rng.normal(size=(6000, 3)).cumsum(0)
    labels = (np.arange(6000) // 137) % 4
    labels[labels == 2] = np.where(np.arange(6000)[labels == 2] < 3000, 2, 1)
    for n_segments in (5, MAX_FOLDS + 7):
        starts = np.linspace(0, 6000, n_segments + 1).astype(int)
        segments = [(int(a), int(b - a) - 10 * (i % 3))
                    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:]))]
        sums, steps = segmentation_scores(rows, labels, 4, segments)
        folds = [segments[i::MAX_FOLDS] for i in range(min(n_segments, MAX_FOLDS))]
        assert len(sums) == len(steps) == len(folds)
        for i, fold in enumerate(folds):
            others = [q for q in segments if q not in fold]
            expected, n = segment_log_likelihoods(
                fit_switching_ar(rows, labels, others, 4), rows, labels, fold)
            assert steps[i] == n.sum()
            np.testing.assert_allclose(sums[i], expected.sum(), rtol=1e-9)


def test_a_state_seen_in_one_fold_only_gets_the_pooled_fit_there():
    rows, truth = _oscillations(800)
    labels = truth.copy()
    labels[700:] = 2  # Only in the second segment.
    model = fit_switching_ar(rows, labels, [(0, 600)], 3)
    np.testing.assert_allclose(model.weights[2], fit_switching_ar(
        rows, np.zeros_like(labels), [(0, 600)], 1).weights[0])
    sums, _ = segmentation_scores(rows, labels, 3, [(0, 600), (600, 200)])
    expected, _ = segment_log_likelihoods(model, rows, labels, [(600, 200)])
    np.testing.assert_allclose(sums[1], expected[0], rtol=1e-9)
    # A single segment has no other to fit on: it is scored in sample.
    assert segmentation_score(rows, truth, 2, [(0, 800)]) == pytest.approx(
        switching_ar_log_likelihood(fit_switching_ar(rows, truth, [(0, 800)], 2),
                                    rows, truth, [(0, 800)]))
