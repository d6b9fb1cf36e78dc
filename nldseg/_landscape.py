"""Pure functions on a trained energy, and the :class:`EnergyLandscape` result.

Wells are found by gradient flow ``dz/ds = -grad E(z)`` from encoded data, the
end points are grouped, each group is refined by Newton's method and kept only if
its Hessian is positive definite. A latent point is labelled by the minimum its
gradient flow reaches. Occupancies follow the paper: sampled from
``exp(-beta E)``, zeroth order ``exp(-beta E(x_i))`` and second order (Laplace).
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from functools import partial

import numpy as np
import torch

from nldseg._fused import fold_energy, folded_energy_grad
from nldseg._model import freeze

OCCUPANCY_METHODS = frozenset({"sampled", "zeroth_order", "second_order"})


def _as_tensor(z, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(z), dtype=dtype)


def energy_hessian(energy: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Hessians of ``energy`` at the rows of ``z`` (n, d) -> (n, d, d).

    Reverse over reverse mode (``jacrev(jacrev)``), not ``torch.func.hessian``'s
    forward over reverse: forward-mode AD levels are shared by the whole
    process, so two threads computing Hessians at once (a grid search on
    joblib's threading or an in-process dask backend) break each other's
    (``RuntimeError: Trying to access a forward AD level with an invalid
    index``).
    """
    if z.shape[0] == 0:
        return z.new_zeros((0, z.shape[1], z.shape[1]))
    return torch.func.vmap(torch.func.jacrev(torch.func.jacrev(energy)))(z)


