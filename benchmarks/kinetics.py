"""Kinetics of the learned prior against the true chain, in the paper's setting.

Fits the library defaults on the paper's data (500 sequences of 200 steps, 3
states, switch probability 0.025 per step to each other state, 15 features),
matches the learned states to the true ones by the Hungarian map on 100 test
sequences of 500 steps, then compares with the true chain:

* mean dwell time per state: ``seg.mean_dwell_times()`` (prior paths, core-set
  labels) against ``1 / (1 - P_ii)`` = 20 steps (bar: within 15 % per state);
* lag-1 transition matrix: ``seg.transition_matrix(1)`` against the true ``P``
  (bar: max abs difference <= 0.02);
* mean first-passage times between states (``seg.mean_first_passage_times()``)
  and implied time scales (``seg.implied_timescales()``) against those of the
  true ``P`` (no bar; median and worst relative error).

Both are read on the library's default clock, calibrated to the posterior
paths (``prior_time_scale_``); the prior as trained (``clock="model"``) is
printed beside them, with its two bar figures. For the question "why", it
prints beside them: the Eyring-Kramers dwell ``1 / sum_j k_ij``
(``seg.kramers_rates(clock="model")``, continuous time), the same prior as
trained simulated with a 10x finer Euler step (how far the fitted ``dt`` is
from the continuous SDE), the barriers, and the dwell times and transition
matrix of the *predicted* labels of the test data (what the segmentation
itself reads).

    python benchmarks/kinetics.py --seeds 0 [--dynamics overdamped underdamped]
    python benchmarks/kinetics.py --load-dir models/   # reuse saved fits
    python benchmarks/kinetics.py --learn-langevin-params  # beta, gamma, mass learned

``--cases unequal langevin`` runs the same comparison on the suite's cases
(``benchmarks/suite.py``: same data, same sizes, the library defaults):

* ``unequal`` (a Markov chain, 4 states, shares 0.47 / 0.30 / 0.20 / 0.04):
  against the true chain, as above;
* ``langevin`` (4-well diffusion seen through a nonlinear map): against the
  generator itself, run long (64 paths of 5,000 observation steps, another
  seed), whose nearest-well labels are read two ways: raw, and by core sets
  (a point enters a well's core when it is nearer than half the way to the
  cell's border, the same milestoning rule as the library's); bar: the
  prior's lag-1 matrix within 0.02 of the generator's, and the Eyring-Kramers
  escape rate of every state within a factor 2 of the simulated one.

``--round-trip`` also refits the defaults on ``sample``'s output (as many
sequences as the training set unless ``--round-trip-sequences``, as long)
and compares: the number of states, and the occupancy (``state_occupancy_``)
of the refit against the first model's, states matched by the refit's labels
of the samples (bar: same number of states, l1 <= 0.05). Beside it, the
samples' own label shares against the first model's occupancy: a finite
sample of a slowly switching chain carries its occupancy only so well, and
no refit can do better than that floor.

    python benchmarks/kinetics.py --cases unequal langevin --round-trip
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from _common import machine_line
from suite import CASES as SUITE_CASES

from nldseg import LangevinSegmenter
from nldseg._kinetics import (
    core_set_labels,
    landscape_saddles,
    mean_first_passage_times,
    mean_visit_lengths,
    prior_state_paths,
    row_stochastic,
    transition_counts,
)
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import label_mapping, segmentation_accuracy

DWELL_BAR = 0.15
MATRIX_BAR = 0.02
KRAMERS_BAR = 2.0
ROUND_TRIP_BAR = 0.05


def _fitted(name: str, X, load_dir, save_dir, **params):
    """``(segmenter, fit seconds)``: read ``name`` from ``load_dir``, else fit ``X``."""
    path = os.path.join(load_dir or save_dir or "", name)
    if load_dir:
        return LangevinSegmenter.load(path), float("nan")
    t0 = time.perf_counter()
    seg = LangevinSegmenter(**params).fit(X)
    t_fit = time.perf_counter() - t0
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        seg.save(path)
    return seg, t_fit


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _learned_order(y_true, y_pred, k: int) -> np.ndarray:
    """Learned state of each true state (Hungarian map of the labels)."""
    mapping = label_mapping(y_true, y_pred)
    return np.array([s for t in range(k) for s, tt in mapping.items() if tt == t])


def _in_true_order(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Learned-state values (vector or matrix) indexed by true state."""
    values = np.asarray(values)
    return values[np.ix_(order, order)] if values.ndim == 2 else values[order]


