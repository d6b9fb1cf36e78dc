"""How much the phase after training varies with its own seeds, on one trained model.

``state_occupancy_`` comes from the phase after training: one posterior path
through the training data, the depths' refit on it, the wells' search and
the occupancy's importance sampling. This script runs that phase (with
the states' chain: ``depth_refinement.after_training``) again on one
trained model with ``--repeats`` seed pairs (100 and 101, 102 and 103, ...)
and prints, for each, the wells, whether the refit was kept, the test
labels' accuracy and changes, and the occupancy's l1 from the true
stationary law, states matched to the truth by those labels (as the suite
matches them). Training is not repeated, so the spread is the phase's
alone.

The model is a saved joblib dict ``{"seg", "train", "test", "y_test",
"params"}`` of a suite case (``--load``), or a suite case fitted here with the
defaults but ``depth_steps=0`` (``--case``/``--seed``; saved to ``--save``
when given, and loaded from it when it exists)::

    python benchmarks/phase_spread.py --case heavy_tails --seed 1 --save fits/ht1.joblib
    python benchmarks/phase_spread.py --load fits/overlap_0.joblib --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import joblib
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from depth_refinement import after_training  # noqa: E402
from suite import CASES, commit, machine, occupancy_l1  # noqa: E402

from nldseg import LangevinSegmenter  # noqa: E402
from nldseg.metrics import n_label_changes, segmentation_accuracy  # noqa: E402


def trained_model(args) -> dict:
    """The saved fit, or the case fitted here (``depth_steps=0``)."""
    path = args.load or args.save
    if path and os.path.exists(path):
        return joblib.load(path)
    train, test, y_test, params = CASES[args.case].draw(args.seed)
    seg = LangevinSegmenter(random_state=args.seed, depth_steps=0).fit(train)
    d = {"seg": seg, "train": train, "test": test, "y_test": y_test, "params": params}
    if args.save:
        joblib.dump(d, args.save)
    return d


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--load", default=None, help="a saved fit (joblib dict)")
    p.add_argument("--case", default=None, choices=sorted(CASES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="where to keep the fit of --case")
    p.add_argument("--steps", type=int, default=400, help="depth_steps of the phase")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if not (args.load or args.case):
        p.error("give --load or --case")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"# machine: {machine()}; commit {commit()}; one torch thread")
    d = trained_model(args)
    true = np.asarray(d["params"]["stationary_distribution"])
    y_test, l1s = d["y_test"], []
    for r in range(args.repeats):
        seeds = [100 + 2 * r, 101 + 2 * r]
        seg, seconds = after_training(d["seg"], d["train"], args.steps, seeds)
        labels = seg.predict(d["test"])
        l1 = occupancy_l1(y_test, labels, seg.state_occupancy_, true)
        l1s.append(l1)
        print(f"steps {args.steps} seeds {seeds[0]}: wells {seg.n_states_} "
              f"kept {seg.depths_refitted_} accuracy "
              f"{segmentation_accuracy(y_test, labels):.4f} changes "
              f"{n_label_changes(labels)} ({n_label_changes(y_test)}) l1 {l1:.4f} occ "
              f"{np.round(seg.state_occupancy_, 3).tolist()} {seconds:.0f} s", flush=True)
    if l1s:
        print(f"# l1 mean {np.mean(l1s):.4f}, range {min(l1s):.4f}-{max(l1s):.4f}, "
              f"sd {np.std(l1s):.4f} over {len(l1s)} seeds")


if __name__ == "__main__":
    main()
