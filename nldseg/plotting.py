"""Plots of a fitted :class:`~nldseg.LangevinSegmenter` (matplotlib needed).

Each function takes ``ax=None`` (a new figure is made) and returns the Axes;
none calls ``plt.show()``.
"""

from __future__ import annotations

import numpy as np


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 5))
    return ax


def minima_plane(landscape, points=None) -> tuple[np.ndarray, np.ndarray]:
    """Origin and 2 orthonormal directions of the PCA plane through the minima.

    With fewer than three minima the plane is completed by the leading
    principal directions of ``points`` (e.g. encoded data), or by coordinate
    axes when no points are given.

    Returns
    -------
    origin : ndarray of shape (latent_dim,)
    basis : ndarray of shape (2, latent_dim)
    """
    minima = landscape.minima
    d = minima.shape[1]
    origin = minima.mean(0)
    dirs = list(np.linalg.svd(minima - origin, full_matrices=False)[2][
        : max(0, len(minima) - 1)]) if len(minima) > 1 else []
    if points is not None and len(points) > 1:
        extra = np.linalg.svd(points - points.mean(0), full_matrices=False)[2]
    else:
        extra = np.eye(d)
    for v in extra:
        if len(dirs) >= min(2, d):
            break
        for u in dirs:
            v = v - (v @ u) * u
        if np.linalg.norm(v) > 1e-8:
            dirs.append(v / np.linalg.norm(v))
    if d == 1:
        dirs.append(np.zeros(1))
    return origin, np.stack(dirs[:2])