def run(dynamics: str, seed: int, n_train: int, n_test: int, load_dir, save_dir,
        learn: bool = False) -> dict:
    X, y_train = make_markov_chain_sequences(n_train, 200, n_features=15,
                                             switch_prob=0.025, random_state=1000 + seed,
                                             emission_random_state=seed)
    X_test, y_test, params = make_markov_chain_sequences(
        n_test, 500, n_features=15, switch_prob=0.025, random_state=2000 + seed,
        emission_random_state=seed, return_params=True)
    P_true = params["transition_matrix"]
    seg, t_fit = _fitted(f"{dynamics}{'_learned' if learn else ''}_seed{seed}.nldseg",
                         X, load_dir, save_dir, dynamics=dynamics,
                         learn_langevin_params=learn, random_state=seed)
    y_pred = seg.predict(X_test)
    out = {"dynamics": dynamics, "seed": seed, "n_states": seg.n_states_,
           "t_fit": t_fit, "beta": seg.beta_, "gamma": seg.gamma_, "mass": seg.mass_,
           "acc": segmentation_accuracy(y_test, y_pred),
           "P_true": P_true, "dwell_true": 1 / (1 - np.diag(P_true))}
    out.update(_kinetics(seg, y_test, y_pred, len(P_true), seed, X, list(y_train)))
    return out


def _own_chain(labels: list, k: int) -> np.ndarray:
    """Lag-1 matrix of the training set's true labels: what its data say (the
    sampling floor of any estimate from them)."""
    counts = np.zeros((k, k))
    for y in labels:
        y = np.asarray(y)
        np.add.at(counts, (y[:-1], y[1:]), 1)
    return row_stochastic(counts)


def _kinetics(seg, y_test, y_pred, k_true: int, seed: int, X_train=None,
              train_labels=None) -> dict:
    """The prior's kinetics beside the predicted labels', in true state order.

    Prior ``transition_matrix(1)`` and ``mean_dwell_times()``, the
    Eyring-Kramers dwell, the prior with a 10x finer Euler step, the barriers,
    and the lag-1 matrix and dwell of the test labels (sequences of equal
    length); reordered by the Hungarian map when ``k_true`` states were found.
    """
    out = {"time_scale": seg.prior_time_scale_}
    P, out["t_matrix"] = _timed(lambda: seg.transition_matrix(1))
    dwell, out["t_dwell"] = _timed(seg.mean_dwell_times)
    P_model = seg.transition_matrix(1, clock="model")
    dwell_model = seg.mean_dwell_times(clock="model")
    # Kramers against the finely stepped simulation: both on the trained clock.
    rates, out["t_kramers"] = _timed(lambda: seg.kramers_rates(clock="model"))
    fine = prior_state_paths(seg.module_, seg.energy_, dt=seg.dt / 10, n_paths=256,
                             n_steps=1000, core_fraction=0.5,
                             generator=torch.Generator().manual_seed(seed)).labels
    k = seg.n_states_
    pred = np.stack(y_pred)
    mfpt, out["t_mfpt"] = _timed(seg.mean_first_passage_times)
    out["its_prior"] = seg.implied_timescales()
    out.update(P_prior=P, dwell_prior=dwell, dwell_kramers=1 / rates.sum(1),
               mfpt_prior=mfpt,
               P_model=P_model, dwell_model=dwell_model,
               barriers=landscape_saddles(seg.energy_)["barriers"],
               dwell_fine=mean_visit_lengths(fine, k),
               P_pred=row_stochastic(transition_counts(pred, k, 1)),
               dwell_pred=mean_visit_lengths(pred, k))
    keys = ["P_prior", "P_pred", "barriers", "dwell_prior", "dwell_fine",
            "dwell_kramers", "dwell_pred", "P_model", "dwell_model", "mfpt_prior"]
    if X_train is not None:  # The states' chain re-estimated on the training data.
        (P_data, out["t_data"]) = _timed(lambda: seg.estimate_transition_matrix(X_train))
        out.update(P_data=P_data, dwell_data=1 / (1 - np.diag(P_data)))
        keys += ["P_data", "dwell_data"]
    if train_labels is not None and k == k_true:  # Already in true order.
        out["P_own"] = _own_chain(train_labels, k)
        out["dwell_own"] = 1 / (1 - np.diag(out["P_own"]))
    if k == k_true:
        order = _learned_order(y_test, y_pred, k)
        for key in keys:
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
            ("prior mean_dwell_times (calibrated clock, the default)",
             r["dwell_prior"]),
            ("prior as trained (clock='model', fitted dt)", r["dwell_model"]),
            ("prior as trained, Euler dt/10", r["dwell_fine"]),
            ("Eyring-Kramers 1/sum_j k_ij (as trained)", r["dwell_kramers"]),
            ("predicted labels of the test data", r["dwell_pred"])]
    for name, v in rows:
        print(f"| {name} | " + " | ".join(f"{x:.1f}" for x in v) + " |")
    print("| relative dwell error of the prior | "
          + " | ".join(f"{x:.2f}" for x in rel) + " |")
    print(f"lowest barrier out of each state, in kT = 1/beta: "
          f"{_fmt(r['beta'] * np.min(r['barriers'], axis=1))}")
    print("prior P (lag 1):\n", np.round(r["P_prior"], 4))
    print("predicted-label P (lag 1):\n", np.round(r["P_pred"], 4))
    _print_clock(r)
    _print_passages(r)
    _print_data_estimate(r)
    print(f"BAR dwell within {DWELL_BAR:.0%} per state: "
          f"{'met' if (rel <= DWELL_BAR).all() else 'NOT met'} "
          f"(worst {rel.max():.2f}); BAR max|P - P_true| <= {MATRIX_BAR}: "
          f"{'met' if diff <= MATRIX_BAR else 'NOT met'} ({diff:.4f}; predicted "
          f"labels {np.abs(r['P_pred'] - r['P_true']).max():.4f})")


