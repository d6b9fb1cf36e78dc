"""Data-parallel training: one process against two under torchrun, same fit.

Fits the paper's three-state chain (150 x 200 steps, 15 features) with
``max_iter`` gradient steps and the default batch of 64 windows, three ways,
one after the other: one process on 1 thread, one process on 2 threads, and
``torchrun --nproc_per_node=2`` (gloo) with 1 thread per process and
``distributed=True``. Prints the fit time of each (``fit`` alone, not the
interpreter's start), the ratio to the one-process, one-thread fit, and the
largest difference of the data-parallel loss curve and test labels from the
one-process fit's.

    python benchmarks/distributed_training.py [--max-iter 300]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _data():
    from nldseg.datasets import make_markov_chain_sequences
    X, _ = make_markov_chain_sequences(150, 200, n_states=3, n_features=15,
                                       switch_prob=0.025, random_state=1000,
                                       emission_random_state=0)
    X_test, y_test = make_markov_chain_sequences(50, 500, n_states=3, n_features=15,
                                                 switch_prob=0.025, random_state=2000,
                                                 emission_random_state=0)
    return X, X_test, y_test


def worker(max_iter: int, n_threads: int, out: Path) -> None:
    """One fit; with torchrun's environment a data-parallel one. Rank 0 writes."""
    import torch.distributed as dist

    from nldseg import LangevinSegmenter
    from nldseg.metrics import segmentation_accuracy
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    X, X_test, y_test = _data()
    seg = LangevinSegmenter(max_iter=max_iter, early_stopping=False, n_threads=n_threads,
                            distributed=distributed, random_state=0)
    t0 = time.perf_counter()
    seg.fit(X)
    seconds = time.perf_counter() - t0
    if not distributed or dist.get_rank() == 0:
        labels = seg.predict(X_test)
        out.write_text(json.dumps({
            "seconds": seconds, "loss": seg.loss_curve_, "labels": labels.tolist(),
            "n_states": seg.n_states_,
            "accuracy": segmentation_accuracy(y_test, labels)}))
    if distributed:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--worker", nargs=2, metavar=("N_THREADS", "OUT"))
    args = parser.parse_args()
    if args.worker:
        worker(args.max_iter, int(args.worker[0]), Path(args.worker[1]))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    me = [str(Path(__file__).resolve()), "--max-iter", str(args.max_iter), "--worker"]
    runs = {"1 process, 1 thread": [sys.executable, *me, "1"],
            "1 process, 2 threads": [sys.executable, *me, "2"],
            "torchrun 2 processes x 1 thread": [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", *me, "1"]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in runs.items():
            out = Path(tmp) / "out.json"
            subprocess.run([*cmd, str(out)], check=True, env=env)
            results[name] = json.loads(out.read_text())
    ref = results["1 process, 1 thread"]
    print(f"max_iter={args.max_iter}, batch_size=64, 150 x 200 training steps")
    print(f"{'run':34s} {'fit s':>7s} {'ratio':>6s} {'states':>6s} {'acc':>6s} "
          f"{'max |loss diff|':>15s} {'labels differ':>13s}")
    for name, r in results.items():
        dl = np.max(np.abs(np.array(r["loss"]) - ref["loss"]))
        dlab = np.mean(np.array(r["labels"]) != np.array(ref["labels"]))
        print(f"{name:34s} {r['seconds']:7.1f} {r['seconds'] / ref['seconds']:6.2f} "
              f"{r['n_states']:6d} {r['accuracy']:6.3f} {dl:15.2e} {dlab:13.4f}")


if __name__ == "__main__":
    main()
