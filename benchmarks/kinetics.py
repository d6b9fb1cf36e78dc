"""Kinetics of the learned prior against the true chain, in the paper's setting.

Fits the library defaults on the paper's data (500 sequences of 200 steps, 3
states, switch probability 0.025 per step to each other state, 15 features),
matches the learned states to the true ones by the Hungarian map on 100 test
sequences of 500 steps, then compares with the true chain:

* mean dwell time per state: ``seg.mean_dwell_times()`` (prior paths, core-set
  labels) against ``1 / (1 - P_ii)`` = 20 steps (bar: within 15 % per state);
* lag-1 transition matrix: ``seg.transition_matrix(1)`` against the true ``P``
  (bar: max abs difference <= 0.02).

For the question "why", it prints beside them: the Eyring-Kramers dwell
``1 / sum_j k_ij`` (``seg.kramers_rates()``, continuous time), the same prior
simulated with a 10x finer Euler step (how far the fitted ``dt`` is from the
continuous SDE), the barriers, and the dwell times and transition matrix of the
*predicted* labels of the test data (what the segmentation itself reads).

    python benchmarks/kinetics.py --seeds 0 [--dynamics overdamped underdamped]
    python benchmarks/kinetics.py --load-dir models/   # reuse saved fits
    python benchmarks/kinetics.py --learn-langevin-params  # beta, gamma, mass learned
"""

import argparse
import os
import time

import numpy as np
import torch
from _common import machine_line

from nldseg import LangevinSegmenter
from nldseg._kinetics import (
    landscape_saddles,
    mean_visit_lengths,
    prior_state_paths,
    row_stochastic,
    transition_counts,
)
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import label_mapping, segmentation_accuracy

DWELL_BAR = 0.15
MATRIX_BAR = 0.02