def _generator_run(case, seed: int, n_paths: int = 64, n_steps: int = 5000) -> dict:
    """Lag-1 matrix and dwell times of the Langevin generator itself, run long.

    Labels: the generator's nearest-well labels, raw and by core sets (a
    point enters the core of its well when nearer to the center than a
    quarter of the distance between adjacent centers, i.e. half the way to
    the cell's border; between cores the last core visited).
    """
    _, y, params = case.generator(n_paths, n_steps, random_state=30_000 + seed,
                                  emission_random_state=seed, return_params=True,
                                  **case.kwargs)
    centers, z = params["well_centers"], params["latents"]
    dist = np.linalg.norm(z[..., None, :] - centers, axis=-1)
    spacing = np.min(np.linalg.norm(centers[1] - centers[0]))
    k = len(centers)
    own = np.take_along_axis(dist, y[..., None], -1)[..., 0]
    cores = core_set_labels(y, own, np.full(k, spacing / 4))
    return {"P_raw": row_stochastic(transition_counts(y, k, 1)),
            "P_core": row_stochastic(transition_counts(cores, k, 1)),
            "dwell_raw": mean_visit_lengths(y, k),
            "dwell_core": mean_visit_lengths(cores, k)}


def _round_trip(seg, case, seed: int, params: dict, n_sequences=None) -> dict:
    """Refit the defaults on ``seg.sample``'s output and compare the occupancy.

    ``n_sequences`` samples (the training set's number by default), as long
    as the training sequences. Beside the refit's l1 against the first
    model, the samples' own label shares are compared with the first model's
    occupancy: the sampling error of a finite sample of the model's chain,
    the floor of what a refit on it can reach.
    """
    from suite import matched_occupancy, occupancy_l1

    n_sequences = n_sequences or case.n_train
    X_s, y_s = seg.sample(n_sequences, case.train_length, random_state=seed)
    t0 = time.perf_counter()
    refit = LangevinSegmenter(random_state=seed, **params).fit(list(X_s))
    t_fit = time.perf_counter() - t0
    labels = refit.predict(list(X_s))
    k = seg.n_states_
    # The refit's shares in the first model's state order (the samples' labels).
    matched, _ = matched_occupancy(list(y_s), labels, refit.state_occupancy_, k)
    shares = np.bincount(y_s.ravel(), minlength=k) / y_s.size
    return {"K_refit": refit.n_states_, "t_refit": t_fit, "n_sequences": n_sequences,
            "occ_first": np.asarray(seg.state_occupancy_),
            "occ_refit": matched,
            "l1": occupancy_l1(list(y_s), labels, refit.state_occupancy_,
                               seg.state_occupancy_),
            "sample_shares": shares,
            "l1_floor": float(np.abs(shares - np.asarray(seg.state_occupancy_)).sum()),
            "l1_to_sample": float(np.abs(matched - shares).sum()),
            "acc_refit": segmentation_accuracy(list(y_s), labels)}


