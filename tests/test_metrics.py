"""Tests of the Hungarian-matched segmentation metrics."""

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.model_selection import GridSearchCV

from nldseg.metrics import (
    label_mapping,
    make_segmentation_scorer,
    match_labels,
    n_label_changes,
    segmentation_accuracy,
    segmentation_scorer,
)


@pytest.mark.parametrize("matching", ["one_to_one", "many_to_one"])
def test_three_cycle_permutation_is_undone_by_both_matchings(matching):
    rng = np.random.RandomState(0)
    y_true = rng.randint(3, size=(2, 150))
    y_pred = (y_true + 1) % 3  # 0 -> 1 -> 2 -> 0: not its own inverse.
    assert label_mapping(y_true, y_pred, matching=matching) == {0: 2, 1: 0, 2: 1}
    np.testing.assert_array_equal(match_labels(y_true, y_pred, matching=matching),
                                  y_true)
    assert segmentation_accuracy(y_true, y_pred, matching=matching) == 1.0


def test_arbitrary_integer_labels():
    y_true = np.array([-4, -4, 10, 10, 3, 3, 3])
    y_pred = np.array([7, 7, 0, 0, 100, 100, 0])
    np.testing.assert_array_equal(
        match_labels(y_true, y_pred), [-4, -4, 10, 10, 3, 3, 10]
    )
    assert segmentation_accuracy(y_true, y_pred) == pytest.approx(6 / 7)


def test_float_and_bool_labels_with_integer_values_are_accepted():
    matched = match_labels([0.0, 0.0, 1.0], [True, True, False])
    assert matched.dtype == np.int64
    np.testing.assert_array_equal(matched, [0, 0, 1])


def test_more_predicted_states_than_true():
    # 5 -> 0 and 7 -> 1 are matched; 6 is left over.
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y_pred = np.array([5, 5, 5, 6, 7, 7, 7, 6])
    assert label_mapping(y_true, y_pred) == {5: 0, 6: -1, 7: 1}
    np.testing.assert_array_equal(
        match_labels(y_true, y_pred), [0, 0, 0, -1, 1, 1, 1, -1]
    )
    assert segmentation_accuracy(y_true, y_pred) == pytest.approx(6 / 8)
    # Many-to-one: 6 co-occurs with 0 and 1 once each and takes the smaller.
    assert label_mapping(y_true, y_pred, matching="many_to_one") == {5: 0, 6: 0, 7: 1}
    np.testing.assert_array_equal(
        match_labels(y_true, y_pred, matching="many_to_one"), [0, 0, 0, 0, 1, 1, 1, 0]
    )
    assert segmentation_accuracy(y_true, y_pred, matching="many_to_one") == (
        pytest.approx(7 / 8))


def test_unmatched_predicted_label_counts_as_wrong():
    y_true, y_pred = [0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 0, 3]
    assert segmentation_accuracy(y_true, y_pred) == 5 / 6
    assert segmentation_accuracy(y_true, y_pred, matching="many_to_one") == 1.0
    assert np.count_nonzero(match_labels(y_true, y_pred) == -1) == 1
    assert list(label_mapping(y_true, y_pred).values()).count(-1) == 1


def test_unmatched_marker_is_never_a_true_label():
    # True labels include -1 (and lower): the marker goes below the smallest.
    y_true = np.array([-1, -1, -3, -3, 4, 4])
    y_pred = np.array([0, 0, 1, 1, 2, 3])
    mapping = label_mapping(y_true, y_pred)
    assert mapping[0] == -1 and mapping[1] == -3
    assert sorted(mapping.values()) == [-4, -3, -1, 4]
    assert np.count_nonzero(match_labels(y_true, y_pred) == -4) == 1
    assert segmentation_accuracy(y_true, y_pred) == pytest.approx(5 / 6)
    smallest = np.iinfo(np.int64).min
    with pytest.raises(ValueError, match="smallest int64 label"):
        match_labels([smallest, smallest, 0], [0, 1, 2])
    # Without unmatched labels no marker is needed.
    assert segmentation_accuracy([smallest, 0], [1, 2]) == 1.0