def _fitted(dynamics: str, seed: int, X, load_dir, save_dir, learn: bool):
    name = f"{dynamics}{'_learned' if learn else ''}_seed{seed}.nldseg"
    path = os.path.join(load_dir or save_dir or "", name)
    if load_dir:
        return LangevinSegmenter.load(path), float("nan")
    t0 = time.perf_counter()
    seg = LangevinSegmenter(dynamics=dynamics, learn_langevin_params=learn,
                            random_state=seed).fit(X)
    t_fit = time.perf_counter() - t0
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        seg.save(path)
    return seg, t_fit


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _in_true_order(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Learned-state values (vector or matrix) indexed by true state."""
    values = np.asarray(values)
    return values[np.ix_(order, order)] if values.ndim == 2 else values[order]


def run(dynamics: str, seed: int, n_train: int, n_test: int, load_dir, save_dir,
        learn: bool = False) -> dict:
    X, _ = make_markov_chain_sequences(n_train, 200, n_features=15, switch_prob=0.025,
                                       random_state=1000 + seed,
                                       emission_random_state=seed)
    X_test, y_test, params = make_markov_chain_sequences(
        n_test, 500, n_features=15, switch_prob=0.025, random_state=2000 + seed,
        emission_random_state=seed, return_params=True)
    P_true = params["transition_matrix"]
    seg, t_fit = _fitted(dynamics, seed, X, load_dir, save_dir, learn)
    y_pred = seg.predict(X_test)
    out = {"dynamics": dynamics, "seed": seed, "n_states": seg.n_states_,
           "t_fit": t_fit, "beta": seg.beta_, "gamma": seg.gamma_, "mass": seg.mass_,
           "acc": segmentation_accuracy(y_test, y_pred),
           "P_true": P_true, "dwell_true": 1 / (1 - np.diag(P_true))}
    P, out["t_matrix"] = _timed(lambda: seg.transition_matrix(1))
    dwell, out["t_dwell"] = _timed(seg.mean_dwell_times)
    rates, out["t_kramers"] = _timed(seg.kramers_rates)
    saddles = landscape_saddles(seg.energy_)
    fine = prior_state_paths(seg.module_, seg.energy_, dt=seg.dt / 10, n_paths=256,
                             n_steps=1000, core_fraction=0.5,
                             generator=torch.Generator().manual_seed(seed))[1]
    k = seg.n_states_
    out.update(P_prior=P, dwell_prior=dwell, dwell_kramers=1 / rates.sum(1),
               barriers=saddles["barriers"],
               dwell_fine=mean_visit_lengths(fine, k),
               P_pred=row_stochastic(transition_counts(y_pred, k, 1)),
               dwell_pred=mean_visit_lengths(y_pred, k))
    if k == len(P_true):
        mapping = label_mapping(y_test, y_pred)
        order = np.array([s for t in range(k) for s, tt in mapping.items() if tt == t])
        for key in ("P_prior", "P_pred", "barriers"):
            out[key] = _in_true_order(out[key], order)
        for key in ("dwell_prior", "dwell_kramers", "dwell_fine", "dwell_pred"):
            out[key] = _in_true_order(out[key], order)
    return out


def _fmt(v) -> str:
    return "[" + ", ".join(f"{x:.1f}" for x in np.ravel(v)) + "]"


def report(r: dict) -> None:
    print(f"\n## {r['dynamics']}, seed {r['seed']}: beta {r['beta']:.3g}, gamma "
          f"{r['gamma']:.3g}, mass {r['mass']:.3g}; {r['n_states']} states, "
          f"test accuracy {r['acc']:.4f}, fit {r['t_fit']:.0f} s; kinetics: "
          f"transition_matrix {r['t_matrix']:.1f} s, mean_dwell_times "
          f"{r['t_dwell']:.1f} s, kramers_rates {r['t_kramers']:.1f} s")
    if r["n_states"] != len(r["P_true"]):
        print("states found differ from the truth: no per-state comparison")
        print("prior P:\n", np.round(r["P_prior"], 4))
        return
    rel = np.abs(r["dwell_prior"] - r["dwell_true"]) / r["dwell_true"]
    diff = np.abs(r["P_prior"] - r["P_true"]).max()
    print("| quantity (true state order) | state 0 | state 1 | state 2 |")
    print("|---|---|---|---|")
    rows = [("true dwell 1/(1-P_ii)", r["dwell_true"]),
            ("prior mean_dwell_times (fitted dt)", r["dwell_prior"]),
            ("prior, Euler dt/10", r["dwell_fine"]),
            ("Eyring-Kramers 1/sum_j k_ij", r["dwell_kramers"]),
            ("predicted labels of the test data", r["dwell_pred"])]
    for name, v in rows:
        print(f"| {name} | " + " | ".join(f"{x:.1f}" for x in v) + " |")
    print("| relative dwell error of the prior | "
          + " | ".join(f"{x:.2f}" for x in rel) + " |")
    print(f"lowest barrier out of each state, in kT = 1/beta: "
          f"{_fmt(r['beta'] * np.min(r['barriers'], axis=1))}")
    print("prior P (lag 1):\n", np.round(r["P_prior"], 4))
    print("predicted-label P (lag 1):\n", np.round(r["P_pred"], 4))
    print(f"BAR dwell within {DWELL_BAR:.0%} per state: "
          f"{'met' if (rel <= DWELL_BAR).all() else 'NOT met'} "
          f"(worst {rel.max():.2f}); BAR max|P - P_true| <= {MATRIX_BAR}: "
          f"{'met' if diff <= MATRIX_BAR else 'NOT met'} ({diff:.4f}; predicted "
          f"labels {np.abs(r['P_pred'] - r['P_true']).max():.4f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--dynamics", nargs="+", default=["overdamped"])
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--load-dir", default=None,
                   help="read {dynamics}_seed{seed}.nldseg from here instead of fitting")
    p.add_argument("--save-dir", default=None, help="write each fitted model here")
    p.add_argument("--learn-langevin-params", action="store_true",
                   help="fit with learn_langevin_params=True (beta, gamma, mass learned)")
    a = p.parse_args()
    print(machine_line(torch.device("cpu")))
    for dyn in a.dynamics:
        for seed in a.seeds:
            report(run(dyn, seed, a.n_train, a.n_test, a.load_dir, a.save_dir,
                       a.learn_langevin_params))


if __name__ == "__main__":
    main()