def run_case(name: str, seed: int, load_dir, save_dir, round_trip: bool,
             params: dict, round_trip_sequences=None) -> dict:
    """The kinetics bars on one of the suite's cases (``params``: non-defaults)."""
    from suite import CASES

    case = CASES[name]
    train, test, y_test, truth = case.draw(seed)
    seg, t_fit = _fitted(f"{name}_seed{seed}.nldseg", train, load_dir, save_dir,
                         random_state=seed, **params)
    y_pred = seg.predict(test)
    k = seg.n_states_
    out = {"case": name, "seed": seed, "n_states": k, "K_true": len(
        truth["stationary_distribution"]), "t_fit": t_fit,
        "acc": segmentation_accuracy(y_test, y_pred), "beta": seg.beta_}
    if "transition_matrix" in truth:
        P_true = np.asarray(truth["transition_matrix"])
        out.update(truth="the true chain", P_true=P_true,
                   dwell_true=1 / (1 - np.diag(P_true)))
    else:
        gen = _generator_run(case, seed)
        out.update(truth="the generator run long, core-set labels",
                   P_true=gen["P_core"], dwell_true=gen["dwell_core"],
                   P_raw=gen["P_raw"], dwell_raw=gen["dwell_raw"])
    known = "transition_matrix" in truth  # The training labels' own chain is comparable.
    out.update(_kinetics(seg, y_test, y_pred, out["K_true"], seed, train,
                         truth["train_labels"] if known else None))
    if round_trip:
        out["round_trip"] = _round_trip(seg, case, seed, params, round_trip_sequences)
    return out


def report_case(r: dict) -> None:
    print(f"\n## {r['case']}, seed {r['seed']}: {r['n_states']} states "
          f"(true {r['K_true']}), test accuracy {r['acc']:.4f}, fit {r['t_fit']:.0f} s, "
          f"beta {r['beta']:.3g}; truth: {r['truth']}")
    if r["n_states"] == r["K_true"]:
        k = r["K_true"]
        print("| quantity (true state order) | " + " | ".join(
            f"state {i}" for i in range(k)) + " |")
        print("|---|" + "---|" * k)
        rows = [("true dwell", r["dwell_true"])]
        if "dwell_raw" in r:
            rows.append(("generator dwell, raw nearest-well labels", r["dwell_raw"]))
        rows += [("prior mean_dwell_times (calibrated clock, the default)",
                  r["dwell_prior"]),
                 ("prior as trained (clock='model', fitted dt)", r["dwell_model"]),
                 ("prior as trained, Euler dt/10", r["dwell_fine"]),
                 ("Eyring-Kramers 1/sum_j k_ij (as trained)", r["dwell_kramers"]),
                 ("predicted labels of the test data", r["dwell_pred"])]
        for name, v in rows:
            print(f"| {name} | " + " | ".join(f"{x:.1f}" for x in v) + " |")
        rel = np.abs(r["dwell_prior"] - r["dwell_true"]) / r["dwell_true"]
        diff = np.abs(r["P_prior"] - r["P_true"]).max()
        ratio = r["dwell_fine"] / r["dwell_kramers"]  # = Kramers rate / simulated
        print(f"lowest barrier out of each state, in kT: "
              f"{_fmt(r['beta'] * np.min(r['barriers'], axis=1))}")
        print("true P (lag 1):\n", np.round(r["P_true"], 4))
        print("prior P (lag 1):\n", np.round(r["P_prior"], 4))
        print("predicted-label P (lag 1):\n", np.round(r["P_pred"], 4))
        _print_clock(r)
        _print_passages(r)
        _print_data_estimate(r)
        kramers_met = np.all(np.abs(np.log(ratio)) <= np.log(KRAMERS_BAR))
        print(f"BAR dwell within {DWELL_BAR:.0%}: "
              f"{'met' if (rel <= DWELL_BAR).all() else 'NOT met'} (worst "
              f"{rel.max():.2f}); BAR max|P - P_true| <= {MATRIX_BAR}: "
              f"{'met' if diff <= MATRIX_BAR else 'NOT met'} ({diff:.4f}; predicted "
              f"labels {np.abs(r['P_pred'] - r['P_true']).max():.4f}); BAR Kramers "
              f"escape rate within {KRAMERS_BAR:g}x of the simulated (dt/10): "
              f"{'met' if kramers_met else 'NOT met'} (ratios {_fmt2(ratio)})")
    else:
        print("states found differ from the truth: no per-state comparison")
        print("prior P:\n", np.round(r["P_prior"], 4))
    if "round_trip" in r:
        t = r["round_trip"]
        met = t["K_refit"] == r["n_states"] > 1 and t["l1"] <= ROUND_TRIP_BAR
        print(f"round trip: refit on {t['n_sequences']} sampled sequences finds "
              f"{t['K_refit']} states "
              f"(first model {r['n_states']}), fit {t['t_refit']:.0f} s, accuracy on the "
              f"samples {t['acc_refit']:.4f}; occupancy first {_fmt2(t['occ_first'])}, "
              f"refit {_fmt2(t['occ_refit'])}, sample label shares "
              f"{_fmt2(t['sample_shares'])}; l1 {t['l1']:.3f} (samples' own shares vs "
              f"the first model, the floor: {t['l1_floor']:.3f}; refit vs the samples' "
              f"shares: {t['l1_to_sample']:.3f}); BAR "
              f"{'met' if met else 'NOT met'}"
              f"{' (one state: nothing to compare)' if r['n_states'] == 1 else ''}")