def plot_energy_landscape(estimator, X=None, *, ax=None, resolution: int = 120,
                          margin: float = 0.5, levels: int = 30,
                          paths: bool = False):
    """Contours of the learned energy on the plane through the minima (paper Fig. 2f).

    Parameters
    ----------
    estimator : LangevinSegmenter
        A fitted estimator.
    X : array-like, default=None
        Sequences whose posterior-mean latent path is projected on the plane.
    ax : matplotlib Axes, default=None
    resolution : int, default=120
        Grid points per axis.
    margin : float, default=0.5
        Extra extent around the minima (and data), as a fraction of the span.
    levels : int, default=30
        Number of contour levels.
    paths : bool, default=False
        Also draw the minimum energy paths between neighbouring states
        (:meth:`~nldseg.LangevinSegmenter.minimum_energy_paths`), projected
        on the plane, and mark their saddles (white crosses). The energy is
        drawn on the plane, so a path that leaves it crosses contours that
        are not its own; :func:`plot_energy_profiles` shows the energy along
        each path.

    Returns
    -------
    ax : matplotlib Axes
    """
    land = estimator.energy_
    ax = _axes(ax)
    pts = None
    if X is not None:
        Z = estimator.transform(X)
        pts = np.concatenate(Z) if isinstance(Z, list) else Z.reshape(-1, Z.shape[-1])
    origin, basis = minima_plane(land, pts)
    coords = (land.minima - origin) @ basis.T
    if pts is not None:
        coords_all = np.vstack([coords, (pts - origin) @ basis.T])
    else:
        coords_all = coords
    lo, hi = coords_all.min(0), coords_all.max(0)
    span = np.maximum(hi - lo, 1.0)
    lo, hi = lo - margin * span, hi + margin * span
    u = np.linspace(lo[0], hi[0], resolution)
    v = np.linspace(lo[1], hi[1], resolution)
    U, V = np.meshgrid(u, v)
    grid = origin + U.reshape(-1, 1) * basis[0] + V.reshape(-1, 1) * basis[1]
    E = land(grid).reshape(U.shape)
    cs = ax.contourf(U, V, E, levels=levels, cmap="viridis")
    ax.contour(U, V, E, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    ax.figure.colorbar(cs, ax=ax, label="E(z)")
    if pts is not None:
        p = (pts - origin) @ basis.T
        ax.plot(p[:, 0], p[:, 1], ".", color="w", ms=1.5, alpha=0.3)
    if paths:
        mep = estimator.minimum_energy_paths()
        for (i, j), path in mep["paths"].items():
            if not np.isfinite(mep["barriers"][i, j]):
                continue  # Not neighbours: the path runs through a third state.
            p = (path - origin) @ basis.T
            ax.plot(p[:, 0], p[:, 1], "-", color="w", lw=1.5)
            s = (mep["saddles"][i, j] - origin) @ basis.T
            ax.plot(s[0], s[1], "wx", ms=9, mew=2)
    for k, (a, b) in enumerate(coords):
        ax.plot(a, b, "r*", ms=12)
        ax.annotate(f"state {k}", (a, b), textcoords="offset points", xytext=(6, 6),
                    color="r")
    ax.set_xlabel("PC 1 of minima")
    ax.set_ylabel("PC 2 of minima")
    ax.set_title("Energy on the plane through the minima")
    return ax


def plot_segmentation(y_pred, y_true=None, X=None, *, ax=None, title: str | None = None,
                      max_features: int = 5):
    """Predicted state sequence against the truth, the observations beneath (paper Fig. 3).

    The state axis has integer ticks only. With ``X``, the observations are
    drawn on a second Axes beneath, sharing the time axis, with the time
    spans of each predicted state shaded in that state's colour.

    Parameters
    ----------
    y_pred : array-like of shape (n_timesteps,)
        Predicted labels, ideally already matched with
        :func:`nldseg.metrics.match_labels`.
    y_true : array-like of shape (n_timesteps,), default=None
    X : array-like of shape (n_timesteps,) or (n_timesteps, n_features), \
            default=None
        The sequence that was labelled; its first ``max_features`` features
        are drawn beneath the labels.
    ax : matplotlib Axes, or a pair of Axes when ``X`` is given, default=None
        Where to draw: without ``X`` one Axes; with ``X`` the labels' Axes
        and the observations' Axes (for example the two of
        ``plt.subplots(2, 1, sharex=True)``). ``None`` makes a new figure.
    title : str, default=None
    max_features : int, default=5
        How many of ``X``'s features to draw.

    Returns
    -------
    ax : matplotlib Axes, or ndarray of 2 Axes when ``X`` is given
        The labels' Axes; with ``X``, ``[labels_ax, observations_ax]``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from nldseg.datasets import make_markov_chain_sequences
    >>> from nldseg.plotting import plot_segmentation
    >>> X, y = make_markov_chain_sequences(1, 100, random_state=0)
    >>> top, bottom = plot_segmentation(y[0], y[0], X[0])
    >>> top.get_ylabel(), bottom.get_ylabel()
    ('state', 'features 0-4')
    >>> plt.close("all")
    """
    from matplotlib.ticker import MaxNLocator

    y_pred = np.asarray(y_pred)
    if y_pred.ndim != 1:
        raise ValueError(f"y_pred must be one sequence of labels (1-D), got shape "
                         f"{y_pred.shape}.")
    if y_true is not None:
        y_true = np.asarray(y_true)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}: "
                             "they must label the same steps.")
    if X is None:
        top = bottom = _axes(ax)
    else:
        X = np.asarray(X, dtype=float)
        X = X[:, None] if X.ndim == 1 else X
        if X.ndim != 2 or len(X) != len(y_pred):
            raise ValueError(f"X must have one row per label ({len(y_pred)} rows, 1-D or "
                             f"2-D), got shape {X.shape}.")
        if isinstance(max_features, bool) or not isinstance(max_features, int) or \
                max_features < 1:
            raise ValueError(f"max_features must be a positive int, got "
                             f"{max_features!r}.")
        top, bottom = _axes_pair(ax)
    t = np.arange(len(y_pred))
    if y_true is not None:
        top.step(t, y_true, where="post", lw=3, alpha=0.4, label="true")
    top.step(t, y_pred, where="post", lw=1.2, label="predicted (online)")
    top.set_ylabel("state")
    top.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.legend(loc="upper right")
    if title:
        top.set_title(title)
    if X is not None:
        shown = X[:, :max_features]
        bottom.plot(t, shown, lw=0.6)
        # The predicted visits: step s covers [s, s + 1), as in the steps above.
        starts = np.flatnonzero(np.r_[True, y_pred[1:] != y_pred[:-1]])
        spans = np.diff(np.r_[starts, len(y_pred)])
        for k in np.unique(y_pred):
            mine = y_pred[starts] == k
            # One band per state, in the colour cycle's k-th colour.
            bottom.broken_barh(list(zip(starts[mine], spans[mine])), (0, 1), alpha=0.15,
                               color=f"C{int(k) % 10}", lw=0,
                               transform=bottom.get_xaxis_transform(),
                               label=f"predicted state {int(k)}")
        bottom.legend(loc="upper right", fontsize="small")
        bottom.set_ylabel("feature 0" if shown.shape[1] == 1
                          else f"features 0-{shown.shape[1] - 1}")
        top.set_xlabel("")
    bottom.set_xlabel("time step")
    return top if X is None else np.array([top, bottom], dtype=object)