def test_a_label_per_step_scores_the_number_of_true_labels_over_n():
    rng = np.random.RandomState(0)
    y_true = rng.randint(3, size=300)
    acc = segmentation_accuracy(y_true, np.arange(300))
    assert acc == pytest.approx(3 / 300)
    assert acc <= np.bincount(y_true).max() / len(y_true)  # the largest class share
    assert segmentation_accuracy(y_true, np.arange(300), matching="many_to_one") == 1.0
    per_seq = segmentation_accuracy(y_true.reshape(3, 100),
                                    np.arange(300).reshape(3, 100), per_sequence=True)
    assert per_seq.sum() == pytest.approx(3 / 100)


def test_many_random_labels_do_not_beat_few():
    """On a 3-state chain, 50 random labels score below 3; many-to-one preferred 50."""
    from nldseg.datasets import make_markov_chain_sequences

    _, y_true = make_markov_chain_sequences(10, 60, n_states=3, n_features=2,
                                            random_state=0)
    rng = np.random.RandomState(0)

    def mean_accuracy(n_labels, matching):
        return np.mean([
            segmentation_accuracy(y_true, rng.randint(n_labels, size=y_true.shape),
                                  matching=matching)
            for _ in range(20)])

    few, many = mean_accuracy(3, "one_to_one"), mean_accuracy(50, "one_to_one")
    assert many < 0.1 < 0.3 < few
    assert mean_accuracy(50, "many_to_one") > mean_accuracy(3, "many_to_one")


def test_one_to_one_is_the_best_injective_relabelling():
    # Brute force over every injective map of the predicted into the true
    # labels, unmapped predicted labels counting as wrong.
    from itertools import permutations

    rng = np.random.RandomState(2)
    for _ in range(30):
        n_true, n_pred = rng.randint(1, 4), rng.randint(1, 6)
        y_true, y_pred = rng.randint(n_true, size=30), rng.randint(n_pred, size=30)
        preds, trues = np.unique(y_pred), np.unique(y_true)
        slots = list(trues) + [None] * len(preds)
        best = max(
            sum(np.count_nonzero((y_pred == p) & (y_true == t))
                for p, t in zip(preds, perm) if t is not None)
            for perm in set(permutations(slots, len(preds))))
        assert segmentation_accuracy(y_true, y_pred) == pytest.approx(best / 30)
        targets = [t for t in label_mapping(y_true, y_pred).values() if t != -1]
        assert len(targets) == len(set(targets)) == min(len(preds), len(trues))


def test_many_to_one_keeps_the_previous_numbers():
    # Figures computed before one-to-one became the default.
    assert segmentation_accuracy([0, 0, 0, 1, 1, 2, 2, 2], [4, 4, 4, 4, 4, 9, 9, 9],
                                 matching="many_to_one") == 6 / 8
    rng = np.random.RandomState(1)
    y_true, y_pred = rng.randint(3, size=(4, 20)), rng.randint(5, size=(4, 20))
    lenient = label_mapping(y_true, y_pred, matching="many_to_one")
    strict = label_mapping(y_true, y_pred)
    assert list(strict.values()).count(-1) == 2
    counts = np.array([[np.count_nonzero((y_pred == p) & (y_true == t)) for t in range(3)]
                       for p in range(5)])
    # The Hungarian pairs are kept; each left-over label takes its most
    # frequent true label.
    for p, t in strict.items():
        assert lenient[p] == (t if t != -1 else int(np.argmax(counts[p])))
    expected = np.array([lenient[p] for p in range(5)])[y_pred]
    np.testing.assert_array_equal(match_labels(y_true, y_pred, matching="many_to_one"),
                                  expected)
    assert segmentation_accuracy(y_true, y_pred, matching="many_to_one") == (
        pytest.approx(np.mean(expected == y_true)))
    assert segmentation_accuracy(y_true, y_pred) < np.mean(expected == y_true)


@pytest.mark.parametrize("matching", ["one-to-one", "hungarian", None, 1])
def test_unknown_matching_raises(matching):
    msg = r"matching must be one of \['many_to_one', 'one_to_one'\]; got "
    for fn in (segmentation_accuracy, match_labels, label_mapping):
        with pytest.raises(ValueError, match=msg):
            fn([0, 1], [0, 1], matching=matching)
    with pytest.raises(ValueError, match=msg):
        make_segmentation_scorer(matching=matching)


