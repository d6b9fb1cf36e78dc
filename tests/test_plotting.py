"""Tests of nldseg.plotting (Agg backend; figures are closed after each test)."""

import numpy as np
import pytest

from nldseg.plotting import plot_dwell_times

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


def test_plot_dwell_times(tiny_fitted):
    fig, ax = plt.subplots()
    try:
        out = plot_dwell_times(tiny_fitted, ax=ax, n_trajectories=32, n_steps=300,
                               random_state=0)
        assert out is ax
        assert ax.get_yscale() == "log"
        solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(solid) == len(dashed) == tiny_fitted.n_states_
        means = tiny_fitted.mean_dwell_times(n_trajectories=32, n_steps=300,
                                             random_state=0)
        for line, mean in zip(dashed, means):
            t, y = line.get_data()
            np.testing.assert_allclose(y, (1 - 1 / mean) ** t)
        # Survival curves start below 1 and never rise.
        for line in solid:
            y = line.get_ydata()
            assert y[0] <= 1 and (np.diff(y) <= 0).all()
    finally:
        plt.close(fig)


def test_energy_landscape_with_paths_and_profiles(tiny_fitted):
    from nldseg.plotting import plot_energy_landscape, plot_energy_profiles

    mep = tiny_fitted.minimum_energy_paths()
    neighbours = [(i, j) for (i, j) in mep["paths"] if np.isfinite(mep["barriers"][i, j])]
    assert neighbours  # A 3-well model has at least one pair of neighbours.
    fig, (a1, a2) = plt.subplots(1, 2)
    try:
        before = len(a1.get_lines())
        assert plot_energy_landscape(tiny_fitted, ax=a1, resolution=20, paths=True) is a1
        # 3 minima, and a path plus a saddle per neighbouring pair.
        assert len(a1.get_lines()) - before == 3 + 2 * len(neighbours)
        assert plot_energy_profiles(tiny_fitted, ax=a2) is a2
        lines = a2.get_lines()
        assert len(lines) == len(neighbours)
        for line, (i, j) in zip(lines, neighbours):
            y = line.get_ydata()
            assert abs(y[0]) < 1e-6  # Starts at i's minimum.
            beta = tiny_fitted.energy_.beta
            assert np.isclose(y.max(), beta * mep["barriers"][i, j], rtol=0.1, atol=0.05)
    finally:
        plt.close(fig)


def test_kinetic_network(tiny_fitted):
    from nldseg.plotting import plot_kinetic_network

    fig, ax = plt.subplots()
    try:
        out = plot_kinetic_network(tiny_fitted, ax=ax, n_trajectories=32, n_steps=300,
                                   random_state=0)
        assert out is ax
        P = tiny_fitted.transition_matrix(1, n_trajectories=32, n_steps=300,
                                          random_state=0)
        arrows = [t for t in ax.texts if t.arrow_patch is not None]
        assert len(arrows) == int((P[~np.eye(3, dtype=bool)] > 0).sum())
        labels = {t.get_text() for t in ax.texts if t.arrow_patch is None}
        for i in range(3):
            assert f"{i}\n{tiny_fitted.state_occupancy_[i]:.2f}" in labels
    finally:
        plt.close(fig)


def test_plot_dwell_times_of_labelled_data(tiny_fitted):
    y = np.array([[0, 0, 1, 1, 1, 2, 2, 0, 0, 0, 0, 1],
                  [2, 2, 2, 0, 0, 1, 1, 1, 1, 2, 0, 0]])
    fig, ax = plt.subplots()
    try:
        plot_dwell_times(tiny_fitted, y, ax=ax, n_trajectories=16, n_steps=200,
                         random_state=0)
        dotted = {line.get_label(): line for line in ax.get_lines()
                  if line.get_linestyle() == ":"}
        # Complete visits: state 0 -> [4, 2], state 1 -> [3, 4], state 2 -> [2, 1].
        assert set(dotted) == {"state 0, data (mean 3.0)", "state 1, data (mean 3.5)",
                               "state 2, data (mean 1.5)"}
        np.testing.assert_allclose(dotted["state 0, data (mean 3.0)"].get_ydata(),
                                   [1.0, 0.5, 0.5, 0.0])
    finally:
        plt.close(fig)


