"""Cost of calibrating the prior's clock on sequences of mixed lengths.

After training, the fit calibrates the prior's clock
(``nldseg._kinetics.calibrate_clock``): one posterior path through each
training sequence is cut into pieces of at most 500 steps, and the prior is
simulated from the first point of every piece for as long as the piece. On
ragged data the pieces differ in length. This script times that calibration
alone, on paths of known switching, so that two versions of the library can
be compared from their own checkouts (``PYTHONPATH``):

1. a small segmenter is fitted (``--seed``; 3 wells) on a three-state chain;
2. its prior, run on a clock ``--known`` times as fast, draws
   ``--n-paths`` stand-ins for the posterior paths, cut to the lengths of
   ragged recordings (``--min-length`` to ``--max-length`` steps, uniform,
   or with ``--log-uniform`` uniform in their logarithm: many short
   recordings and a few long ones);
3. ``calibrate_clock`` is timed ``--repeats`` times on them, on one thread
   (``--threads``), each time with another seed of the prior's noise; the
   clocks it finds are printed beside the known one (their spread is the
   noise of the prior's side: the stand-in paths stay the same).

Example (the figures in ``benchmarks/RESULTS.md``)::

    python benchmarks/clock_cost.py --repeats 3
    python benchmarks/clock_cost.py --repeats 3 --log-uniform --min-length 5
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import torch

from nldseg import LangevinSegmenter
from nldseg._kinetics import calibrate_clock, prior_state_paths
from nldseg.datasets import make_markov_chain_sequences

#: The test suite's small three-well fit (``tests/conftest.py``: ``TINY``).
SMALL = dict(device="cpu", hidden_size=32, context_size=16, window_length=40,
             batch_size=64, max_iter=72, early_stopping=False, learning_rate="constant",
             learning_rate_init=1e-2, kl_warmup=60, n_paths=4, decoder_covariance="full",
             n_init=1, n_lags=0, depth_steps=0, decoder_noise="gaussian")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-paths", type=int, default=200)
    parser.add_argument("--min-length", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=1200)
    parser.add_argument("--log-uniform", action="store_true")
    parser.add_argument("--known", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    X, _ = make_markov_chain_sequences(120, 100, n_states=3, n_features=8,
                                       switch_prob=0.025, random_state=0,
                                       emission_random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(**SMALL, random_state=args.seed).fit(X)
    rng = np.random.default_rng(args.seed)
    if args.log_uniform:
        lengths = np.exp(rng.uniform(np.log(args.min_length), np.log(args.max_length + 1),
                                     args.n_paths)).astype(int)
    else:
        lengths = rng.integers(args.min_length, args.max_length + 1, args.n_paths)
    full = prior_state_paths(seg.module_, seg.energy_, dt=seg.dt, n_paths=args.n_paths,
                             n_steps=int(lengths.max()), core_fraction=0.5,
                             generator=torch.Generator().manual_seed(args.seed + 1),
                             time_scale=args.known).positions
    paths = [p[:n] for p, n in zip(full, lengths)]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); {seg.n_states_} wells; {args.n_paths} paths of "
          f"{args.min_length}-{args.max_length} steps"
          f"{' (log-uniform)' if args.log_uniform else ''}, {int(lengths.sum())} in all, "
          f"median {int(np.median(lengths))}")
    times, clocks = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        clocks.append(calibrate_clock(
            seg.module_, seg.energy_, paths, dt=seg.dt, core_fraction=0.5,
            generator=torch.Generator().manual_seed(args.seed + 2 + r)))
        times.append(time.perf_counter() - start)
    print(f"calibrate_clock: median {np.median(times):.2f} s, min {min(times):.2f} s "
          f"over {args.repeats}; clock mean {np.mean(clocks):.3f}, sd "
          f"{np.std(clocks, ddof=1) if len(clocks) > 1 else float('nan'):.3f} "
          f"(known {args.known:g}): {' '.join(f'{c:.3f}' for c in clocks)}")


if __name__ == "__main__":
    main()