def test_split_true_state_is_penalised_unless_many_to_one():
    y_true = np.repeat([0, 1], 50)
    y_pred = np.repeat([2, 0, 1], [50, 25, 25])
    assert segmentation_accuracy(y_true, y_pred) == 0.75
    assert segmentation_accuracy(y_true, y_pred, matching="many_to_one") == 1.0


def test_fewer_predicted_states_than_true():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([4, 4, 4, 4, 4, 9, 9, 9])
    assert label_mapping(y_true, y_pred) == {4: 0, 9: 2}
    np.testing.assert_array_equal(
        match_labels(y_true, y_pred), [0, 0, 0, 0, 0, 2, 2, 2]
    )
    assert segmentation_accuracy(y_true, y_pred) == pytest.approx(6 / 8)


def test_matching_is_pooled_over_sequences():
    # Alone, the second sequence would be matched 1 -> 0; pooled, 0 -> 0 wins.
    y_true = [np.array([0, 0, 0, 0, 1]), np.array([0, 0, 1])]
    y_pred = [np.array([0, 0, 0, 0, 1]), np.array([1, 1, 0])]
    acc = segmentation_accuracy(y_true, y_pred, per_sequence=True)
    assert isinstance(acc, np.ndarray) and acc.shape == (2,)
    np.testing.assert_allclose(acc, [1.0, 0.0])
    assert segmentation_accuracy(y_true, y_pred) == pytest.approx(5 / 8)


