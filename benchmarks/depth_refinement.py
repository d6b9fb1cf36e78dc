"""The wells' depths refitted after training (``depth_steps``): with and without.

``state_occupancy_`` reads the relative depths of the energy's wells, which
the ELBO fits poorly. Since ``a753e3e`` a fit refits the energy alone after
training (``depth_steps=400``; kept only if the wells stay the same). This
script measures that step on its own: for each model it runs the phase
after training (the refit, the search for wells, the clock and the states'
chain: ``LangevinSegmenter._fit_landscape`` and ``_markov_chain``) twice on
the same trained module, with ``depth_steps=0`` and with each value of
``--steps``, with the same seeds, and prints the number of wells, the test
accuracy of the default labels, their label changes, the occupancy l1 from
the true stationary law (states matched by the test labels, as the suite
matches them) and the phase's seconds. Training is the same in both (the
refit comes after it), so any difference is the refit's.

Models come from ``--cases`` (fitted here with the library defaults but
``depth_steps=0``, seed ``--seeds``) or ``--load``: a saved fit, either a
joblib dict ``{"seg", "train", "test", "y_test", "params"}`` of a suite case
or a ``.nldseg`` file followed by its suite case and seed::

    python benchmarks/depth_refinement.py --cases overlap regimes --seeds 0
    python benchmarks/depth_refinement.py --load fits/overlap_0.joblib
    python benchmarks/depth_refinement.py --load fits/langevin_seed1.nldseg:langevin:1
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

import joblib
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suite import CASES, commit, machine, occupancy_l1  # noqa: E402

from nldseg import LangevinSegmenter  # noqa: E402
from nldseg.metrics import n_label_changes, segmentation_accuracy  # noqa: E402

SEEDS = [11, 12]  # Of the phase after training, the same for every variant.


def after_training(seg: LangevinSegmenter, train: list, steps: int,
                   seeds: list = SEEDS) -> tuple:
    """A copy of ``seg`` whose phase after training ran again with ``depth_steps``."""
    seg = copy.deepcopy(seg).set_params(depth_steps=steps)
    seqs = seg._prepare(train, None)
    t0 = time.perf_counter()
    fit = seg._fit_landscape(seg.module_, seqs.data, seqs, seeds, seg.min_state_fraction)
    landscape = fit.landscape
    chain = seg._markov_chain(seg.module_, landscape, fit.time_scale)
    seconds = time.perf_counter() - t0
    seg.energy_, seg.prior_time_scale_ = landscape, fit.time_scale
    seg.training_dwell_time_, seg.depths_refitted_ = fit.dwell, fit.depths_refitted
    seg.n_states_, seg.state_occupancy_ = landscape.n_states, landscape.occupancy("sampled")
    seg._markov_transition, seg._markov_points = chain.transition, chain.points
    return seg, seconds


def compare(name: str, d: dict, steps_list: list) -> None:
    true = np.asarray(d["params"].get("stationary_distribution", []))
    print(f"\n{name}: {d['seg'].n_lags_} lag(s)")
    print("| depth_steps | wells | accuracy | label changes (true) | occupancy l1 | "
          "occupancy | refit kept | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for steps in [0] + steps_list:
        seg, seconds = after_training(d["seg"], d["train"], steps)
        labels, y_test = seg.predict(d["test"]), d["y_test"]
        l1 = "-"
        if len(true):
            l1 = f"{occupancy_l1(y_test, labels, seg.state_occupancy_, true):.4f}"
        accuracy = segmentation_accuracy(y_test, labels)
        print(f"| {steps} | {seg.n_states_} | {accuracy:.4f} | {n_label_changes(labels)} "
              f"({n_label_changes(y_test)}) | {l1} | "
              f"{np.round(seg.state_occupancy_, 3).tolist()} | {seg.depths_refitted_} | "
              f"{seconds:.0f} |", flush=True)


def load(spec: str) -> tuple:
    """A saved fit: a joblib dict, or ``FILE.nldseg:CASE:SEED``."""
    if ".nldseg" in spec:
        path, case, seed = spec.split(":")
        train, test, y_test, params = CASES[case].draw(int(seed))
        return os.path.basename(path), {"seg": LangevinSegmenter.load(path),
                                        "train": train, "test": test,
                                        "y_test": y_test, "params": params}
    return os.path.basename(spec), joblib.load(spec)


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=[], choices=sorted(CASES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--load", nargs="+", default=[], help="saved fits")
    p.add_argument("--steps", type=int, nargs="+", default=[400])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"# machine: {machine()}; commit {commit()}; one torch thread")
    for spec in args.load:
        compare(*load(spec), args.steps)
    for name in args.cases:
        for seed in args.seeds:
            train, test, y_test, params = CASES[name].draw(seed)
            seg = LangevinSegmenter(random_state=seed, depth_steps=0).fit(train)
            compare(f"{name} seed {seed}", {"seg": seg, "train": train, "test": test,
                                            "y_test": y_test, "params": params}, args.steps)


if __name__ == "__main__":
    main()
