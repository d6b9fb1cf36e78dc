"""Fit time with the candidate models trained one after the other or side by side.

The README demo's data (the paper's 3-state chain, 500 training sequences of
200 steps, 15 features, seed 0) and the library defaults: 3 candidates train
to the comparison point (two restarts on single frames and one reading a
lag), then the kept one trains on. Each ``--n-jobs`` value fits the same
data once, one after the other on the same machine (so a 2-core machine runs
one fit at a time), and the script prints each fit's time, wells and online
accuracy on 500 test sequences of 500 steps, and whether every fitted
parameter equals the first fit's bit for bit::

    python benchmarks/candidates_side_by_side.py --n-jobs 1 auto

Nothing else should run on the machine meanwhile: the second process uses the
core the first one leaves idle. Each line ends with a digest of the fitted
parameters, so that two versions of the library can be compared bit for bit
(``PYTHONPATH=<checkout> python benchmarks/candidates_side_by_side.py --n-jobs
auto`` for each).
"""

from __future__ import annotations

import argparse
import hashlib
import time
import warnings

import numpy as np
import torch
from _common import machine_line

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import n_label_changes, segmentation_accuracy


def _jobs(value: str):
    return value if value == "auto" else int(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--n-jobs", nargs="+", type=_jobs, default=[1, "auto"],
                   help="n_jobs values to fit with, in order (default: 1 auto)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    X, _ = make_markov_chain_sequences(500, 200, n_states=3, n_features=15,
                                       switch_prob=0.025, random_state=1000 + a.seed,
                                       emission_random_state=a.seed)
    X_test, y_test = make_markov_chain_sequences(
        500, 500, n_states=3, n_features=15, switch_prob=0.025,
        random_state=2000 + a.seed, emission_random_state=a.seed)
    print(machine_line(torch.device("cpu")))
    print(f"# paper-size data, seed {a.seed}, library defaults, one fit at a time")
    first, times = None, {}
    for jobs in a.n_jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            seg = LangevinSegmenter(random_state=a.seed, n_jobs=jobs).fit(X)
            times[jobs] = time.perf_counter() - t0
        y_pred = seg.predict(X_test)
        params = [q.detach().clone() for q in seg.module_.parameters()]
        digest = hashlib.sha256(b"".join(q.numpy().tobytes() for q in params))
        if first is None:
            first, same = params, "(reference)"
        else:
            same = str(all(torch.equal(u, v) for u, v in zip(first, params)))
        print(f"n_jobs={jobs!s:>5}: fit {times[jobs]:6.1f} s, {seg.n_states_} wells "
              f"(true 3), online accuracy {segmentation_accuracy(y_test, y_pred):.4f}, "
              f"{n_label_changes(y_pred)} label changes "
              f"({n_label_changes(y_test)} true), n_iter_ {seg.n_iter_}, "
              f"candidate scores {np.round(seg.candidate_scores_, 4).tolist()}, "
              f"parameters equal to the first fit's: {same}, "
              f"digest {digest.hexdigest()[:16]}", flush=True)
    base = times[a.n_jobs[0]]
    for jobs, t in times.items():
        print(f"# n_jobs={jobs}: {base / t:.2f}x the speed of n_jobs={a.n_jobs[0]}")


if __name__ == "__main__":
    main()