def test_list_input_of_different_lengths_per_sequence():
    y_true = [[0, 0, 1, 1, 1], [1, 1, 0], [0, 1, 1, 1]]
    y_pred = [[2, 2, 0, 0, 2], [0, 0, 0], [2, 0, 0, 2]]
    # Pooled contingency maps 2 -> 0 and 0 -> 1.
    matched = match_labels(y_true, y_pred)
    assert isinstance(matched, list) and len(matched) == 3
    np.testing.assert_array_equal(matched[0], [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(matched[1], [1, 1, 1])
    np.testing.assert_array_equal(matched[2], [0, 1, 1, 0])
    acc = segmentation_accuracy(y_true, y_pred, per_sequence=True)
    np.testing.assert_allclose(acc, [4 / 5, 2 / 3, 3 / 4])
    assert segmentation_accuracy(y_true, y_pred) == pytest.approx(9 / 12)


def test_output_mirrors_the_form_of_y_pred():
    y_true = np.array([[0, 0, 1], [1, 1, 0]])
    y_pred = np.array([[1, 1, 0], [0, 0, 1]])
    matched = match_labels(y_true, y_pred)
    assert isinstance(matched, np.ndarray) and matched.shape == (2, 3)
    np.testing.assert_array_equal(matched, y_true)
    matched = match_labels(y_true, list(y_pred))
    assert isinstance(matched, list)
    np.testing.assert_array_equal(np.stack(matched), y_true)
    single = match_labels([0, 1, 1], [1, 0, 0])
    assert isinstance(single, np.ndarray) and single.shape == (3,)


def test_2d_per_sequence_matches_list_input():
    rng = np.random.RandomState(1)
    y_true = rng.randint(3, size=(4, 20))
    y_pred = rng.randint(4, size=(4, 20))
    acc_2d = segmentation_accuracy(y_true, y_pred, per_sequence=True)
    acc_list = segmentation_accuracy(list(y_true), list(y_pred), per_sequence=True)
    np.testing.assert_array_equal(acc_2d, acc_list)
    matched = match_labels(y_true, y_pred)
    np.testing.assert_allclose(acc_2d, np.mean(matched == y_true, axis=1))
    assert segmentation_accuracy(y_true, y_pred) == pytest.approx(acc_2d.mean())


def test_single_sequence_per_sequence_has_length_one():
    acc = segmentation_accuracy([0, 0, 1, 1], [1, 1, 0, 1], per_sequence=True)
    assert acc.shape == (1,)
    np.testing.assert_allclose(acc, [0.75])


def test_pooled_accuracy_is_a_python_float():
    acc = segmentation_accuracy([0, 1], [1, 0])
    assert type(acc) is float


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([0, 1, 1], [0, 1], "y_true has 3 time steps and y_pred has 2"),
        ([[0, 1], [1, 0]], [[0, 1]], "y_true has 2 and y_pred has 1"),
        ([[0, 1, 1], [0]], [[0, 1, 1], [0, 1]], "Sequence 1 has 1 .* but 2"),
        ([], [], "y_true is empty"),
        (np.zeros((2, 0)), np.zeros((2, 0)), r"y_true\[0\] is empty"),
        ([0, 1], [0.5, 1], "non-integer value 0.5"),
        ([0, np.nan], [0, 1], "y_true contains NaN"),
        ([0, 1], [0, np.inf], "y_pred contains infinite values"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), "ndim=3"),
        ([[0, 1], 1], [[0, 1], 1], "neither all scalars nor all 1-D"),
    ],
)
def test_bad_input_raises_value_error(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        segmentation_accuracy(y_true, y_pred)
    with pytest.raises(ValueError, match=match):
        match_labels(y_true, y_pred)


def test_non_numeric_labels_raise_type_error():
    with pytest.raises(TypeError, match="integer labels; got an array of dtype"):
        match_labels(["a", "b"], [0, 1])
    with pytest.raises(TypeError, match="per_sequence must be a bool"):
        segmentation_accuracy([0, 1], [0, 1], per_sequence="yes")


# Scorers ---------------------------------------------------------------------


class _PermutedOracle(BaseEstimator):
    """Reads the true state from feature 0 and predicts it under a 3-cycle.

    With ``noise > 0``, steps whose feature 1 is below ``noise`` get a wrong
    label. Output mirrors the input form, like ``LangevinSegmenter.predict``.
    """

    def __init__(self, noise=0.0):
        self.noise = noise

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def _labels(self, seq):
        seq = np.asarray(seq)
        labels = (np.round(seq[..., 0]).astype(np.int64) + 1) % 3
        return np.where(seq[..., 1] < self.noise, (labels + 1) % 3, labels)

    def predict(self, X, *, lengths=None):
        if isinstance(X, list):
            return [self._labels(seq) for seq in X]
        return self._labels(X)


def _oracle_data(seed=0):
    """Sequences of distinct lengths whose feature 0 is the true state."""
    rng = np.random.RandomState(seed)
    ys = [rng.randint(3, size=n) for n in range(10, 30)]
    Xs = [np.column_stack([y, rng.uniform(size=len(y))]) for y in ys]
    return Xs, ys


def test_scorer_gives_one_for_a_permuted_labelling_in_every_form():
    Xs, ys = _oracle_data()
    est = _PermutedOracle().fit(Xs)
    # The raw labels are all wrong: only the matching makes them right.
    assert np.mean(np.concatenate(est.predict(Xs)) == np.concatenate(ys)) == 0.0
    lengths = [len(y) for y in ys]
    X3, y3 = np.stack([x[:10] for x in Xs]), np.stack([y[:10] for y in ys])
    for scorer in (segmentation_scorer, make_segmentation_scorer(per_sequence=True)):
        assert scorer(est, Xs, ys) == 1.0
        assert scorer(est, X3, y3) == 1.0
        assert scorer(est, Xs[0], ys[0]) == 1.0
        assert scorer(est, np.concatenate(Xs), np.concatenate(ys), lengths=lengths) == 1.0
        assert type(scorer(est, Xs, ys)) is float


def test_scorer_matches_segmentation_accuracy():
    Xs, ys = _oracle_data()
    est = _PermutedOracle(noise=0.3).fit(Xs)
    y_pred = est.predict(Xs)
    pooled = segmentation_accuracy(ys, y_pred)
    mean_per_seq = segmentation_accuracy(ys, y_pred, per_sequence=True).mean()
    assert 0.5 < pooled < 1.0
    assert segmentation_scorer(est, Xs, ys) == pooled
    assert make_segmentation_scorer(per_sequence=True)(est, Xs, ys) == pytest.approx(
        mean_per_seq)
    # Sequences of different lengths: the two weightings differ.
    assert mean_per_seq != pytest.approx(pooled)
    # A 2-D X with lengths is split like the list.
    lengths = [len(y) for y in ys]
    per_seq = make_segmentation_scorer(per_sequence=True)
    assert per_seq(est, np.concatenate(Xs), np.concatenate(ys),
                   lengths=lengths) == pytest.approx(mean_per_seq)
    assert per_seq(est, np.concatenate(Xs), ys, lengths=lengths) == pytest.approx(
        mean_per_seq)


@pytest.mark.parametrize("form", ["list", "3d"])
def test_scorer_works_as_grid_search_scoring(form):
    Xs, ys = _oracle_data()
    if form == "3d":
        Xs, ys = np.stack([x[:10] for x in Xs]), np.stack([y[:10] for y in ys])
    search = GridSearchCV(_PermutedOracle(), {"noise": [0.5, 0.0]},
                          scoring=segmentation_scorer, cv=2).fit(Xs, ys)
    assert search.best_params_ == {"noise": 0.0}
    assert search.best_score_ == 1.0
    assert search.cv_results_["mean_test_score"][0] < 1.0
    assert search.score(Xs, ys) == 1.0


def test_scorer_errors_and_repr():
    Xs, ys = _oracle_data()
    est = _PermutedOracle().fit(Xs)
    with pytest.raises(ValueError, match="needs the true state labels y"):
        segmentation_scorer(est, Xs, None)
    with pytest.raises(ValueError, match="same number of sequences"):
        segmentation_scorer(est, Xs, ys[:-1])
    with pytest.raises(TypeError, match="per_sequence must be a bool"):
        make_segmentation_scorer(per_sequence="yes")
    assert repr(segmentation_scorer) == (
        "make_segmentation_scorer(per_sequence=False, matching='one_to_one')")
    again = pickle.loads(pickle.dumps(make_segmentation_scorer(
        per_sequence=True, matching="many_to_one")))
    assert again(est, Xs, ys) == 1.0 and again.per_sequence is True
    assert again.matching == "many_to_one"


class _Splitter(_PermutedOracle):
    """Splits every true state in two by the parity of the step (6 labels)."""

    def _labels(self, seq):
        seq = np.asarray(seq)
        return 2 * np.round(seq[..., 0]).astype(np.int64) + np.arange(seq.shape[-2]) % 2


def test_scorer_matching_option():
    Xs, ys = _oracle_data()
    est = _Splitter().fit(Xs)
    y_pred = est.predict(Xs)
    strict = segmentation_scorer(est, Xs, ys)
    assert strict == segmentation_accuracy(ys, y_pred)
    assert 0.4 < strict < 0.6  # Half of each true state is left unmatched.
    for per_sequence in (False, True):
        lenient = make_segmentation_scorer(per_sequence=per_sequence,
                                           matching="many_to_one")
        assert lenient(est, Xs, ys) == 1.0
        assert make_segmentation_scorer(per_sequence=per_sequence)(est, Xs, ys) < 0.6


# Flicker ---------------------------------------------------------------------


def test_n_label_changes_in_every_form():
    assert n_label_changes([0, 0, 1, 1, 0]) == 2
    assert n_label_changes(np.array([3])) == 0
    assert n_label_changes([[0, 1, 1], [2, 2, 2]]) == 1
    # Changes across the boundary between two sequences do not count.
    assert n_label_changes([np.array([0, 0]), np.array([1, 1])]) == 0
    assert n_label_changes([[0, 1, 0, 1], [5], [3, 3]]) == 3
    assert n_label_changes([0.0, 1.0, 1.0]) == 1
    assert type(n_label_changes([0, 1])) is int
    rng = np.random.RandomState(0)
    y = rng.randint(3, size=(4, 50))
    expected = sum(int(np.sum(seq[1:] != seq[:-1])) for seq in y)
    assert n_label_changes(y) == n_label_changes(list(y)) == expected


@pytest.mark.parametrize("y, err, match", [
    ([], ValueError, "y is empty"),
    ([0, 0.5], ValueError, "non-integer value 0.5"),
    (np.zeros((2, 2, 2)), ValueError, "ndim=3"),
    (["a", "b"], TypeError, "integer labels"),
])
def test_n_label_changes_bad_input(y, err, match):
    with pytest.raises(err, match=match):
        n_label_changes(y)
