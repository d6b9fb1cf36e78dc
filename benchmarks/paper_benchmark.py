"""Paper setting, several seeds: accuracy, wells found, occupancy error, time.

Trains on ``--n-train`` sequences of length 200 with the library defaults and
tests on 500 sequences of length 500 (the paper's test set), for each seed and
dynamics given. Prints one line per run and a summary per dynamics.

    python benchmarks/paper_benchmark.py --seeds 0 1 2 --dynamics overdamped underdamped
"""

import argparse
import os
import platform
import time

import numpy as np
import torch

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import segmentation_accuracy

METHODS = ("sampled", "zeroth_order", "second_order")


def run(dynamics: str, seed: int, n_train: int, n_test: int,
        save_dir: str | None = None) -> dict:
    X, _ = make_markov_chain_sequences(n_train, 200, n_features=15, switch_prob=0.025,
                                       random_state=1000 + seed,
                                       emission_random_state=seed)
    X_test, y_test = make_markov_chain_sequences(n_test, 500, n_features=15,
                                                 switch_prob=0.025,
                                                 random_state=2000 + seed,
                                                 emission_random_state=seed)
    t0 = time.perf_counter()
    seg = LangevinSegmenter(dynamics=dynamics, random_state=seed).fit(X)
    t_fit = time.perf_counter() - t0
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        seg.save(os.path.join(save_dir, f"{dynamics}_seed{seed}.nldseg"))
    t0 = time.perf_counter()
    y_pred = seg.predict(X_test)
    t_pred = time.perf_counter() - t0
    per_seq = segmentation_accuracy(y_test, y_pred, per_sequence=True)
    out = {"dynamics": dynamics, "seed": seed, "n_states": seg.n_states_,
           "acc": segmentation_accuracy(y_test, y_pred), "acc_mean": per_seq.mean(),
           "acc_std": per_seq.std(), "t_fit": t_fit, "t_pred": t_pred,
           "steps": seg.n_iter_}
    for m in METHODS:
        occ = seg.energy_.occupancy(m)
        out[m] = np.abs(occ - 1 / 3).sum() if len(occ) == 3 else float("nan")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dynamics", nargs="+", default=["overdamped", "underdamped"])
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--save-dir", default=None,
                   help="write each fitted model here (LangevinSegmenter.save)")
    a = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("dynamics     seed wells  acc(pooled) acc(mean+-std)   l1:sampled 0th   "
          "2nd    fit_s  predict_s steps")
    rows = []
    for dyn in a.dynamics:
        for seed in a.seeds:
            try:
                r = run(dyn, seed, a.n_train, a.n_test, a.save_dir)
            except Exception as exc:  # a seed study counts failures, it does not stop
                print(f"{dyn:12s} {seed:4d} FAILED: {type(exc).__name__}: {exc}",
                      flush=True)
                rows.append({"dynamics": dyn, "seed": seed, "failed": True})
                continue
            rows.append(r)
            print(f"{dyn:12s} {seed:4d} {r['n_states']:5d}  {r['acc']:.4f}      "
                  f"{r['acc_mean']:.4f}+-{r['acc_std']:.4f}  {r['sampled']:.3f}    "
                  f"{r['zeroth_order']:.3f}  {r['second_order']:.3f}  "
                  f"{r['t_fit']:6.0f} {r['t_pred']:8.1f}  {r['steps']}", flush=True)
    for dyn in a.dynamics:
        failed = sum(r.get("failed", False) for r in rows if r["dynamics"] == dyn)
        rs = [r for r in rows if r["dynamics"] == dyn and not r.get("failed")]
        if not rs:
            print(f"SUMMARY {dyn}: all {failed} runs failed")
            continue
        acc = np.array([r["acc"] for r in rs])
        three = sum(r["n_states"] == 3 for r in rs)
        occ = {m: np.nanmean([r[m] for r in rs]) for m in METHODS}
        good = sum(r["n_states"] == 3 and r["acc"] >= 0.93 for r in rs)
        print(f"SUMMARY {dyn}: accuracy mean {acc.mean():.4f}, min {acc.min():.4f}, "
              f"std {acc.std():.4f}; 3 wells in {three}/{len(rs) + failed}; "
              f"3 wells and accuracy >= 0.93 in {good}/{len(rs) + failed}; "
              f"{failed} failed; occupancy l1 mean "
              + ", ".join(f"{m} {v:.3f}" for m, v in occ.items())
              + f", fit {np.mean([r['t_fit'] for r in rs]):.0f} s")


if __name__ == "__main__":
    main()