def _axes_pair(ax):
    """Two Axes, labels above and observations beneath, sharing the time axis."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, pair = plt.subplots(2, 1, figsize=(9, 5), sharex=True,
                               gridspec_kw={"height_ratios": [1, 2]})
        return pair
    pair = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(pair) != 2:
        raise ValueError("With X, ax must be a pair of Axes (labels above, "
                         f"observations beneath), got {len(pair)} Axes.")
    return pair


def plot_dwell_times(estimator, y=None, *, ax=None, n_trajectories: int = 256,
                     n_steps: int = 2000, clock: str = "calibrated", random_state=None):
    """Distribution of the visit lengths of each state under the learned prior.

    For each state, the fraction of complete visits (from
    :meth:`~nldseg.LangevinSegmenter.dwell_times`) longer than ``t`` steps,
    on a log scale, beside the geometric law with the same mean
    (:meth:`~nldseg.LangevinSegmenter.mean_dwell_times`, dashed), which is
    what a Markov chain between the states would give: a straight line.
    Complete visits are biased short when visits are not much shorter than
    ``n_steps`` (the long ones are more often cut by a path's end), so the
    solid curves then fall below the dashed ones at long ``t``.

    Parameters
    ----------
    estimator : LangevinSegmenter
        A fitted estimator.
    y : array-like of shape (n_timesteps,) or (n_sequences, n_timesteps), \
            or list of such arrays, default=None
        Labelled data in the model's states (``predict``'s labels, or true
        labels mapped onto them): the same curves of its complete visits
        (each sequence's first and last visit dropped as cut) are drawn
        dotted, in the state's colour.
    ax : matplotlib Axes, default=None
    n_trajectories : int, default=256
        Simulated prior paths.
    n_steps : int, default=2000
        Observation steps per path.
    clock : {"calibrated", "model"}, default="calibrated"
        The prior's clock (see
        :meth:`~nldseg.LangevinSegmenter.transition_matrix`).
    random_state : int, RandomState instance or None, default=None
        Seeds the simulation; ``None`` uses the estimator's.

    Returns
    -------
    ax : matplotlib Axes
    """
    kwargs = dict(n_trajectories=n_trajectories, n_steps=n_steps, clock=clock,
                  random_state=random_state)
    visits = estimator.dwell_times(**kwargs)
    means = estimator.mean_dwell_times(**kwargs)
    data = None
    if y is not None:
        from nldseg._kinetics import visit_lengths

        rows = [np.asarray(r) for r in (y if isinstance(y, list) else
                                         np.atleast_2d(np.asarray(y)))]
        found = [visit_lengths(r[None, :], len(means)) for r in rows]
        data = [np.concatenate([f[k] for f in found]) for k in range(len(means))]
    ax = _axes(ax)
    for k, (v, mean) in enumerate(zip(visits, means)):
        if len(v) == 0:
            continue
        t = np.arange(1, v.max() + 1)
        survival = (v[None, :] > t[:, None]).mean(1)
        (line,) = ax.step(t, survival, where="post",
                          label=f"state {k} (mean {mean:.1f})")
        if np.isfinite(mean) and mean > 1:
            ax.plot(t, (1 - 1 / mean) ** t, "--", color=line.get_color(), lw=1)
        if data is not None and len(data[k]):
            t = np.arange(1, data[k].max() + 1)
            ax.step(t, (data[k][None, :] > t[:, None]).mean(1), ":", where="post",
                    color=line.get_color(), lw=1.5,
                    label=f"state {k}, data (mean {data[k].mean():.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("visit length t (observation steps)")
    ax.set_ylabel("fraction of visits longer than t")
    clock = ("calibrated clock" if clock == "calibrated" else "clock as trained")
    ax.set_title(f"Dwell times of the learned prior, {clock}\n(dashed: geometric"
                 + (", dotted: data)" if data is not None else ")"))
    ax.legend(loc="upper right")
    return ax


def plot_energy_profiles(estimator, *, ax=None):
    """Energy along the minimum energy path between each pair of neighbouring states.

    Parameters
    ----------
    estimator : LangevinSegmenter
        A fitted estimator.
    ax : matplotlib Axes, default=None

    Returns
    -------
    ax : matplotlib Axes
        One line per pair ``i -> j``, against the path's arc length from
        ``i``'s minimum, in units of ``1 / beta`` above ``i``'s minimum.
    """
    ax = _axes(ax)
    land = estimator.energy_
    mep = estimator.minimum_energy_paths()
    for (i, j), path in mep["paths"].items():
        if not np.isfinite(mep["barriers"][i, j]):
            continue
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0),
                                                               axis=1))])
        e = land.beta * (land(path) - land.minima_energies[i])
        ax.plot(arc, e, label=f"{i} -> {j}")
    ax.set_xlabel("arc length along the path (latent units)")
    ax.set_ylabel("beta (E - E(minimum of the first state))")
    ax.set_title("Energy along the minimum energy paths")
    if ax.get_lines():
        ax.legend(loc="best")
    return ax


def plot_kinetic_network(estimator, *, ax=None, lag: int = 1, n_trajectories: int = 256,
                         n_steps: int = 2000, clock: str = "calibrated",
                         random_state=None):
    """States as nodes sized by occupancy, arrows weighted by transition probability.

    Nodes sit at the minima projected on the plane through them
    (:func:`minima_plane`); an arrow ``i -> j`` has a width proportional to
    the probability of moving from ``i`` to ``j`` within ``lag`` steps
    (:meth:`~nldseg.LangevinSegmenter.transition_matrix`, learned prior), and
    is labelled with it.

    Parameters
    ----------
    estimator : LangevinSegmenter
        A fitted estimator.
    ax : matplotlib Axes, default=None
    lag, n_trajectories, n_steps, clock, random_state
        Passed to :meth:`~nldseg.LangevinSegmenter.transition_matrix`.

    Returns
    -------
    ax : matplotlib Axes
    """
    ax = _axes(ax)
    land = estimator.energy_
    P = estimator.transition_matrix(lag, n_trajectories=n_trajectories,
                                    n_steps=n_steps, clock=clock,
                                    random_state=random_state)
    occupancy = estimator.state_occupancy_
    origin, basis = minima_plane(land)
    xy = (land.minima - origin) @ basis.T
    if len(xy) == 1 or np.ptp(xy, axis=0).max() == 0:
        xy = np.array([[np.cos(a), np.sin(a)] for a in
                       2 * np.pi * np.arange(len(xy)) / max(len(xy), 1)])
    off = P[~np.eye(len(P), dtype=bool)]
    top = off.max() if off.size and off.max() > 0 else 1.0
    for i in range(len(P)):
        for j in range(len(P)):
            if i == j or P[i, j] <= 0:
                continue
            a, b = xy[i], xy[j]
            normal = np.array([b[1] - a[1], a[0] - b[0]]) * 0.06  # i->j beside j->i
            ax.annotate("", xy=b + normal, xytext=a + normal,
                        arrowprops=dict(arrowstyle="-|>", lw=0.5 + 4 * P[i, j] / top,
                                        color="0.3", shrinkA=18, shrinkB=18))
            mid = 0.5 * (a + b) + 2 * normal
            ax.annotate(f"{P[i, j]:.3f}", mid, fontsize=8, ha="center", color="0.2")
    ax.scatter(xy[:, 0], xy[:, 1], s=3000 * np.asarray(occupancy) + 50,
               c=np.arange(len(xy)), cmap="tab10", vmin=0, vmax=9, alpha=0.8, zorder=3)
    for k, (a, b) in enumerate(xy):
        ax.annotate(f"{k}\n{occupancy[k]:.2f}", (a, b), ha="center", va="center",
                    fontsize=9, zorder=4)
    span = np.ptp(xy, axis=0).max() if len(xy) > 1 else 1.0
    ax.set_xlim(xy[:, 0].min() - 0.3 * span, xy[:, 0].max() + 0.3 * span)
    ax.set_ylim(xy[:, 1].min() - 0.3 * span, xy[:, 1].max() + 0.3 * span)
    ax.set_xlabel("PC 1 of minima")
    ax.set_ylabel("PC 2 of minima")
    ax.set_title(f"Kinetic network: occupancy, and P(i -> j) within {lag} step(s)")
    return ax
