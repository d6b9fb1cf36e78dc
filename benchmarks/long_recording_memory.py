"""Memory and time of ``predict`` or ``score`` on one long sequence.

One sequence of ``--steps`` observations with 45 features (standard normal) is
labelled (``predict``) or scored (``score``) by a model of the default
architecture, fitted here for 20 gradient steps (the cost of inference does
not depend on training). Printed: the wall time of the call and the growth
of the peak resident memory (``ru_maxrss``) during it. Run each call in a
fresh process, so that the peak is the call's own::

    python benchmarks/long_recording_memory.py --call predict --steps 200000
    python benchmarks/long_recording_memory.py --call score --steps 200000
"""

import argparse
import resource
import time
import warnings

import numpy as np
import torch

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--call", choices=["predict", "score"], default="predict")
    p.add_argument("--steps", type=int, default=200_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    X, _ = make_markov_chain_sequences(40, 100, n_features=45, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(max_iter=20, kl_warmup=20, random_state=0).fit(X)
    long = np.random.default_rng(0).normal(size=(args.steps, 45))
    before = _peak_mb()
    start = time.perf_counter()
    out = getattr(seg, args.call)(long)
    elapsed = time.perf_counter() - start
    shown = f"{out:.8f}" if args.call == "score" else f"{len(out)} labels"
    print(f"{args.call}, 1 sequence x {args.steps} steps x 45 features: {elapsed:.1f} s, "
          f"peak memory +{_peak_mb() - before:.0f} MB (before the call "
          f"{before:.0f} MB); {shown}")


if __name__ == "__main__":
    main()