def test_plot_segmentation_draws_both_label_sequences_on_integer_ticks(tiny_fitted,
                                                                      tiny_data):
    from nldseg.metrics import match_labels
    from nldseg.plotting import plot_segmentation

    _, X_test, y_test = tiny_data
    y_pred = match_labels(y_test[0], tiny_fitted.predict(X_test[0]))
    assert len(np.unique(y_pred)) >= 2  # Labels that can differ from one state.
    fig, ax = plt.subplots()
    try:
        assert plot_segmentation(y_pred, y_test[0], ax=ax, title="seq 0") is ax
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["true", "predicted (online)"]
        np.testing.assert_array_equal(lines[0].get_ydata(), y_test[0])
        np.testing.assert_array_equal(lines[1].get_ydata(), y_pred)
        low, high = ax.get_ylim()
        ticks = [t for t in ax.get_yticks() if low <= t <= high]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_title() == "seq 0" and ax.get_ylabel() == "state"
    finally:
        plt.close(fig)
    ax = plot_segmentation(y_pred)  # A new figure, no truth.
    try:
        assert len(ax.get_lines()) == 1
    finally:
        plt.close(ax.figure)


def test_plot_segmentation_draws_the_observations_beneath(tiny_fitted, tiny_data):
    from matplotlib.collections import PolyCollection

    from nldseg.metrics import match_labels
    from nldseg.plotting import plot_segmentation

    _, X_test, y_test = tiny_data
    y_pred = match_labels(y_test[0], tiny_fitted.predict(X_test[0]))
    assert len(np.unique(y_pred)) >= 2
    top, bottom = plot_segmentation(y_pred, y_test[0], X_test[0], max_features=3)
    try:
        assert top.figure is bottom.figure and bottom.get_shared_x_axes().joined(top,
                                                                                  bottom)
        assert [line.get_label() for line in top.get_lines()] == ["true",
                                                                  "predicted (online)"]
        lines = bottom.get_lines()
        assert len(lines) == 3 and bottom.get_ylabel() == "features 0-2"
        for j, line in enumerate(lines):
            np.testing.assert_array_equal(line.get_ydata(), X_test[0][:, j])
        # One band per predicted state; together they cover every step once.
        bands = [c for c in bottom.collections if isinstance(c, PolyCollection)]
        assert [b.get_label() for b in bands] == [f"predicted state {k}"
                                                  for k in np.unique(y_pred)]
        covered = np.zeros(len(y_pred), int)
        for band, k in zip(bands, np.unique(y_pred)):
            for path in band.get_paths():
                x = path.vertices[:, 0]
                steps = np.arange(int(round(x.min())), int(round(x.max())))
                assert (y_pred[steps] == k).all()
                covered[steps] += 1
        np.testing.assert_array_equal(covered, 1)
        assert bottom.get_xlabel() == "time step" and top.get_xlabel() == ""
    finally:
        plt.close(top.figure)
    # Into given Axes; one feature given as a 1-D sequence.
    fig, pair = plt.subplots(2, 1, sharex=True)
    try:
        out = plot_segmentation(y_pred, X=X_test[0][:, 0], ax=pair)
        assert list(out) == list(pair) and pair[1].get_ylabel() == "feature 0"
        assert len(pair[0].get_lines()) == 1  # No truth given.
    finally:
        plt.close(fig)


@pytest.mark.parametrize("kwargs, match", [
    (dict(y_pred=np.zeros((2, 5), int)), "one sequence of labels"),
    (dict(y_pred=np.zeros(5, int), y_true=np.zeros(4, int)), "same steps"),
    (dict(y_pred=np.zeros(5, int), X=np.zeros((4, 2))), "one row per label"),
    (dict(y_pred=np.zeros(5, int), X=np.zeros((5, 2)), max_features=0),
     "max_features must be a positive int"),
])
def test_plot_segmentation_refuses_what_does_not_fit(kwargs, match):
    from nldseg.plotting import plot_segmentation

    with pytest.raises(ValueError, match=match):
        plot_segmentation(**kwargs)


def test_plot_segmentation_with_observations_needs_two_axes():
    from nldseg.plotting import plot_segmentation

    fig, ax = plt.subplots()
    try:
        with pytest.raises(ValueError, match="a pair of Axes"):
            plot_segmentation(np.zeros(5, int), X=np.zeros((5, 2)), ax=ax)
    finally:
        plt.close(fig)
