r"""Kinetics of the learned prior: simulated paths, core-set labels, rates.

What the landscape says about time, beyond occupancy:

* :func:`simulate_prior` integrates the *prior* SDE (no encoder, no posterior
  drift) for a batch of independent paths with the Euler-Maruyama step of
  :mod:`nldseg._dynamics`, recording the latent position at every
  observation (``round(1 / dt)`` Euler steps each as trained; more on a
  faster clock, :func:`clock_steps`).
* :func:`calibrate_clock` finds how much faster the prior's clock must run
  for its paths to switch states as often as the posterior's paths through
  the training data do (see its docstring for why they differ).
* :func:`core_set_labels` turns such paths into state sequences by
  milestoning, so that recrossings of a barrier top are not counted as visits
  (see its docstring for the rule).
* :func:`markov_state_model` turns them into the Markov chain whose forward
  filter labels the steps under ``inference="markov"``.
* :func:`transition_counts`, :func:`row_stochastic`, :func:`visit_lengths`
  and :func:`mean_visit_lengths` read transition matrices and dwell times off
  labelled paths; :func:`implied_timescales` and
  :func:`mean_first_passage_times` read relaxation and passage times off
  the transition counts and matrices.
* :func:`minimum_energy_path` (a simplified string method),
  :func:`refine_saddle` and :func:`state_saddles` find the saddle between two
  wells, and :func:`eyring_kramers_rate` turns it into a rate.

Every function here takes tensors, arrays or callables; the estimator's
methods (:meth:`nldseg.LangevinSegmenter.transition_matrix` and friends)
only validate their arguments and chain these calls.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from nldseg._dynamics import euler_step
from nldseg._landscape import gradient_function
from nldseg._validation import active_by_step

START_RULES = frozenset({"stationary", "minima"})
#: Euler steps of all paths together in each round of :func:`calibrate_clock`,
#: and the longest piece of a posterior path it compares with the prior.
CLOCK_BUDGET = 1_000_000
CLOCK_PIECE = 500
#: Bounds of a calibrated clock (a prior 100 times too fast or too slow).
CLOCK_LIMIT = 100.0
#: :func:`metastable_state_map`: two states are one when the posterior paths
#: have a gap of at least this factor in their implied time scales ...
MIN_TIMESCALE_GAP = 6.0
#: ... and cross between the two at least this many times per exit from the pair.
MIN_EXCHANGE_RATIO = 3.0


# ----------------------------------------------------------------- simulation
def initial_states(minima: np.ndarray, hessians: np.ndarray, weights: np.ndarray,
                   beta: float, n_paths: int, generator: torch.Generator, *,
                   start: str = "stationary",
                   mass: np.ndarray | None = None) -> torch.Tensor:
    r"""Starting states of ``n_paths`` prior paths (float32).

    ``start="stationary"`` approximates the stationary law
    ``exp(-beta E)``: a state is drawn with probability ``weights`` (the
    states' occupancies), then a position from the Laplace Gaussian of its
    minimum, ``N(m_i, (beta H_i)^{-1})``. ``start="minima"`` puts path ``k``
    exactly at the minimum of state ``k mod n_states``. With ``mass`` given
    (underdamped dynamics) the momentum is appended, drawn from its
    stationary law ``N(0, M / beta)`` (kinetic energy ``p^2 / (2M)``).

    Parameters
    ----------
    minima : ndarray of shape (n_states, d)
    hessians : ndarray of shape (n_states, d, d)
        Positive-definite Hessians of ``E`` at ``minima``.
    weights : ndarray of shape (n_states,)
        Probability of starting in each state (``"stationary"`` only).
    beta : float
    n_paths : int
    generator : torch.Generator
    start : {"stationary", "minima"}, default="stationary"
    mass : ndarray of shape (d,) or None, default=None

    Returns
    -------
    state : Tensor of shape (n_paths, d) or (n_paths, 2 d)
    """
    minima_t = torch.as_tensor(minima, dtype=torch.float64)
    n_states, d = minima_t.shape
    if start == "minima":
        z = minima_t[torch.arange(n_paths) % n_states]
    else:
        w = torch.as_tensor(np.asarray(weights, dtype=float))
        which = torch.multinomial(w / w.sum(), n_paths, replacement=True,
                                  generator=generator)
        cov = np.linalg.inv(beta * np.asarray(hessians, dtype=float))
        chol = torch.as_tensor(np.linalg.cholesky(0.5 * (cov + cov.transpose(0, 2, 1))))
        eps = torch.randn((n_paths, d), generator=generator, dtype=torch.float64)
        z = minima_t[which] + torch.einsum("nij,nj->ni", chol[which], eps)
    return with_momentum(z, mass, beta, generator).float()


def with_momentum(z: torch.Tensor, mass: np.ndarray | None, beta: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Positions ``z`` (n, d), with momenta from ``N(0, M / beta)`` appended.

    ``mass=None`` (overdamped dynamics) returns ``z`` unchanged.
    """
    if mass is None:
        return z
    std = torch.sqrt(torch.as_tensor(np.asarray(mass, dtype=float)) / beta)
    p = torch.randn(z.shape, generator=generator, dtype=torch.float64) * std
    return torch.cat([z.double(), p], dim=1).to(z.dtype)


def clock_steps(dt: float, time_scale: float = 1.0) -> tuple[int, float]:
    """Whole Euler steps per observation interval, and the remainder, on a clock.

    The trained prior takes ``n0 = round(1 / dt)`` steps of ``dt`` per
    observation. On a clock ``time_scale`` times as fast, one observation
    spans ``time_scale * n0 * dt`` of the prior's time: ``n_sub`` whole steps
    of ``dt`` and one step of ``remainder < dt`` (0: none). Every step but
    the remainder is the trained one, so the chain's rate grows smoothly with
    the clock; ``time_scale=1`` is the trained chain exactly.

    Examples
    --------
    >>> clock_steps(0.5)
    (2, 0.0)
    >>> n_sub, remainder = clock_steps(0.5, 2.2)
    >>> n_sub, round(remainder, 6)
    (4, 0.2)
    """
    n0 = max(1, round(1.0 / dt))
    total = time_scale * n0
    n_sub = math.floor(total + 1e-9)
    remainder = (total - n_sub) * dt
    return n_sub, remainder if remainder > 1e-9 * dt else 0.0


def simulate_prior(grad, state: torch.Tensor, coef: dict, *, latent_dim: int,
                   dt: float, n_steps: int, generator: torch.Generator,
                   n_sub: int | None = None,
                   remainder: tuple[float, dict] | None = None,
                   lengths: np.ndarray | None = None) -> torch.Tensor:
    """Euler-Maruyama paths of the prior SDE, positions at every observation.

    Each of the ``n_steps`` observation intervals takes ``n_sub`` (by
    default ``round(1 / dt)``, one time unit) steps of
    :func:`nldseg._dynamics.euler_step` with no
    posterior control: overdamped ``z += -grad E(z) dt / gamma + sigma dW``,
    underdamped ``q += M^-1 p dt``, ``p += (-grad E(q) - gamma M^-1 p) dt +
    sigma dW``. Noise comes from ``generator`` only (the global RNG is left
    alone). Cost: ``n_steps * round(1/dt)`` gradient evaluations on the batch
    (with ``lengths``, on the paths still running).

    Parameters
    ----------
    grad : callable
        Maps positions (n, latent_dim) to ``grad E`` (same shape).
    state : Tensor of shape (n_paths, state_dim)
        Starting states (``z``, or ``concat(q, p)`` underdamped).
    coef : dict
        Step constants from :func:`nldseg._dynamics.step_coefficients`.
    latent_dim : int
        Dimension of the positions.
    dt : float
        Euler step (``coef`` must be computed for it).
    n_steps : int
        Observation intervals to simulate.
    generator : torch.Generator
        Source of the Brownian increments.
    n_sub : int or None, default=None
        Euler steps of ``dt`` per observation interval; ``None``:
        ``round(1 / dt)`` (see :func:`clock_steps` for a faster clock).
    remainder : (float, dict) or None, default=None
        One more Euler step at the end of every observation interval: its
        size and its ``coef``.
    lengths : ndarray of shape (n_paths,) or None, default=None
        Observations to record on each path, each in ``1..n_steps + 1``: a
        path is no longer simulated once it has its ``lengths[i]``
        positions, so paths of mixed lengths cost the sum of their lengths,
        not the longest times their number. ``None``: all ``n_steps + 1``.
        Paths that run equally long draw the same noise either way.

    Returns
    -------
    positions : Tensor of shape (n_paths, n_steps + 1, latent_dim)
        The latent position at observations ``0..n_steps`` (row 0 is the
        start); NaN after a path's ``lengths[i]`` positions.
    """
    d = latent_dim
    n_sub = max(1, round(1.0 / dt)) if n_sub is None else n_sub
    steps = [(dt, coef)] * n_sub + ([remainder] if remainder is not None else [])
    n = state.shape[0]
    if lengths is None:
        running, order = [n] * (n_steps + 1), None
    else:
        lengths = np.asarray(lengths)
        if lengths.shape != (n,) or (n and not 1 <= lengths.min() <= lengths.max()
                                     <= n_steps + 1):
            raise ValueError(f"lengths must hold one length in 1..n_steps + 1 = "
                             f"{n_steps + 1} for each of the {n} paths; got shape "
                             f"{lengths.shape}"
                             + (f", values {lengths.min()}..{lengths.max()}."
                                if lengths.size else "."))
        active = active_by_step(lengths)
        # Longest first: the paths still running are a prefix of the batch.
        running = [len(a) for a in active] + [0] * (n_steps + 1 - len(active))
        order = torch.as_tensor(active[0]) if n else torch.zeros(0, dtype=torch.long)
        state = state[order]
    out = state.new_full((n_steps + 1, n, d), float("nan"))
    out[0] = state[:, :d]
    no_control = state.new_zeros((n, d))
    with torch.no_grad():
        for k in range(n_steps):
            m = running[k + 1]
            if m == 0:
                break
            state = state[:m]
            for h, c in steps:
                noise = torch.randn((m, d), generator=generator, dtype=state.dtype)
                state = euler_step(state, no_control[:m], grad(state[:, :d]),
                                   noise * c["noise_scale"], h, c)
            out[k + 1, :m] = state[:, :d]
    if order is not None:
        out[:, order] = out.clone()
    return out.transpose(0, 1)


# -------------------------------------------------------------------- labels
def core_thresholds(minima_energies: np.ndarray, barriers: np.ndarray,
                    fraction: float) -> np.ndarray:
    """Energy level below which a point of basin ``i`` is in core ``i``.

    ``E(m_i) + fraction * B_i``, where ``B_i`` is the lowest barrier out of
    state ``i`` (``min_j barriers[i, j]``). A state with no finite barrier
    (a single well) gets ``inf``: its whole basin is its core.

    Parameters
    ----------
    minima_energies : ndarray of shape (n_states,)
    barriers : ndarray of shape (n_states, n_states)
        ``E(saddle_ij) - E(m_i)``; ``inf`` where ``i`` and ``j`` are not
        neighbours (and on the diagonal).
    fraction : float
        In ``(0, 1]``.

    Returns
    -------
    thresholds : ndarray of shape (n_states,)
    """
    lowest = np.min(np.where(np.eye(len(barriers), dtype=bool), np.inf, barriers),
                    axis=1, initial=np.inf)
    return np.asarray(minima_energies, dtype=float) + fraction * lowest


def core_set_labels(basins: np.ndarray, energies: np.ndarray,
                    thresholds: np.ndarray) -> np.ndarray:
    """Milestoning (core-set) labels of paths.

    A point is *in core i* when it lies in the basin of attraction of state
    ``i`` **and** its energy is below ``thresholds[i]`` (see
    :func:`core_thresholds`: ``E(m_i)`` plus a fraction of the lowest barrier
    out of ``i``). The label at a step is the core visited last; the first
    step of a path is labelled by its basin (in a core or not). A path that
    crosses a ridge and falls back before reaching the other side's core
    therefore keeps its label: recrossings at a barrier top are not visits.

    Parameters
    ----------
    basins : ndarray of shape (n_paths, n_steps)
        Basin (state) of every point.
    energies : ndarray of shape (n_paths, n_steps)
        ``E`` of every point.
    thresholds : ndarray of shape (n_states,)

    Returns
    -------
    labels : ndarray of shape (n_paths, n_steps), int64

    Examples
    --------
    >>> import numpy as np
    >>> basins = np.array([[0, 0, 1, 0, 1, 1]])
    >>> energies = np.array([[0.0, 0.2, 2.0, 0.3, 0.4, 0.1]])
    >>> core_set_labels(basins, energies, np.array([1.0, 1.0])).tolist()
    [[0, 0, 0, 0, 1, 1]]
    """
    basins = np.asarray(basins, dtype=np.int64)
    in_core = np.asarray(energies) < np.asarray(thresholds)[basins]
    steps = np.arange(basins.shape[1])
    last = np.where(in_core, steps, 0)
    last[:, 0] = 0
    np.maximum.accumulate(last, axis=1, out=last)
    return np.take_along_axis(basins, last, axis=1)


def transition_counts(labels: np.ndarray, n_states: int, lag: int) -> np.ndarray:
    """Count pairs ``(labels[:, t], labels[:, t + lag])`` over all paths and ``t``.

    Returns an (n_states, n_states) integer matrix; paths shorter than
    ``lag + 1`` contribute nothing.
    """
    labels = np.asarray(labels, dtype=np.int64)
    a, b = labels[:, :-lag].ravel(), labels[:, lag:].ravel()
    return np.bincount(a * n_states + b, minlength=n_states * n_states).reshape(
        n_states, n_states)


def row_stochastic(counts: np.ndarray) -> np.ndarray:
    """Normalise each row of ``counts`` to sum 1; a row with no count becomes ``e_i``."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(1, keepdims=True)
    out = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    empty = total[:, 0] == 0
    out[empty, np.flatnonzero(empty)] = 1.0
    return out


def implied_timescales(counts: np.ndarray, lag: int = 1) -> np.ndarray:
    """Implied time scales of the reversible chain estimated from transition counts.

    The counts are symmetrised (``C + C^T``: detailed balance) and the
    eigenvalues ``lambda_i`` of the resulting row-stochastic matrix give
    ``t_i = -lag / ln(lambda_i)``, the relaxation times of its slow
    processes in steps. States without counts are left out. An eigenvalue of
    1 beyond the first (parts of the chain never joined by a transition)
    gives ``inf``, one at or below 0 gives 0.

    Parameters
    ----------
    counts : ndarray of shape (n_states, n_states)
        :func:`transition_counts` at ``lag``.
    lag : int, default=1

    Returns
    -------
    timescales : ndarray of shape (n_visited - 1,)
        Slowest first, in steps.

    Examples
    --------
    >>> import numpy as np
    >>> p = 0.1  # each state left with probability p per step
    >>> t = implied_timescales(np.array([[1 - p, p], [p, 1 - p]]) * 1000)
    >>> bool(np.isclose(t[0], -1 / np.log(1 - 2 * p)))
    True
    """
    c = np.asarray(counts, dtype=float)
    c = c + c.T
    total = c.sum(1)
    seen = total > 0
    c, total = c[seen][:, seen], total[seen]
    root = np.sqrt(total)
    # D^-1/2 C D^-1/2 is symmetric and has the eigenvalues of D^-1 C.
    ev = np.sort(np.linalg.eigvalsh(c / root[:, None] / root[None, :]))[::-1][1:]
    ev = np.clip(ev, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.where(ev >= 1.0 - 1e-12, np.inf,
                        np.where(ev > 0, -lag / np.log(np.where(ev > 0, ev, 0.5)), 0.0))


def mean_first_passage_times(transition: np.ndarray, lag: int = 1) -> np.ndarray:
    """Mean first-passage times between the states of a Markov chain, in steps.

    ``m[i, j]`` is the expected time for the chain started in ``i`` to
    first reach ``j``: ``m[j, j] = 0`` and, for ``i != j``,
    ``m[i, j] = lag + sum_{k != j} P[i, k] m[k, j]``, with ``P`` the
    transition matrix at ``lag`` steps (the Markov state model's estimate,
    as deeptime's ``mfpt``; the time is resolved to multiples of ``lag``).
    A state from which the chain may never reach ``j`` (it can get to a
    state that has no path to ``j`` without passing ``j``) gets ``inf``.

    Parameters
    ----------
    transition : ndarray of shape (n_states, n_states)
        Row-stochastic.
    lag : int, default=1
        Steps per transition of ``transition``.

    Returns
    -------
    mfpt : ndarray of shape (n_states, n_states)

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[0.9, 0.1], [0.3, 0.7]])
    >>> mean_first_passage_times(P).round(6).tolist()  # 1 / 0.1 and 1 / 0.3
    [[0.0, 10.0], [3.333333, 0.0]]
    """
    p = np.asarray(transition, dtype=float)
    n = p.shape[0]
    edge = p > 0
    out = np.zeros((n, n))
    for j in range(n):
        others = np.arange(n) != j
        # States with a path to j (any path: reaching j ends the passage).
        reach = _reaching(edge, ~others, np.ones(n, dtype=bool))
        # Lost: a state that can get to one without a path to j, avoiding j.
        lost = _reaching(edge, ~reach, others)
        rest = np.flatnonzero(~lost & others)
        out[lost, j] = np.inf
        if rest.size:
            a = np.eye(rest.size) - p[np.ix_(rest, rest)]
            out[rest, j] = np.linalg.solve(a, np.full(rest.size, float(lag)))
    return out


def _reaching(edge: np.ndarray, targets: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """States with a path into ``targets`` that steps out of ``allowed`` states only.

    ``edge[a, b]``: a step from ``a`` to ``b`` is possible. ``targets`` and
    ``allowed`` are boolean masks; the result includes ``targets``.
    """
    found = targets.copy()
    while True:
        more = found | (edge[:, found].any(1) & allowed)
        if (more == found).all():
            return found
        found = more


def metastable_state_map(labels, n_states: int, *,
                         min_gap: float = MIN_TIMESCALE_GAP,
                         min_exchange: float = MIN_EXCHANGE_RATIO) -> np.ndarray:
    """Which states the posterior paths treat as one: pairs that take turns quickly.

    A state of a switching system is metastable: once in it, the system
    stays for a while and leaves in no fixed direction. A latent path can
    also go round a cycle through two wells, each of which holds one phase
    of a slow oscillation (seen on simulated recordings of motion: a period-80
    activity alternating between two wells every 29-53 steps, inside segments
    of 800 steps). The two wells are then one state at the system's own
    time scale. This joins such pairs, one at a time, while both signs hold:

    * the implied time scales of the paths' labels (:func:`implied_timescales`,
      lag 1) have a gap: two consecutive finite ones differ by ``min_gap``
      or more (wells that are states relax on comparable time scales: at
      most a factor 2.61 apart on the fits measured, the joined pairs 11-19);
    * some pair crosses from one of its states to the other at least
      ``min_exchange`` times for every time the paths leave the pair. Of
      the pairs above that, the highest ratio is joined. (A state merely
      left faster than the others, as a less sticky state of a Markov
      chain, passes the first test but not this one: its exits spread over
      the other states, about one crossing per exit or less.)

    Nothing is joined with fewer than three states.

    Parameters
    ----------
    labels : list of 1-D int arrays, or 2-D int array
        State labels along each path (core-set labels: :func:`label_paths`).
    n_states : int
    min_gap : float, default=MIN_TIMESCALE_GAP
    min_exchange : float, default=MIN_EXCHANGE_RATIO

    Returns
    -------
    state_map : ndarray of shape (n_states,)
        New state of each state, ``0..k-1``; the identity when nothing joins.

    Examples
    --------
    >>> import numpy as np
    >>> # States 0 and 1 take turns every 10 steps, for 400 steps at a time,
    >>> # then state 2 or 3 holds for 400.
    >>> cycle = np.repeat(np.tile([0, 1], 20), 10)
    >>> path = np.concatenate([np.r_[cycle, np.full(400, 2 + i % 2)] for i in range(8)])
    >>> metastable_state_map([path], 4).tolist()
    [0, 0, 1, 2]
    """
    # Lag-1 counts between joined states are sums of those between their parts.
    first = sum((transition_counts(np.asarray(row, dtype=np.int64)[None], n_states, 1)
                 for row in labels if len(row) > 1), np.zeros((n_states,) * 2, np.int64))
    state_map = np.arange(n_states)
    while state_map.max() + 1 >= 3:
        k = int(state_map.max()) + 1
        counts = np.zeros((k, k), np.int64)
        np.add.at(counts, (state_map[:, None], state_map[None, :]), first)
        t = implied_timescales(counts)
        t = t[np.isfinite(t) & (t > 0)]
        if t.size < 2 or np.max(t[:-1] / t[1:]) < min_gap:
            break
        moves = counts - np.diag(np.diag(counts))
        out = moves.sum(1)
        best, best_ratio = None, -np.inf
        for i in range(k):
            for j in range(i + 1, k):
                crossings = moves[i, j] + moves[j, i]
                ratio = crossings / max(out[i] + out[j] - crossings, 1)
                if ratio > best_ratio:
                    best, best_ratio = (i, j), ratio
        if best_ratio < min_exchange:
            break
        state_map[state_map == best[1]] = best[0]
        state_map = np.unique(state_map, return_inverse=True)[1]
    return state_map


def mean_visit_lengths(labels: np.ndarray, n_states: int) -> np.ndarray:
    """Mean visit length per state: time spent in it over the exits from it.

    Every step ``t -> t + 1`` of a path counts as one unit of time in the state
    at ``t``, and as an exit when the label changes. Visits cut by the ends of
    a path contribute their time but no exit, which is the maximum-likelihood
    estimate for geometric (Markov) visit lengths under this censoring: no
    bias towards short visits, unlike the mean of the complete visits
    (:func:`visit_lengths`). Equal to ``1 / (1 - P_ii)`` of the lag-1
    :func:`transition_counts`. NaN for a state never left.

    Returns
    -------
    mean_lengths : ndarray of shape (n_states,)

    Examples
    --------
    >>> import numpy as np
    >>> mean_visit_lengths(np.array([[0, 0, 0, 1, 1, 0]]), 2).tolist()
    [3.0, 2.0]
    """
    counts = transition_counts(labels, n_states, 1)
    time = counts.sum(1).astype(float)
    exits = time - np.diag(counts)
    return np.divide(time, exits, out=np.full(n_states, np.nan), where=exits > 0)


def visit_lengths(labels: np.ndarray, n_states: int) -> list[np.ndarray]:
    """Lengths (in steps) of the complete visits to each state.

    A visit is a run of equal labels. The first and the last run of every
    path are cut by the path's ends (censored), so they are dropped: only
    visits that both start and end inside a path are returned.

    Returns
    -------
    lengths : list of n_states int64 ndarrays
    """
    per_state: list[list[np.ndarray]] = [[] for _ in range(n_states)]
    for row in np.asarray(labels, dtype=np.int64):
        change = np.flatnonzero(row[1:] != row[:-1]) + 1
        if len(change) < 2:
            continue  # At most two (censored) runs.
        starts, ends = change[:-1], change[1:]
        states = row[starts]
        for s in range(n_states):
            per_state[s].append(ends[states == s] - starts[states == s])
    return [np.concatenate(v) if v else np.zeros(0, dtype=np.int64)
            for v in per_state]


# ----------------------------------------------------------- saddles and rates
def _reparametrise(path: np.ndarray) -> np.ndarray:
    """Images redistributed at equal arc length along the polyline ``path``."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] == 0:
        return path.copy()
    target = np.linspace(0.0, s[-1], len(path))
    return np.stack([np.interp(target, s, path[:, k]) for k in range(path.shape[1])],
                    axis=1)