def _print_passages(r: dict) -> None:
    """Mean first-passage times and implied time scales of the prior vs the truth.

    Both from ``P_true`` for the truth (the Markov state model's formula,
    :func:`nldseg._kinetics.mean_first_passage_times`; time scales
    ``-1 / ln |lambda_k|`` of its eigenvalues), from the calibrated prior's
    ``mean_first_passage_times()`` and ``implied_timescales()`` for the model.
    """
    true = mean_first_passage_times(r["P_true"])
    off = ~np.eye(len(true), dtype=bool)
    rel = np.abs(r["mfpt_prior"][off] - true[off]) / true[off]
    ev = np.sort(np.abs(np.linalg.eigvals(r["P_true"])))[::-1][1:]
    print("true mean first-passage times (row: from, column: to):\n",
          np.round(true, 1))
    print("prior mean_first_passage_times():\n", np.round(r["mfpt_prior"], 1))
    print(f"mean first-passage time, relative error: median {np.median(rel):.2f}, "
          f"worst {rel.max():.2f}; implied time scales, true "
          f"{_fmt(-1 / np.log(ev))}, prior {_fmt(r['its_prior'])} "
          f"(mean_first_passage_times {r['t_mfpt']:.1f} s)")


def _print_clock(r: dict) -> None:
    """The calibrated clock, and the bars' two numbers on the trained one."""
    rel = np.abs(r["dwell_model"] - r["dwell_true"]) / r["dwell_true"]
    print(f"prior_time_scale_ {r['time_scale']:.3f}; as trained (clock='model'): "
          f"worst dwell error {rel.max():.2f}, max|P - P_true| "
          f"{np.abs(r['P_model'] - r['P_true']).max():.4f}")


def _print_data_estimate(r: dict) -> None:
    """The states' chain re-estimated on the training data, against the truth
    and against the training set's own true labels (the sampling floor)."""
    if "P_data" not in r:
        return
    rel = np.abs(r["dwell_data"] - r["dwell_true"]) / r["dwell_true"]
    diff = np.abs(r["P_data"] - r["P_true"]).max()
    line = (f"estimate_transition_matrix(training data), {r['t_data']:.1f} s: dwell "
            f"{_fmt(r['dwell_data'])}, worst error {rel.max():.2f} "
            f"(BAR {'met' if (rel <= DWELL_BAR).all() else 'NOT met'}); max|P - P_true| "
            f"{diff:.4f} (BAR {'met' if diff <= MATRIX_BAR else 'NOT met'})")
    if "dwell_own" in r:
        own = np.abs(r["dwell_own"] - r["dwell_true"]) / r["dwell_true"]
        line += (f"; the training labels' own chain: dwell {_fmt(r['dwell_own'])}, "
                 f"worst error {own.max():.2f}, max|P - P_true| "
                 f"{np.abs(r['P_own'] - r['P_true']).max():.4f}; estimate vs own: "
                 f"worst dwell {np.max(np.abs(r['dwell_data'] / r['dwell_own'] - 1)):.2f}")
    print(line)


def _fmt2(v) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in np.ravel(v)) + "]"


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
    p.add_argument("--cases", nargs="+", default=None, choices=sorted(SUITE_CASES),
                   help="the suite's cases instead of the paper setting (the bars' "
                        "cases: unequal, langevin)")
    p.add_argument("--round-trip", action="store_true",
                   help="with --cases: also refit on sample's output")
    p.add_argument("--round-trip-sequences", type=int, default=None,
                   help="sequences sampled for the round trip (default: as many as "
                        "the case's training set)")
    p.add_argument("--nldseg", default="{}",
                   help="with --cases: JSON of non-default LangevinSegmenter parameters")
    a = p.parse_args()
    print(machine_line(torch.device("cpu")))
    if a.cases:
        for name in a.cases:
            for seed in a.seeds:
                report_case(run_case(name, seed, a.load_dir, a.save_dir, a.round_trip,
                                     json.loads(a.nldseg), a.round_trip_sequences))
        return
    for dyn in a.dynamics:
        for seed in a.seeds:
            report(run(dyn, seed, a.n_train, a.n_test, a.load_dir, a.save_dir,
                       a.learn_langevin_params))


if __name__ == "__main__":
    main()
