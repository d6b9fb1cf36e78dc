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