def minimum_energy_path(gradient, hessian, a: np.ndarray, b: np.ndarray, *,
                        n_images: int = 33, n_iter: int = 2000,
                        tol: float = 1e-8) -> np.ndarray:
    """A minimum energy path from minimum ``a`` to minimum ``b`` (string method).

    The simplified string method (E, Ren and Vanden-Eijnden, 2007): images
    start evenly spaced on the segment ``a -> b``; each iteration moves every
    interior image one gradient-descent step ``-h grad E`` and then
    redistributes the images at equal arc length along the polyline
    (linear interpolation). The end points stay put. It stops when no image
    moved more than ``tol`` times ``|b - a|`` in an iteration. The step ``h``
    is ``0.5 / lambda_max``, the largest absolute Hessian eigenvalue on the
    initial segment, and a step moves an image at most ``|b - a| / n_images``.

    Parameters
    ----------
    gradient : callable
        ``grad E`` of points (n, d) as an ndarray (n, d).
    hessian : callable
        Hessian of ``E`` at points (n, d) as an ndarray (n, d, d).
    a, b : ndarray of shape (d,)
    n_images : int, default=33
    n_iter : int, default=2000
    tol : float, default=1e-8

    Returns
    -------
    path : ndarray of shape (n_images, d)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    s = np.linspace(0.0, 1.0, n_images)[:, None]
    path = a * (1 - s) + b * s
    length = float(np.linalg.norm(b - a)) or 1.0
    curvature = float(np.abs(np.linalg.eigvalsh(hessian(path))).max())
    h = 0.5 / max(curvature, 1e-12)
    max_step = length / n_images
    for _ in range(n_iter):
        step = h * gradient(path[1:-1])
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, max_step / np.maximum(norm, 1e-300))
        moved = path.copy()
        moved[1:-1] -= step
        new = _reparametrise(moved)
        delta = float(np.abs(new - path).max())
        path = new
        if delta < tol * length:
            break
    return path


def refine_saddle(gradient, hessian, z: np.ndarray, *, n_iter: int = 50,
                  gtol: float = 1e-6) -> tuple[np.ndarray, bool]:
    """Newton's method for the stationary point near ``z``; check it is a saddle.

    Returns the point and whether it is an index-1 saddle: gradient norm
    below ``gtol`` and exactly one negative Hessian eigenvalue.
    """
    z = np.asarray(z, dtype=float).copy()
    for _ in range(n_iter):
        g = gradient(z[None])[0]
        try:
            step = np.linalg.solve(hessian(z[None])[0], g)
        except np.linalg.LinAlgError:
            break
        z -= step
        if not np.isfinite(z).all():
            return z, False
        if np.abs(step).max() < 1e-12:
            break
    eig = np.linalg.eigvalsh(hessian(z[None])[0])
    ok = (np.linalg.norm(gradient(z[None])[0]) < gtol and int((eig < 0).sum()) == 1)
    return z, bool(ok)


def path_saddle(energy, gradient, hessian, path: np.ndarray) -> tuple[np.ndarray, bool]:
    """The saddle on a minimum energy path: its highest image, refined.

    The highest image is refined by :func:`refine_saddle`; the refined point
    is kept if it is an index-1 saddle no further than two image spacings
    from the highest image, else the highest image itself is returned (and
    the flag is False).
    """
    top = int(np.argmax(energy(path)))
    spacing = float(np.linalg.norm(path[1] - path[0]))
    z, ok = refine_saddle(gradient, hessian, path[top])
    ok = ok and float(np.linalg.norm(z - path[top])) <= 2.0 * spacing
    return (z, True) if ok else (path[top].copy(), False)


def _interior_minima(profile: np.ndarray) -> np.ndarray:
    """Indices of the interior images lower than both their neighbours."""
    e = np.asarray(profile, dtype=float)
    return np.flatnonzero((e[1:-1] < e[:-2]) & (e[1:-1] < e[2:])) + 1


def has_interior_minimum(profile: np.ndarray) -> bool:
    """Whether an energy profile along a path dips between its ends.

    True when some interior image is lower than both its neighbours: a
    minimum energy path that passes through a third well.
    """
    return len(_interior_minima(profile)) > 0


def _crossing_segment(profile: np.ndarray, states: np.ndarray, i: int,
                      j: int) -> slice | None:
    """The part of a path that crosses straight from state ``i``'s basin to ``j``'s.

    ``states`` labels every image of the path. Each place where one image is
    in ``i``'s basin and the next in ``j``'s (or the reverse) is a crossing;
    its segment runs from the last local minimum of ``profile`` before it to
    the first one after it, within the two runs of images that meet there
    (the path's ends or the neighbouring changes of state where there is no
    dip), so that its top is the crossing's, not that of a dip within one
    state's basin (a state made of several minima has barriers inside it).
    Of several crossings, the one with the lowest top; ``None`` when the
    path never steps from one basin straight into the other.
    """
    e = np.asarray(profile, dtype=float)
    dips = _interior_minima(e)
    changes = np.flatnonzero(states[1:] != states[:-1]) + 1
    best, best_top = None, np.inf
    for n, c in enumerate(changes):
        if {int(states[c - 1]), int(states[c])} != {i, j}:
            continue
        run_start = int(changes[n - 1]) if n > 0 else 0
        run_end = int(changes[n + 1]) - 1 if n + 1 < len(changes) else len(e) - 1
        lo = int(dips[(dips < c) & (dips >= run_start)].max(initial=run_start))
        hi = int(dips[(dips >= c) & (dips <= run_end)].min(initial=run_end))
        top = e[lo:hi + 1].max()
        if top < best_top:
            best, best_top = slice(lo, hi + 1), top
    return best


def state_saddles(energy, gradient, hessian, minima: np.ndarray, *,
                  state_of=None, n_images: int = 33) -> dict:
    """Saddles between every pair of neighbouring states.

    For each pair ``i < j`` a minimum energy path joins the states' minima
    (:func:`minimum_energy_path`) and the top of its crossing is refined
    (:func:`path_saddle`).

    With ``state_of`` (the state of points), the states are neighbours when
    the path steps from ``i``'s basin straight into ``j``'s somewhere, and
    the saddle is the top of that crossing (:func:`_crossing_segment`): a
    state that holds several minima (wells merged into one state) has dips
    and barriers of its own along the way, which are not transitions, and a
    path that reaches ``j`` only through a third state's basin makes them no
    neighbours. Without ``state_of`` every minimum is a state of its own:
    the states are neighbours unless the profile has an interior local
    minimum (:func:`has_interior_minimum`), which is then a third well, and
    the saddle is the path's top.

    Parameters
    ----------
    energy, gradient, hessian : callable
        ``E``, ``grad E`` and the Hessian of points (n, d), as ndarrays.
    minima : ndarray of shape (n_states, d)
        One minimum per state (its deepest).
    state_of : callable or None, default=None
        State of points (n, d) -> int array (n,), numbered as ``minima``.
    n_images : int, default=33

    Returns
    -------
    saddles : dict
        ``"barriers"`` (n_states, n_states): ``E(s_ij) - E(m_i)``, ``inf``
        for non-neighbours and on the diagonal; ``"points"`` (n_states,
        n_states, d), NaN where there is none; ``"is_saddle"`` (n_states,
        n_states) bool: whether the refinement found an index-1 saddle;
        ``"paths"``: dict ``(i, j) -> ndarray (n_images, d)``.
    """
    minima = np.asarray(minima, dtype=float)
    k, d = minima.shape
    barriers = np.full((k, k), np.inf)
    points = np.full((k, k, d), np.nan)
    is_saddle = np.zeros((k, k), dtype=bool)
    paths = {}
    e_min = energy(minima)
    for i in range(k):
        for j in range(i + 1, k):
            path = minimum_energy_path(gradient, hessian, minima[i], minima[j],
                                       n_images=n_images)
            paths[i, j] = path
            profile = energy(path)
            if state_of is None:
                if has_interior_minimum(profile):
                    continue
                crossing = path
            else:
                segment = _crossing_segment(profile, np.asarray(state_of(path)), i, j)
                if segment is None:
                    continue
                crossing = path[segment]
            z, ok = path_saddle(energy, gradient, hessian, crossing)
            e_s = float(energy(z[None])[0])
            points[i, j] = points[j, i] = z
            is_saddle[i, j] = is_saddle[j, i] = ok
            barriers[i, j], barriers[j, i] = e_s - e_min[i], e_s - e_min[j]
    return {"barriers": barriers, "points": points, "is_saddle": is_saddle,
            "paths": paths}


def escape_eigenvalue(h_saddle: np.ndarray, gamma: float,
                      mass: np.ndarray | None = None) -> float:
    r"""Growth rate ``lambda_+`` of the unstable mode at a saddle.

    Overdamped (``mass=None``): the positive eigenvalue of the linearised
    drift ``-H_s / gamma``, i.e. ``|lambda_-(H_s)| / gamma``. Underdamped: the
    largest real eigenvalue of ``[[0, M^{-1}], [-H_s, -gamma M^{-1}]]``, the
    linearisation of ``dq = M^{-1} p dt, dp = (-grad E - gamma M^{-1} p) dt``;
    in one dimension ``sqrt(g^2/4 + w_b^2) - g/2`` with ``g = gamma / M`` and
    ``w_b^2 = |H_s| / M`` (Kramers' friction factor).
    """
    h_saddle = np.asarray(h_saddle, dtype=float)
    if mass is None:
        return float(-np.linalg.eigvalsh(h_saddle).min() / gamma)
    d = h_saddle.shape[0]
    inv_m = np.diag(1.0 / np.broadcast_to(np.asarray(mass, dtype=float), (d,)))
    a = np.block([[np.zeros((d, d)), inv_m], [-h_saddle, -gamma * inv_m]])
    return float(np.linalg.eigvals(a).real.max())


def eyring_kramers_rate(barrier: float, h_min: np.ndarray, h_saddle: np.ndarray,
                        beta: float, gamma: float,
                        mass: np.ndarray | None = None) -> float:
    r"""Eyring-Kramers rate of escape from a minimum over a saddle.

    .. math::

        k = \frac{\lambda_+}{2\pi}
            \sqrt{\frac{\det H(m)}{|\det H(s)|}}\, e^{-\beta (E(s) - E(m))}

    with ``lambda_+`` from :func:`escape_eigenvalue`. Overdamped, for
    ``dz = -gamma^{-1} grad E dt + sqrt(2 / (beta gamma)) dW``, this is
    ``|lambda_-(H_s)| / (2 pi gamma) sqrt(det H_m / |det H_s|) exp(-beta dE)``
    (time rescaled by ``gamma`` from the standard form). Underdamped it is the
    multidimensional Kramers (Langer) rate at any friction above the
    energy-diffusion regime. Valid for barriers of several ``1 / beta``;
    rates are per unit time (one observation step).

    Parameters
    ----------
    barrier : float
        ``E(s) - E(m)``.
    h_min, h_saddle : ndarray of shape (d, d)
        Hessians at the minimum and at the saddle.
    beta, gamma : float
    mass : ndarray of shape (d,) or None, default=None
        ``None`` for overdamped dynamics.

    Returns
    -------
    rate : float

    Examples
    --------
    >>> import numpy as np
    >>> # E = (x^2 - 1)^2 in 1-D: H(m) = 8, H(s) = -4, barrier 1.
    >>> k = eyring_kramers_rate(1.0, np.array([[8.0]]), np.array([[-4.0]]),
    ...                         beta=3.0, gamma=1.0)
    >>> bool(np.isclose(k, 4 / (2 * np.pi) * np.sqrt(2) * np.exp(-3)))
    True
    """
    _, logdet_m = np.linalg.slogdet(np.asarray(h_min, dtype=float))
    _, logdet_s = np.linalg.slogdet(np.asarray(h_saddle, dtype=float))
    lam = escape_eigenvalue(h_saddle, gamma, mass)
    return float(lam / (2 * math.pi) * math.exp(0.5 * (logdet_m - logdet_s)
                                                - beta * barrier))


# ------------------------------------------------- on a fitted model's landscape
def landscape_saddles(landscape) -> dict:
    """:func:`state_saddles` between the states of an :class:`EnergyLandscape`.

    The paths join the deepest minimum of each state (``landscape.minima``).
    """
    return state_saddles(landscape, landscape.gradient, landscape.hessian,
                         landscape.minima, state_of=landscape.predict)


def landscape_core_thresholds(landscape, core_fraction: float) -> np.ndarray:
    """:func:`core_thresholds` of the states of a landscape (:func:`landscape_saddles`)."""
    return core_thresholds(landscape.minima_energies,
                           landscape_saddles(landscape)["barriers"], core_fraction)


def kramers_rate_matrix(landscape, saddles: dict, *, beta: float, gamma: float,
                        mass: np.ndarray | None = None) -> np.ndarray:
    """Eyring-Kramers rates between the states of a landscape.

    ``rates[i, j]`` is :func:`eyring_kramers_rate` from the deepest minimum of
    state ``i`` over the saddle between ``i`` and ``j`` (see
    :func:`state_saddles`); 0 for states that are not neighbours and on the
    diagonal; NaN where the top of the path was not refined to an index-1
    saddle.
    """
    k = landscape.n_states
    rates = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if i == j or not np.isfinite(saddles["barriers"][i, j]):
                continue
            if not saddles["is_saddle"][i, j]:
                rates[i, j] = np.nan
                continue
            h_s = landscape.hessian(saddles["points"][i, j][None])[0]
            rates[i, j] = eyring_kramers_rate(saddles["barriers"][i, j],
                                              landscape.hessians[i], h_s,
                                              beta, gamma, mass)
    return rates


class PriorPaths(NamedTuple):
    """Simulated prior paths labelled by core sets (:func:`prior_state_paths`).

    Every field but ``positions`` has shape (n_paths, n_steps + 1):
    ``positions`` (float32, with a last axis of latent_dim), the core-set
    ``labels`` (int64), and the ``basins`` (int64) and float64 ``energies``
    of the positions that the labels were made from.
    """

    positions: np.ndarray
    labels: np.ndarray
    basins: np.ndarray
    energies: np.ndarray


def prior_state_paths(module, landscape, *, dt: float, n_paths: int, n_steps: int,
                      core_fraction: float, generator: torch.Generator,
                      start: str = "stationary", time_scale: float = 1.0,
                      thresholds: np.ndarray | None = None) -> PriorPaths:
    """Simulate the fitted prior and label its paths by core sets.

    Starts are drawn by :func:`initial_states` (the states weighted by the
    landscape's sampled occupancy), paths by :func:`simulate_prior` with the
    module's fitted beta, gamma and mass on the clock of :func:`clock_steps`,
    labels by :func:`label_paths`.

    Parameters
    ----------
    module : NeuralLangevinVAE
        The fitted (frozen) model: energy, dynamics and Langevin parameters.
    landscape : EnergyLandscape
        Its wells: basins, minima, Hessians, occupancy.
    dt : float
        The fitted Euler step.
    n_paths, n_steps : int
        Paths, and observation steps after the start.
    core_fraction : float
        Fraction of the lowest barrier out of a state that bounds its core.
    generator : torch.Generator
    start : {"stationary", "minima"}, default="stationary"
    time_scale : float, default=1.0
        Prior time per observation, in units of the trained one (1: the
        trained chain; see :func:`calibrate_clock`).
    thresholds : ndarray of shape (n_states,) or None, default=None
        Core thresholds, when already computed (:func:`label_paths`).

    Returns
    -------
    PriorPaths
        The positions, their labels, basins and energies.
    """
    beta, gamma, mass = (t.detach() for t in module.langevin_params())
    underdamped = module.dynamics == "underdamped"
    state = initial_states(landscape.minima, landscape.hessians,
                           landscape.occupancy("sampled"), float(beta), n_paths,
                           generator, start=start,
                           mass=mass.double().numpy() if underdamped else None)
    paths = simulate_module_prior(module, state, dt=dt, n_steps=n_steps,
                                  generator=generator, time_scale=time_scale)
    return PriorPaths(paths, *label_paths(module, landscape, paths, core_fraction,
                                          thresholds=thresholds, return_basins=True))


class MarkovStateModel(NamedTuple):
    """The landscape's states as a Markov chain (``inference="markov"``).

    ``transition`` (n_states, n_states) is row-stochastic at a lag of one
    observation; ``points`` (n_states, n_points, latent_dim) are positions
    of the prior's paths in each state's core, over which the decoder's
    density is averaged to give the state's density of a frame.
    """

    transition: np.ndarray
    points: np.ndarray


def markov_state_model(paths: PriorPaths, landscape, *, thresholds: np.ndarray,
                       n_points: int, generator: torch.Generator) -> MarkovStateModel:
    """The Markov state model of simulated prior paths (:func:`prior_state_paths`).

    The lag-1 transition matrix of the paths' core-set ``labels``
    (:func:`transition_counts`, :func:`row_stochastic`), and ``n_points``
    positions drawn from each state's core (its basin below its core
    threshold, :func:`core_set_labels`) over the paths after their first
    point, without replacement while there are enough, with else. The cores
    are where the chain's labels say the system is in a state; the paths'
    points between cores, on their way over a barrier, would give a state's
    density of a frame tails towards the next state's frames (on the
    paper's data: the first step of a new state labelled right 95 % of the
    time with points from the whole basin, 100 % from the cores). A state
    whose core the paths never entered takes its basin's points; one whose
    basin they never entered, its minimum ``n_points`` times.

    Parameters
    ----------
    paths : PriorPaths
        Labelled paths, with the basins and energies of their positions.
    landscape : EnergyLandscape
        The states and their minima (the points of a state never entered).
    thresholds : ndarray of shape (n_states,)
        The core thresholds the labels were made with.
    n_points : int
    generator : torch.Generator
        Draws the points.

    Returns
    -------
    MarkovStateModel
    """
    k = landscape.n_states
    transition = row_stochastic(transition_counts(paths.labels, k, 1))
    positions = paths.positions
    flat = np.ascontiguousarray(positions[:, 1:].reshape(-1, positions.shape[-1]))
    basins = paths.basins[:, 1:].reshape(-1)
    in_core = paths.energies[:, 1:].reshape(-1) < np.asarray(thresholds)[basins]
    points = np.empty((k, n_points, flat.shape[1]), dtype=np.float32)
    for i in range(k):
        inside = np.flatnonzero((basins == i) & in_core)
        if len(inside) == 0:
            inside = np.flatnonzero(basins == i)
        if len(inside) == 0:
            points[i] = landscape.minima[i]
            continue
        if len(inside) >= n_points:
            pick = torch.randperm(len(inside), generator=generator)[:n_points]
        else:
            pick = torch.randint(len(inside), (n_points,), generator=generator)
        points[i] = flat[inside[pick.numpy()]]
    return MarkovStateModel(transition, points)


def simulate_module_prior(module, state: torch.Tensor, *, dt: float, n_steps: int,
                          generator: torch.Generator, time_scale: float = 1.0,
                          lengths: np.ndarray | None = None) -> np.ndarray:
    """:func:`simulate_prior` with a fitted module's energy and coefficients.

    On the clock of :func:`clock_steps`; returns the positions, (n_paths,
    n_steps + 1, latent_dim), float32 (NaN after a path's ``lengths``).
    """
    n_sub, remainder = clock_steps(dt, time_scale)
    with torch.no_grad():
        coef = module.step_coefficients(dt)
        last = (remainder, module.step_coefficients(remainder)) if remainder else None
    return simulate_prior(gradient_function(module.energy), state, coef,
                          latent_dim=module.latent_dim, dt=dt, n_steps=n_steps,
                          generator=generator, n_sub=n_sub, remainder=last,
                          lengths=lengths).numpy()


def label_paths(module, landscape, paths, core_fraction: float, *,
                thresholds: np.ndarray | None = None,
                return_basins: bool = False) -> np.ndarray | list | tuple:
    """Core-set labels of latent paths (:func:`core_set_labels`).

    Basins from the landscape, energies from the module (float32, in
    blocks), thresholds from :func:`core_thresholds` with the barriers of
    :func:`landscape_saddles`.

    Parameters
    ----------
    module : NeuralLangevinVAE
    landscape : EnergyLandscape
    paths : list of ndarray of shape (n_steps_i, latent_dim), or ndarray
        Latent positions along each path (lengths may differ), or one array
        (n_paths, n_steps, latent_dim).
    core_fraction : float
    thresholds : ndarray of shape (n_states,) or None, default=None
        The core thresholds, when already computed (they need the saddles).
    return_basins : bool, default=False
        Also return the positions' basins and energies that the labels were
        made from, in the labels' form.

    Returns
    -------
    labels : ndarray of shape (n_paths, n_steps) when the paths are equally
        long, else a list of int64 arrays of shape (n_steps_i,)
    basins, energies : same form as ``labels`` (int64, float64)
        Only with ``return_basins``.
    """
    lengths = [len(p) for p in paths]
    basins, energies = _basins_energies(module, landscape, np.concatenate(paths))
    if thresholds is None:
        thresholds = landscape_core_thresholds(landscape, core_fraction)
    if len(set(lengths)) == 1:
        shape = (len(paths), lengths[0])
        basins, energies = basins.reshape(shape), energies.reshape(shape)
        labels = core_set_labels(basins, energies, thresholds)
    else:
        cuts = np.cumsum(lengths)[:-1]
        basins, energies = np.split(basins, cuts), np.split(energies, cuts)
        labels = [None] * len(paths)
        by_length = {}  # The paths of each length, labelled together.
        for i, n in enumerate(lengths):
            by_length.setdefault(n, []).append(i)
        for same in by_length.values():
            rows = core_set_labels(np.stack([basins[i] for i in same]),
                                   np.stack([energies[i] for i in same]), thresholds)
            for i, row in zip(same, rows):
                labels[i] = row
    return (labels, basins, energies) if return_basins else labels


def _basins_energies(module, landscape,
                     points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Basins (int64) and float64 energies of latent points (n, latent_dim), each (n,)."""
    flat = torch.as_tensor(points.astype(np.float32, copy=False))
    return landscape.predict(flat.numpy()), point_energies(module, flat)


def point_energies(module, points: torch.Tensor, chunk: int = 65536) -> np.ndarray:
    """``E`` of the module's energy at latent points (n, latent_dim), float64 (n,)."""
    with torch.no_grad():
        energies = torch.cat([module.energy(points[i:i + chunk])
                              for i in range(0, max(points.shape[0], 1), chunk)])
    return energies.double().numpy().reshape(-1)


def switches(labels) -> tuple[int, int]:
    """Label changes and steps taken (``(n_changes, n_steps)``) along paths.

    ``labels`` is a 2-D array (one path per row) or a list of 1-D arrays.
    """
    changes = steps = 0
    for row in labels:
        row = np.asarray(row)
        changes += int(np.count_nonzero(row[1:] != row[:-1]))
        steps += max(row.shape[0] - 1, 0)
    return changes, steps


def switch_interval(labels) -> float:
    """Mean steps between label changes of labelled paths, at most the longest path.

    The paths' steps over their label changes (:func:`switches`): the
    maximum-likelihood mean dwell of exponential visits cut off by the ends
    of the paths, over all states. It is capped at the steps of the longest
    path: a visit longer than every path is never seen, so paths that
    rarely or never change (many short sequences, each in one state) tell
    only that the dwell is at least about that long.

    Parameters
    ----------
    labels : ndarray of shape (n_paths, n_steps) or list of 1-D arrays

    Returns
    -------
    interval : float
        NaN for no steps.

    Examples
    --------
    >>> import numpy as np
    >>> switch_interval([np.array([0, 0, 1, 1, 1]), np.array([1, 1, 1, 0, 0])])
    4.0
    >>> switch_interval(np.zeros((5, 200), dtype=int))  # no change: the longest path
    199.0
    """
    changes, steps = switches(labels)
    if steps == 0:
        return float("nan")
    longest = max(len(row) - 1 for row in labels)
    return float(min(steps / max(changes, 1), longest))


def mean_switch_interval(module, landscape, paths: list, core_fraction: float, *,
                         thresholds: np.ndarray | None = None) -> float:
    """:func:`switch_interval` of latent paths labelled by core sets.

    Parameters
    ----------
    module : NeuralLangevinVAE
    landscape : EnergyLandscape
    paths : list of ndarray of shape (n_steps_i, latent_dim)
    core_fraction : float
    thresholds : ndarray of shape (n_states,) or None, default=None
        The core thresholds (:func:`label_paths`), when already computed.

    Returns
    -------
    interval : float
        NaN for no steps.
    """
    if landscape.n_states < 2:
        return switch_interval([np.zeros(len(p), dtype=np.int64) for p in paths])
    return switch_interval(label_paths(module, landscape, paths, core_fraction,
                                       thresholds=thresholds))


def calibrate_clock(module, landscape, posterior_paths: list, *, dt: float,
                    core_fraction: float, generator: torch.Generator,
                    budget: int = CLOCK_BUDGET, piece: int = CLOCK_PIECE,
                    n_iter: int = 3, thresholds: np.ndarray | None = None) -> float:
    r"""How much faster the prior's clock must run to switch as the posterior does.

    Training fits the prior to the posterior paths *locally*: the path KL
    matches the prior's drift to the posterior's at every point, and the
    density term its stationary law to where the paths are. Both are
    one-time quantities, and the prior reproduces them (its stationary law
    and the posterior paths' marginal agree closely), but not the rate of
    switching: the posterior knows from the data which way a path leaves a
    well and crosses the barrier straight, where the prior's diffusion
    recrosses many times, so the fitted prior switches 2-9 times as slowly
    as the posterior paths (and the data) do. Running the same prior faster
    (overdamped or underdamped) is the one change that keeps its stationary
    law and its relative rates and scales every rate alike; this returns the
    factor that makes the prior's switching rate equal the posterior's.

    Both rates are read the same way, so that short sequences bias neither:
    the posterior paths are cut into pieces of at most ``piece`` steps, and
    the prior is simulated from the first point of every piece (momenta
    drawn from their stationary law) for as many steps as the piece, in as
    many copies as ``budget`` Euler steps allow (the same noise for every
    clock tried). Each rate is the core-set label changes per observation
    step (:func:`label_paths`; the first step of a path takes its basin).
    Starting from 1, each of ``n_iter`` rounds moves the clock by a secant
    step on log rate against log clock: rates grow in proportion to the
    clock while escapes are rare, more slowly once several crossings fall
    within one observation.

    Parameters
    ----------
    module : NeuralLangevinVAE
    landscape : EnergyLandscape
    posterior_paths : list of ndarray of shape (n_steps_i, latent_dim)
        One posterior path through each of some training sequences.
    dt : float
        The fitted Euler step.
    core_fraction : float
    generator : torch.Generator
    budget : int, default=CLOCK_BUDGET
        Euler steps of all the prior's paths together in one round (the
        cost), whatever the clock.
    piece : int, default=CLOCK_PIECE
        Longest piece of a posterior path.
    n_iter : int, default=3
        Rounds: each simulates the prior on the current clock and takes one
        secant step from it (``n_iter`` simulations).
    thresholds : ndarray of shape (n_states,) or None, default=None
        The core thresholds (:func:`core_thresholds` at ``core_fraction``),
        when already computed; else they are, from :func:`landscape_saddles`.

    Returns
    -------
    time_scale : float
        1.0 with a single state, or when the posterior paths never switch
        (nothing to calibrate on); otherwise within
        ``[1 / CLOCK_LIMIT, CLOCK_LIMIT]``.
    """
    if landscape.n_states < 2 or not posterior_paths:
        return 1.0
    pieces = [p[a:a + piece] for p in posterior_paths for a in range(0, len(p), piece)
              if len(p) - a >= 2]
    if not pieces:
        return 1.0
    if thresholds is None:
        thresholds = landscape_core_thresholds(landscape, core_fraction)
    changes, steps = switches(label_paths(module, landscape, pieces, core_fraction,
                                          thresholds=thresholds))
    if changes == 0:
        return 1.0
    target = changes / steps
    lengths = np.array([len(p) for p in pieces])
    longest = int(lengths.max())
    starts = torch.as_tensor(np.stack([p[0] for p in pieces]), dtype=torch.float32)
    beta, _, mass = (t.detach() for t in module.langevin_params())
    mass = mass.double().numpy() if module.dynamics == "underdamped" else None
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    tried = []  # (log clock, log rate), each on the same noise.
    scale = 1.0
    for _ in range(n_iter):
        n_sub, remainder = clock_steps(dt, scale)
        # Each path stops at its piece's length: the budget counts those.
        per_copy = int(lengths.sum()) * (n_sub + (remainder > 0))
        copies = max(1, budget // per_copy)
        gen = torch.Generator().manual_seed(seed)
        state = with_momentum(starts.repeat(copies, 1), mass, float(beta), gen)
        tiled = np.tile(lengths, copies)
        paths = simulate_module_prior(module, state, dt=dt, n_steps=longest - 1,
                                      generator=gen, time_scale=scale, lengths=tiled)
        labels = label_paths(module, landscape, [p[:n] for p, n in zip(paths, tiled)],
                             core_fraction, thresholds=thresholds)
        got, taken = switches(labels)
        # A prior that never switched: at least as fast as one switch in the run.
        tried.append((math.log(scale), math.log(max(got, 1) / taken)))
        # Rates grow as clock^slope: slope 1 for rare escapes, less once
        # several crossings fall within one observation. A slope from noise
        # (not positive) is not trusted: 1.
        slope = 1.0
        if len(tried) > 1 and tried[-1][0] != tried[-2][0]:
            measured = (tried[-1][1] - tried[-2][1]) / (tried[-1][0] - tried[-2][0])
            slope = float(np.clip(measured, 0.25, 1.0)) if measured > 0 else 1.0
        log_scale = tried[-1][0] + (math.log(target) - tried[-1][1]) / slope
        scale = float(np.clip(math.exp(log_scale), 1.0 / CLOCK_LIMIT, CLOCK_LIMIT))
    return scale


def decode_observations(module, positions: torch.Tensor,
                        generator: torch.Generator) -> np.ndarray:
    """Observations drawn from the decoder ``p(x | z)`` along latent paths.

    The decoder's mean plus its noise ``L eps`` (both from
    ``module.decoder_mean_and_scale``; ``L`` shared, full or diagonal, or
    depending on the position; ``eps`` from ``module.decoder_noise_draws``,
    Gaussian or Student-t), in the standardised units the model was
    trained in. A decoder of the newest observation given the previous ones
    (``module.given_features > 0``, a delay embedding) is run as the
    autoregression it is, along the time axis (the second last of
    ``positions``): each observation is drawn given those drawn before it,
    the first given zeros (the training data's mean); drop the first steps
    as a burn-in.

    Parameters
    ----------
    module : NeuralLangevinVAE
    positions : Tensor of shape (..., latent_dim)
        With ``given_features``, (..., n_timesteps, latent_dim): paths.
    generator : torch.Generator
        Source of ``eps``.

    Returns
    -------
    X : ndarray of shape (..., n_features), float64
        The decoder's frames, or with ``given_features`` their newest
        observations.
    """
    with torch.no_grad():
        positions = positions.float()
        given = int(module.given_features)
        if given == 0:
            mean, scale = module.decoder_mean_and_scale(positions)
            eps = module.decoder_noise_draws(mean.shape, generator).to(mean.dtype)
            if scale.dim() == 2:
                return (mean + eps @ scale.T).double().numpy()
            return (mean + (scale @ eps.unsqueeze(-1)).squeeze(-1)).double().numpy()
        n_new = module.decoded_features
        past = positions.new_zeros((*positions.shape[:-2], given))
        out = []
        for k in range(positions.shape[-2]):
            z = positions[..., k, :]
            eps = module.decoder_noise_draws((*z.shape[:-1], n_new), generator, given)
            x = module.decode_given(z, past, eps)
            past = torch.cat([past[..., n_new:], x], dim=-1)
            out.append(x)
        return torch.stack(out, dim=-2).double().numpy()