def _frozen_copy(energy: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A CPU copy of ``energy`` in ``dtype`` whose parameters need no gradient."""
    return freeze(copy.deepcopy(energy).to(dtype=dtype))


def gradient_function(energy: torch.nn.Module):
    """``grad E`` of a frozen energy as a function of points (n, d).

    For the learned energy (:class:`nldseg._model.EnergyMLP`, which exposes
    its ``weights()``) the folded form of
    :func:`nldseg._fused.folded_energy_grad`; for any other energy module its
    own ``grad``. The gradient flows run on it.
    """
    if not hasattr(energy, "weights"):
        return energy.grad
    with torch.no_grad():
        return partial(folded_energy_grad, fe=fold_energy(energy.weights()))


def curvature_bound(energy: torch.nn.Module, z: torch.Tensor) -> float:
    """Largest absolute Hessian eigenvalue over the rows of ``z`` (at least ``2c``)."""
    with torch.no_grad():
        eig = torch.linalg.eigvalsh(energy_hessian(energy, z))
    bound = float(eig.abs().max()) if eig.numel() else 0.0
    return max(bound, 2.0 * float(energy.c))


def gradient_flow(
    grad, z: torch.Tensor, *, step_size: float,
    max_step: float, n_iter: int = 3000, tol: float = 1e-6,
) -> torch.Tensor:
    """Follow ``dz/ds = -grad E`` by capped gradient descent until it settles.

    ``grad`` maps points (n, d) to ``grad E`` (see :func:`gradient_function`).
    Each step moves a point by ``step_size * grad E`` but at most ``max_step``;
    the loop stops when no point moved more than ``tol`` in one step.
    """
    z = z.clone()
    with torch.no_grad():
        for _ in range(n_iter):
            step = grad(z) * step_size
            norm = step.norm(dim=-1, keepdim=True)
            step = step * torch.clamp(max_step / norm.clamp_min(1e-30), max=1.0)
            z -= step
            if float(norm.max()) < tol:
                break
    return z


def newton_refine(energy: torch.nn.Module, z: torch.Tensor,
                  n_iter: int = 50) -> torch.Tensor:
    """Refine stationary points with Newton steps (float64 energy)."""
    z = z.clone()
    grad = gradient_function(energy)
    with torch.no_grad():
        for _ in range(n_iter):
            g = grad(z)
            h = energy_hessian(energy, z)
            try:
                step = torch.linalg.solve(h, g.unsqueeze(-1)).squeeze(-1)
            except RuntimeError:
                break
            step = torch.nan_to_num(step)
            z -= step
            if float(step.abs().max()) < 1e-12:
                break
    return z


def group_points(points: np.ndarray, radius: float) -> np.ndarray:
    """Greedy grouping: each point joins the first centre within ``radius``.

    Returns integer group labels; groups are numbered in order of appearance.
    """
    centres: list[np.ndarray] = []
    labels = np.empty(len(points), dtype=np.int64)
    for i, p in enumerate(points):
        if centres:
            dist = np.linalg.norm(np.asarray(centres) - p, axis=1)
            j = int(np.argmin(dist))
            if dist[j] <= radius:
                labels[i] = j
                continue
        centres.append(p)
        labels[i] = len(centres) - 1
    return labels


def straight_line_barrier(energy: torch.nn.Module, a: np.ndarray, b: np.ndarray,
                          n_points: int = 65) -> float:
    """Highest energy on the segment from ``a`` to ``b`` minus ``E(a)``."""
    s = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)[:, None]
    seg = _as_tensor(a) * (1 - s) + _as_tensor(b) * s
    with torch.no_grad():
        e = energy(seg)
    return float(e.max() - e[0])


def zeroth_order_weights(energies: np.ndarray, beta: float) -> np.ndarray:
    """Unnormalised log-weights ``-beta E(x_i)`` of the zeroth-order estimate."""
    return -beta * np.asarray(energies, dtype=float)


def second_order_weights(energies: np.ndarray, hessians: np.ndarray,
                         beta: float) -> np.ndarray:
    """Log of ``exp(-beta E(x_i)) / rho_i`` (Laplace approximation of each well).

    ``rho_i = ((2 pi)^d det(beta^-1 H_i^-1))^-1/2``, so the log-weight is
    ``-beta E_i + d/2 log(2 pi / beta) - 1/2 log det H_i``.
    """
    d = hessians.shape[-1]
    _, logdet = np.linalg.slogdet(hessians)
    return (-beta * np.asarray(energies, dtype=float)
            + 0.5 * d * math.log(2 * math.pi / beta) - 0.5 * logdet)


def _normalise_log(logw: np.ndarray) -> np.ndarray:
    w = np.exp(logw - np.max(logw))
    return w / w.sum()


def _sum_by_state(values: np.ndarray, state_of: np.ndarray, n_states: int) -> np.ndarray:
    out = np.zeros(n_states)
    np.add.at(out, state_of, values)
    return out


class EnergyLandscape:
    """A trained energy ``E(z) = MLP(z) + c |z|^2`` with its wells and occupancies.

    This is the object stored as :attr:`LangevinSegmenter.energy_`. Calling it on
    latent points of shape (n, latent_dim) returns their energies. States are the
    wells kept after fitting, ordered by sampled occupancy (largest first).

    Attributes
    ----------
    beta : float
        Inverse temperature of the prior's stationary law ``exp(-beta E)``.
    minima : ndarray of shape (n_states, latent_dim)
        The deepest local minimum of each state.
    minima_energies : ndarray of shape (n_states,)
        ``E`` at :attr:`minima`.
    hessians : ndarray of shape (n_states, latent_dim, latent_dim)
        Hessian of ``E`` at :attr:`minima` (positive definite).
    all_minima : ndarray of shape (n_minima, latent_dim)
        Every positive-definite minimum found, before merging.
    state_of_minimum : ndarray of shape (n_minima,)
        The state each of :attr:`all_minima` belongs to.
    occupancies : dict of str to ndarray of shape (n_states,)
        Stationary mass of each state by the three methods, keys
        ``"sampled"``, ``"zeroth_order"`` and ``"second_order"``.
    effective_sample_size : float
        Effective size of the importance sample behind ``"sampled"``.
    """

    def __init__(self, energy: torch.nn.Module, beta: float, all_minima: np.ndarray,
                 state_of_minimum: np.ndarray, capture_radius: np.ndarray,
                 step_size: float, max_step: float) -> None:
        self._attach_energy(energy)
        self.beta = float(beta)
        self.all_minima = np.asarray(all_minima, dtype=float)
        self.state_of_minimum = np.asarray(state_of_minimum, dtype=np.int64)
        self.capture_radius = np.asarray(capture_radius, dtype=float)
        self.step_size = float(step_size)
        self.max_step = float(max_step)
        self._set_state_minima()
        self.occupancies: dict[str, np.ndarray] = {}
        self.effective_sample_size = float("nan")
        self.lookup_lo = self.lookup_step = self.lookup_minimum = None

    def _set_state_minima(self) -> None:
        """``n_states``, and each state's deepest minimum, its energy and Hessian."""
        self.n_states = int(self.state_of_minimum.max()) + 1
        e_all = self(self.all_minima)
        deepest = [np.flatnonzero(self.state_of_minimum == s)[
            np.argmin(e_all[self.state_of_minimum == s])] for s in range(self.n_states)]
        self.minima = self.all_minima[deepest]
        self.minima_energies = e_all[deepest]
        self.hessians = self.hessian(self.minima)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        # Derived from the energy and the grid; rebuilt on load or on use.
        for key in ("_lookup_cache", "_grad32", "_grad64"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._grad32 = gradient_function(self._energy32)
        self._grad64 = gradient_function(self._energy64)

    def _attach_energy(self, energy: torch.nn.Module) -> None:
        """Keep frozen float32 and float64 CPU copies of ``energy`` and their gradients."""
        self._energy32 = _frozen_copy(energy, torch.float32)
        self._energy64 = _frozen_copy(self._energy32, torch.float64)
        self._grad32 = gradient_function(self._energy32)
        self._grad64 = gradient_function(self._energy64)

    def state_dict(self) -> dict:
        """The landscape's own data, without its energy: numbers and arrays only.

        ``{"arrays": {name: ndarray}, "scalars": {name: number},
        "occupancies": {method: ndarray}}``; :meth:`from_state_dict` restores
        it around the same energy. Derived tables (the lookup cache) are left
        out and rebuilt on use.
        """
        arrays, scalars = {}, {}
        for key, value in vars(self).items():
            if key.startswith("_") or key == "occupancies":
                continue
            if isinstance(value, np.ndarray):
                arrays[key] = value
            else:
                scalars[key] = value
        return {"arrays": arrays, "scalars": scalars,
                "occupancies": dict(self.occupancies)}

    @classmethod
    def from_state_dict(cls, energy: torch.nn.Module, state: dict) -> EnergyLandscape:
        """Restore a landscape saved by :meth:`state_dict` around ``energy``.

        Nothing is recomputed: minima, Hessians, basins and occupancies are
        the saved ones, so labels equal those of the landscape that was saved.
        """
        landscape = cls.__new__(cls)
        landscape.__dict__.update(state["scalars"])
        landscape.__dict__.update(state["arrays"])
        landscape.occupancies = dict(state["occupancies"])
        landscape._attach_energy(energy)
        return landscape

    @property
    def latent_dim(self) -> int:
        """Dimension of the energy's domain."""
        return self.all_minima.shape[1]

    def _check(self, z) -> torch.Tensor:
        z = np.asarray(z, dtype=float)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"Expected latent points of shape (n, {self.latent_dim}), got {z.shape}.")
        return _as_tensor(z)

    def __call__(self, z) -> np.ndarray:
        """Energy ``E(z)`` of latent points (n, latent_dim) -> (n,)."""
        with torch.no_grad():
            return self._energy64(self._check(z)).numpy()

    def gradient(self, z) -> np.ndarray:
        """``grad E(z)`` of latent points (n, latent_dim) -> (n, latent_dim)."""
        with torch.no_grad():
            return self._grad64(self._check(z)).numpy()

    def hessian(self, z) -> np.ndarray:
        """Hessian of ``E`` at latent points (n, latent_dim) -> (n, d, d)."""
        with torch.no_grad():
            return energy_hessian(self._energy64, self._check(z)).numpy()

    def occupancy(self, method: str = "sampled") -> np.ndarray:
        """Stationary fraction of time in each state by ``method``.

        Parameters
        ----------
        method : {"sampled", "zeroth_order", "second_order"}, default="sampled"

        Returns
        -------
        occupancy : ndarray of shape (n_states,)
        """
        if method not in OCCUPANCY_METHODS:
            raise ValueError(
                f"method must be one of {sorted(OCCUPANCY_METHODS)}, got {method!r}.")
        return self.occupancies[method].copy()

    def predict(self, z) -> np.ndarray:
        """State (basin of attraction) of latent points (n, latent_dim) -> (n,)."""
        return self._basins_torch(torch.as_tensor(np.asarray(z, dtype=np.float32)))

    def state_fractions(self, z: torch.Tensor,
                        weights: np.ndarray | None = None) -> np.ndarray:
        """Fraction of the latent samples (..., S, d) in each state -> (..., n_states).

        ``z`` is a float32 tensor of positions; the samples of one group (the
        posterior paths of one time step) lie along the second-to-last axis.
        ``weights`` (..., S), normalised within each group, weigh the samples
        (a particle filter's); ``None`` weighs them equally.
        """
        labels = self._basins_torch(z.reshape(-1, z.shape[-1]))
        n_samples, k = z.shape[-2], self.n_states
        groups = labels.shape[0] // n_samples
        # Sum per group of samples: one bincount of (group, state) pairs.
        pairs = np.repeat(np.arange(groups) * k, n_samples) + labels
        if weights is None:
            counts = np.bincount(pairs, minlength=groups * k)
            return counts.reshape(*z.shape[:-2], k) / n_samples
        return np.bincount(pairs, weights=np.asarray(weights, np.float64).ravel(),
                           minlength=groups * k).reshape(*z.shape[:-2], k)

    def _basins_torch(self, z: torch.Tensor, chunk: int = 65536) -> np.ndarray:
        """Label float32 latent points (n, d) by the state their flow reaches.

        Points inside a cell of the lookup grid (see :meth:`build_lookup`)
        whose corners all flow to the same minimum take that minimum's state;
        the others are flowed (:meth:`_flow_minimum`).
        """
        if self.n_states == 1:
            return np.zeros(z.shape[0], dtype=np.int64)
        z, tables = z.float(), self._lookup_tables()
        if tables is None:
            found = self._flow_minimum(z, chunk)
        else:  # Look every point up; flow only the few that miss.
            # In blocks whose temporaries stay in cache (2-3x faster than
            # one pass over millions of points); one empty block for no points.
            found = torch.cat([_lookup(z[i:i + chunk], tables)
                               for i in range(0, max(z.shape[0], 1), chunk)])
            miss = torch.nonzero(found < 0)[:, 0]
            if miss.numel():
                found[miss] = self._flow_minimum(z[miss], chunk, tables,
                                                 known_misses=True)
        return self.state_of_minimum[found.numpy()]

    def _lookup_tables(self) -> dict | None:
        """Tensors for :func:`_lookup`, built once per grid (None without one)."""
        grid = getattr(self, "lookup_minimum", None)
        if grid is None:
            return None
        cached = self.__dict__.get("_lookup_cache")
        if cached is None or "last_cell" not in cached:  # (or an older version's)
            cells = torch.as_tensor(_agreeing_cells(np.asarray(grid)))
            cached = {"lo": torch.as_tensor(self.lookup_lo, dtype=torch.float32),
                      "step": torch.as_tensor(self.lookup_step, dtype=torch.float32),
                      "zero": torch.zeros(cells.dim(), dtype=torch.int64),
                      "last_cell": torch.tensor(cells.shape) - 1,
                      "strides": torch.tensor(cells.stride()), "cells": cells.reshape(-1)}
            self._lookup_cache = cached
        return cached

    def _flow_minimum(self, z: torch.Tensor, chunk: int = 65536,
                      tables: dict | None = None,
                      known_misses: bool = False) -> torch.Tensor:
        """Index of the minimum (in :attr:`all_minima`) each point's flow reaches.

        A point is assigned once, given lookup ``tables``, it lies in a grid
        cell whose corners agree (its flow goes on from there), or once it is
        within the capture radius of a minimum (a radius learned at fit time
        inside which every training flow ended at that minimum). Points still
        unassigned after the flow budget go to the nearest minimum.
        ``known_misses`` says that the points were just looked up in vain, so
        the first pass skips the lookup.
        """
        minima = torch.as_tensor(self.all_minima, dtype=z.dtype)
        radius = torch.as_tensor(self.capture_radius, dtype=z.dtype)
        out = torch.empty(z.shape[0], dtype=torch.int64)
        with torch.no_grad():
            for start in range(0, z.shape[0], chunk):
                pts = z[start:start + chunk].clone()
                idx = torch.arange(start, start + pts.shape[0])
                for it in range(2000):
                    # The minimum reached: by lookup first, else by capture.
                    dist = torch.cdist(pts, minima)
                    near = dist.argmin(1)
                    found = near.masked_fill_(dist.gather(1, near[:, None])[:, 0]
                                              > radius[near], -1)
                    if tables is not None and (it or not known_misses):
                        looked_up = _lookup(pts, tables)
                        found = torch.where(looked_up >= 0, looked_up, found)
                    done = found >= 0
                    if done.any():  # Few passes assign anything: compact only then.
                        out[idx[done]] = found[done]
                        keep = done.logical_not_()
                        pts, idx = pts[keep], idx[keep]
                        if pts.shape[0] == 0:
                            break
                    step = self._grad32(pts).mul_(self.step_size)
                    norm = step.norm(dim=-1, keepdim=True)
                    pts = pts - step * torch.clamp(
                        self.max_step / norm.clamp_min(1e-30), max=1.0)
                if pts.shape[0]:
                    out[idx] = torch.cdist(pts, minima).argmin(1)
        return out

    def build_lookup(self, codes: np.ndarray, max_nodes: int = 24 ** 3) -> None:
        """Flow the nodes of a regular grid once, to label most points by lookup.

        The grid spans the bounding box of ``codes`` widened by a quarter of
        its size on each side, with at most ``max_nodes`` nodes (only for
        ``latent_dim <= 3``; higher dimensions always flow). A point inside a
        cell whose corner nodes all flow to the same minimum is given that
        minimum: a different basin would have to pass between the corners of
        one cell without containing any of them. Other points are flowed.
        """
        d = self.latent_dim
        self.lookup_lo = self.lookup_step = self.lookup_minimum = None
        self.__dict__.pop("_lookup_cache", None)
        if d > 3 or len(codes) == 0:
            return
        n = int(round(max_nodes ** (1.0 / d)))
        lo, hi = codes.min(0), codes.max(0)
        pad = 0.25 * np.maximum(hi - lo, 1e-3)
        lo, hi = lo - pad, hi + pad
        axes = [np.linspace(lo[i], hi[i], n) for i in range(d)]
        nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
        labels = self._flow_minimum(torch.as_tensor(nodes, dtype=torch.float32))
        self.lookup_lo = lo.astype(np.float64)
        self.lookup_step = ((hi - lo) / (n - 1)).astype(np.float64)
        self.lookup_minimum = labels.numpy().reshape((n,) * d)


def _agreeing_cells(grid: np.ndarray) -> np.ndarray:
    """Per cell of a node grid: the corners' common value, or -1 where they differ.

    ``grid`` has one value per node, shape ``(n,) * d``; the result has one per
    cell, shape ``(n - 1,) * d``.
    """
    d, n = grid.ndim, grid.shape[0]
    corners = [grid[tuple(slice(b, n - 1 + b) for b in bits)]
               for bits in itertools.product((0, 1), repeat=d)]
    agree = np.logical_and.reduce([c == corners[0] for c in corners])
    return np.where(agree, corners[0], -1).astype(np.int64)


def _lookup(pts: torch.Tensor, tables: dict) -> torch.Tensor:
    """Minimum index from the grid where a cell's corners agree, else -1."""
    cell = ((pts - tables["lo"]) / tables["step"]).floor_().long()
    clamped = torch.clamp(cell, tables["zero"], tables["last_cell"])
    outside = (clamped != cell).any(1)
    values = tables["cells"][(clamped * tables["strides"]).sum(1)]
    return values.masked_fill_(outside, -1)


def find_minima(energy: torch.nn.Module, codes: np.ndarray) -> dict:
    """Locate the positive-definite local minima reached from ``codes``.

    Parameters
    ----------
    energy : EnergyMLP
    codes : ndarray of shape (n, latent_dim)
        Encoded latent points (e.g. posterior paths of training data).

    Returns
    -------
    result : dict
        ``minima`` (k, d), ``code_minimum`` (n,) index of the minimum each code
        flowed to (-1 for none), ``capture_radius`` (k,), ``step_size``,
        ``max_step``.
    """
    e64 = _frozen_copy(energy, torch.float64)
    grad = gradient_function(e64)
    z = _as_tensor(codes)
    spread = float(np.linalg.norm(codes.std(0))) or 1.0
    probe = z[torch.linspace(0, len(z) - 1, min(len(z), 128)).long()]
    step_size = 0.9 / curvature_bound(e64, probe)
    max_step = 0.05 * spread
    end = gradient_flow(grad, z, step_size=step_size, max_step=max_step,
                        tol=1e-7 * spread, n_iter=5000)
    labels = group_points(end.numpy(), radius=0.05 * spread)
    centres = np.stack([end.numpy()[labels == g].mean(0) for g in range(labels.max() + 1)])
    refined = newton_refine(e64, _as_tensor(centres))
    hess = energy_hessian(e64, refined).detach().numpy()
    eig = np.linalg.eigvalsh(hess)
    grad_norm = grad(refined).norm(dim=-1).detach().numpy()
    ok = (eig.min(1) > 1e-8) & (grad_norm < 1e-5) & np.isfinite(refined.numpy()).all(1)
    # Drop a refined point that moved far from its group (Newton left the well).
    moved = np.linalg.norm(refined.numpy() - centres, axis=1)
    ok &= moved < 0.25 * spread
    minima = refined.numpy()[ok]
    if len(minima) == 0:
        # Fall back to the lowest end point: the quadratic term guarantees one minimum.
        e_end = e64(end).detach().numpy()
        minima = newton_refine(e64, end[[int(np.argmin(e_end))]]).numpy()
    # Merge duplicates produced by several groups refining to the same point.
    keep = group_points(minima, radius=1e-3 * spread)
    minima = np.stack([minima[keep == g][0] for g in range(keep.max() + 1)])
    dist_end = np.linalg.norm(end.numpy()[:, None] - minima[None], axis=2)
    code_min = dist_end.argmin(1)
    code_min[dist_end.min(1) > 0.1 * spread] = -1
    # Capture radius: inside it, every training flow ended at that minimum.
    d_start = np.linalg.norm(codes[:, None] - minima[None], axis=2)
    radius = np.empty(len(minima))
    for i in range(len(minima)):
        others = d_start[code_min != i, i]
        nearest_other = np.delete(np.linalg.norm(minima - minima[i], axis=1),
                                  i).min(initial=np.inf)
        radius[i] = 0.5 * min(others.min(initial=np.inf), 0.5 * nearest_other,
                              spread)
    return {"minima": minima, "code_minimum": code_min, "capture_radius": radius,
            "step_size": step_size, "max_step": max_step, "energy64": e64}


def merge_minima(energy64: torch.nn.Module, minima: np.ndarray, counts: np.ndarray,
                 *, min_fraction: float, n_states: int | None,
                 min_barrier: float = 0.0, dimple_fraction: float = 1.0,
                 relative_barrier: float = 0.0) -> np.ndarray:
    """Map minima to states, merging shallow, small (or surplus) wells into neighbours.

    First a well holding less than ``dimple_fraction`` of the flowed codes
    that can be left over a straight-line barrier below ``min_barrier``
    (energy units), or a well of any size that can be left over a barrier
    below ``relative_barrier`` times the highest such lowest barrier out of
    any well, is merged into the well beyond it, shallowest first (the
    barriers counted again after each merge): such a dimple holds nothing
    for longer than free diffusion would. (A shallow well that holds much of
    the data is kept unless the landscape's other wells are far deeper: a
    short fit's wells are all shallow.) Then a well holding less than
    ``min_fraction`` of the
    flowed codes, and then (if ``n_states`` is given) the least-populated
    wells until ``n_states`` remain, are merged into the well reached over the
    lowest straight-line barrier. A straight line crosses at or above the
    saddle, so a well merged for its barrier has a true barrier lower still.

    A requested ``n_states`` is a number of states to end with, not only a
    ceiling: where the shallow-well rules would leave fewer, they are not
    applied, and from the minima as found only the least-populated wells are
    merged until ``n_states`` remain (``min_fraction`` too stops there). On
    simulated recordings of motion a real activity sat on a shoulder of
    shallow minima (1.06 kT, 3 % of the codes), which the rules merge; asked
    for the number of activities, the population alone kept it. Fewer than
    ``n_states`` come back only where fewer minima were found.

    Returns
    -------
    state_of_minimum : ndarray of shape (n_minima,)
        State index per minimum, numbered ``0..n_states-1`` (unordered).
    """
    k = len(minima)
    group = np.arange(k)
    counts = np.asarray(counts, dtype=float)
    total = counts.sum() or 1.0

    def alive():
        return np.unique(group)

    with torch.no_grad():
        depth = energy64(_as_tensor(minima)).numpy() if k else np.zeros(0)

    def lowest_exit(g, from_bottom: bool = False) -> tuple:
        """The group reached from ``g`` over the lowest straight-line barrier.

        ``from_bottom``: barriers counted from the group's lowest minimum, not
        from the member each line starts at (a merged dimple's own low exits
        are not the group's).
        """
        members = np.flatnonzero(group == g)
        bottom = depth[members].min()
        best, best_barrier = None, np.inf
        for h in alive():
            if h == g:
                continue
            for i in members:
                for j in np.flatnonzero(group == h):
                    b = straight_line_barrier(energy64, minima[i], minima[j])
                    if from_bottom:
                        b += depth[i] - bottom
                    if b < best_barrier:
                        best, best_barrier = h, b
        return best, best_barrier

    def merge_one(g):
        group[group == g] = lowest_exit(g)[0]

    while len(alive()) > 1:
        exits = {g: lowest_exit(g, from_bottom=True) for g in alive()}
        top = max(barrier for _, barrier in exits.values())
        shallow = {g: e for g, e in exits.items() if e[1] < relative_barrier * top
                   or (e[1] < min_barrier
                       and counts[group == g].sum() / total < dimple_fraction)}
        if not shallow:
            break
        g = min(shallow, key=lambda g: shallow[g][1])
        group[group == g] = shallow[g][0]
    if n_states is not None and len(alive()) < n_states:
        group = np.arange(k)  # The request wins over the shallow-well rules.
    while len(alive()) > 1:
        mass = {g: counts[group == g].sum() / total for g in alive()}
        g = min(mass, key=mass.get)
        enough = (mass[g] >= min_fraction if n_states is None
                  else len(alive()) <= n_states)
        if enough:
            break
        merge_one(g)
    _, state = np.unique(group, return_inverse=True)
    return state


def sampled_occupancy(landscape: EnergyLandscape, codes: np.ndarray, n_draws: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Occupancy from draws of ``exp(-beta E)``, each flowed to its well.

    Draws come from self-normalised importance sampling: the proposal mixes
    the Laplace Gaussian of every minimum (covariance inflated four-fold) with a
    broad Gaussian around the encoded codes, and each draw is weighted by
    ``exp(-beta E(z)) / q(z)``. This is exact as ``n_draws`` grows and needs no
    Markov chain to cross barriers. Returns the occupancy and the effective
    sample size.
    """
    d = landscape.latent_dim
    beta = landscape.beta
    comps_mean = [m for m in landscape.all_minima]
    comps_cov = []
    for h in landscape.hessian(landscape.all_minima):
        cov = np.linalg.inv(beta * h) * 4.0
        comps_cov.append(0.5 * (cov + cov.T))
    comps_mean.append(codes.mean(0))
    spread = np.cov(codes.T).reshape(d, d) if len(codes) > 1 else np.eye(d)
    comps_cov.append(spread * 4.0 + 1e-6 * np.eye(d))
    n_comp = len(comps_mean)
    weights = np.full(n_comp, 0.8 / (n_comp - 1)) if n_comp > 1 else np.ones(1)
    weights[-1] = 0.2 if n_comp > 1 else 1.0
    comp = rng.choice(n_comp, size=n_draws, p=weights / weights.sum())
    draws = np.empty((n_draws, d))
    for c in range(n_comp):
        sel = comp == c
        draws[sel] = rng.multivariate_normal(comps_mean[c], comps_cov[c], size=sel.sum())
    log_q = np.full((n_draws, n_comp), -np.inf)
    for c in range(n_comp):
        diff = draws - comps_mean[c]
        prec = np.linalg.inv(comps_cov[c])
        _, logdet = np.linalg.slogdet(comps_cov[c])
        log_q[:, c] = (np.log(weights[c] / weights.sum()) - 0.5 * np.einsum(
            "ni,ij,nj->n", diff, prec, diff) - 0.5 * (logdet + d * math.log(2 * math.pi)))
    log_q = np.logaddexp.reduce(log_q, axis=1)
    logw = -beta * landscape(draws) - log_q
    w = _normalise_log(logw)
    labels = landscape.predict(draws)
    occ = _sum_by_state(w, labels, landscape.n_states)
    return occ, float(1.0 / np.sum(w * w))


def compute_occupancies(landscape: EnergyLandscape, codes: np.ndarray,
                        n_draws: int, rng: np.random.Generator) -> None:
    """Fill ``landscape.occupancies`` with the three estimates (in place)."""
    e_all = landscape(landscape.all_minima)
    h_all = landscape.hessian(landscape.all_minima)
    s, n = landscape.state_of_minimum, landscape.n_states
    landscape.occupancies["zeroth_order"] = _sum_by_state(
        _normalise_log(zeroth_order_weights(e_all, landscape.beta)), s, n)
    landscape.occupancies["second_order"] = _sum_by_state(
        _normalise_log(second_order_weights(e_all, h_all, landscape.beta)), s, n)
    occ, ess = sampled_occupancy(landscape, codes, n_draws, rng)
    landscape.occupancies["sampled"] = occ
    landscape.effective_sample_size = ess


def relabel_states(landscape: EnergyLandscape, order: np.ndarray) -> None:
    """Renumber states so that old state ``order[i]`` becomes state ``i`` (in place)."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    landscape.state_of_minimum = inverse[landscape.state_of_minimum]
    landscape.minima = landscape.minima[order]
    landscape.minima_energies = landscape.minima_energies[order]
    landscape.hessians = landscape.hessians[order]
    landscape.occupancies = {k: v[order] for k, v in landscape.occupancies.items()}


_MAX_CODES = 3000  # Encoded points the wells are found from.
_N_OCCUPANCY_DRAWS = 40000  # Importance draws of the sampled occupancy (+-0.005).
#: A small well (below) whose lowest barrier out is below this many kT
#: (``1 / beta``) is no state: thermal noise leaves it within a few
#: relaxation times. Trained energies have shown such wells as dimples where
#: three wells meet (0.04-0.06 kT, 0.6 % of the time) and, on simulated
#: recordings of motion, as wells holding only the steps just after a switch
#: (0.83-1.92 kT, 0.2-1.9 %; four default fits), beside states at 4.3-8.6 kT.
#: The smallest real states of default fits were left over 2.53-3.41 kT (the
#: 0.4-1 % state of ``langevin``, three fits) and 3.72 kT (a 3 % state); a
#: large real state (18 %) of a long fit over 0.46 kT. The floor lies in the
#: gap, nearer the spurious side: a lost real state costs more than a spare one.
MIN_BARRIER_KT = 2.0
#: ... and that holds less than this share of the encoded data (a short fit's
#: real states sit in wells that shallow: 0.5-2 kT after 72-200 steps).
MAX_DIMPLE_FRACTION = 0.05
#: A well of any share whose lowest barrier out is below this fraction of the
#: highest lowest barrier out of any well is no state either: the prior crosses
#: it as freely as flat ground next to wells it leaves rarely. On a simulated
#: recording of motion (``motion`` seed 8) one activity sat in three such
#: dimples (10-22 % of the time each, 0.4 % and 1.7 % of the highest exit,
#: straight-line barriers). Real states of the default fits (seed 0) were left
#: over 34 % or more of it by saddles (``langevin``'s 1 % state; 46 % by
#: straight lines), and the shallowest real state of the test suite's short
#: fits over 11 % (0.21 against 1.9 kT, saddles).
MIN_RELATIVE_BARRIER = 0.05


def build_landscape(energy: torch.nn.Module, beta: float, codes: np.ndarray, *,
                    min_state_fraction: float, n_states: int | None,
                    rng: np.random.Generator,
                    n_occupancy_draws: int = _N_OCCUPANCY_DRAWS) -> EnergyLandscape:
    """Find the wells of a trained energy and return the finished landscape.

    The one call that turns a trained energy into states: gradient flows from
    the encoded ``codes`` (at most 3000 of them, drawn with ``rng``) find the
    positive-definite minima (:func:`find_minima`); wells into which less than
    ``min_state_fraction`` of the codes flow, and then the least-populated
    wells until ``n_states`` remain, are merged into a neighbour
    (:func:`merge_minima`; before them, a well of less than
    :data:`MAX_DIMPLE_FRACTION` of the codes left over a barrier below
    :data:`MIN_BARRIER_KT` ``/ beta``, and a well of any share left over a
    barrier below :data:`MIN_RELATIVE_BARRIER` times the highest lowest barrier
    out of any well; none of these merges goes below a requested
    ``n_states``); a lookup grid is flowed for fast labelling; the
    three occupancy estimates are computed; and the states are numbered by
    sampled occupancy, largest first (ties broken by the minimum's
    coordinates). Warns if ``n_states`` was requested but fewer minima exist.

    Parameters
    ----------
    energy : torch.nn.Module
        The trained energy (callable, with ``grad``).
    beta : float
        Inverse temperature of the stationary law ``exp(-beta E)``.
    codes : ndarray of shape (n, latent_dim)
        Posterior latent positions of (part of) the training data.
    min_state_fraction : float
        Wells holding less than this fraction of the codes are merged.
    n_states : int or None
        Number of states to keep, or None for every well found.
    rng : numpy.random.Generator
        Draws the codes kept and the occupancy sample.
    n_occupancy_draws : int, default=40000
        Importance draws of the sampled occupancy.

    Returns
    -------
    landscape : EnergyLandscape
    """
    if len(codes) > _MAX_CODES:
        codes = codes[rng.choice(len(codes), _MAX_CODES, replace=False)]
    found = find_minima(energy, codes)
    minima, code_min = found["minima"], found["code_minimum"]
    counts = np.bincount(code_min[code_min >= 0], minlength=len(minima))
    state_of = merge_minima(found["energy64"], minima, counts,
                            min_fraction=min_state_fraction, n_states=n_states,
                            min_barrier=MIN_BARRIER_KT / beta,
                            dimple_fraction=MAX_DIMPLE_FRACTION,
                            relative_barrier=MIN_RELATIVE_BARRIER)
    if n_states is not None and state_of.max() + 1 < n_states:
        warnings.warn(f"n_states={n_states} was requested but the energy has only "
                      f"{state_of.max() + 1} well(s); keeping those.", UserWarning,
                      stacklevel=3)
    landscape = EnergyLandscape(energy, beta, minima, state_of, found["capture_radius"],
                                found["step_size"], found["max_step"])
    landscape.build_lookup(codes)
    compute_occupancies(landscape, codes, n_occupancy_draws, rng)
    _order_by_occupancy(landscape)
    return landscape


def _order_by_occupancy(landscape: EnergyLandscape) -> None:
    """Number states by sampled occupancy, largest first (ties: the minima's places)."""
    occ = landscape.occupancies["sampled"]
    order = np.lexsort((*landscape.minima.T[::-1], -np.round(occ, 12)))
    relabel_states(landscape, order)


def join_states(landscape: EnergyLandscape, state_map: np.ndarray) -> None:
    """Join states in place: old state ``s`` becomes part of state ``state_map[s]``.

    ``state_map`` (n_states,) takes the values ``0..k-1``, each at least once.
    The minima keep their basins; a joined state's occupancies (every
    method) are the sums of its parts', its minimum is the deepest of its
    parts'; the states are then numbered by sampled occupancy, largest first,
    as :func:`build_landscape` numbers them. Labels of latent points change
    only by the map. The lookup grid stays valid (it stores minima).
    """
    state_map = np.asarray(state_map, dtype=np.int64)
    k = int(state_map.max()) + 1
    if state_map.shape != (landscape.n_states,) or np.unique(state_map).size != k:
        raise ValueError(f"state_map must map the {landscape.n_states} states onto "
                         f"0..k-1, got {state_map.tolist()!r}.")
    landscape.state_of_minimum = state_map[landscape.state_of_minimum]
    landscape._set_state_minima()
    landscape.occupancies = {name: np.bincount(state_map, weights=occ, minlength=k)
                             for name, occ in landscape.occupancies.items()}
    _order_by_occupancy(landscape)
