"""Inference speed: predict / predict_proba throughput and one-step streaming latency.

Paper test set: 500 sequences of length 500 with 15 features. The model is
read from ``--model`` (written by ``LangevinSegmenter.save``, e.g. by
``paper_benchmark.py --save-dir``) or, without it, fitted here with the
library defaults on the paper training set (500 x 200).

Reported:

* ``predict`` and ``predict_proba`` wall time and time steps per second
  (``n_sequences * length / time``), median and best of ``--repeats`` calls
  (the best is what the machine can do; the median includes its slow phases);
* for ``inference="paths"`` (unweighted posterior paths), the split of one
  ``predict_proba`` call into the posterior paths (encoder and Euler loop)
  and the basin assignment of the latent samples;
* the latency of labelling one new observation of one sequence with
  ``stream().update(x_t)``: median, 90th and 99th percentile over the
  updates of ``--stream-sequences`` test sequences (one stream each, 500
  steps, the first 20 of each not counted).

Each value of ``--inference`` (default: the model's own) is timed in turn on
the same model: the Markov chain filter, the particle filter and the path
fractions::

    python benchmarks/inference_throughput.py \
        --model /tmp/models/overdamped_seed0.nldseg --threads 2
    python benchmarks/inference_throughput.py --inference markov filter paths --threads 1
"""

import argparse
import os
import platform
import time
import warnings

import numpy as np
import torch

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import segmentation_accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stream-sequences", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--n-paths", type=int, nargs="+", default=[None],
                   help="Monte-Carlo paths per sequence to time (default: the "
                        "model's own n_paths)")
    p.add_argument("--inference", nargs="+", default=[None],
                   choices=["markov", "filter", "paths"],
                   help="inference values to time (default: the model's own)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if a.model:
        seg = LangevinSegmenter.load(a.model)
    else:
        X, _ = make_markov_chain_sequences(500, 200, n_features=15, switch_prob=0.025,
                                           random_state=1000 + a.seed,
                                           emission_random_state=a.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = LangevinSegmenter(random_state=a.seed).fit(X)
    X_test, y_test = make_markov_chain_sequences(
        a.n_test, a.length, n_features=15, switch_prob=0.025,
        random_state=2000 + a.seed, emission_random_state=a.seed)
    n_steps = X_test.shape[0] * X_test.shape[1]
    print(f"# model: {seg.dynamics}, {seg.n_states_} states; test set "
          f"{X_test.shape[0]} x {X_test.shape[1]} = {n_steps} steps")
    for inference in a.inference:
        if inference is not None:
            seg.set_params(inference=inference)
        for n_paths in a.n_paths:
            if n_paths is not None:
                seg.set_params(n_paths=n_paths)
            _measure(seg, X_test, y_test, n_steps, a.repeats, a.stream_sequences)


def _measure(seg, X_test, y_test, n_steps: int, repeats: int,
             stream_sequences: int) -> None:
    print(f"inference={seg.inference!r}, n_particles={seg.n_particles}, "
          f"n_paths={seg.n_paths}")
    for name in ("predict", "predict_proba"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = getattr(seg, name)(X_test)
            times.append(time.perf_counter() - t0)
        t, best = float(np.median(times)), float(np.min(times))
        print(f"  {name:14s} {t:8.2f} s  {n_steps / t:12.0f} steps/s (median); "
              f"best {best:.2f} s, {n_steps / best:.0f} steps/s")
    print(f"  accuracy {segmentation_accuracy(y_test, out.argmax(-1)):.4f}")

    if seg.inference == "paths":
        seqs = seg._prepare(X_test, None)
        t0 = time.perf_counter()
        z = seg._sampler().latent_paths(seqs)
        t_paths = time.perf_counter() - t0
        d = seg.module_.latent_dim
        t0 = time.perf_counter()
        seg.energy_.predict(z[..., :d].reshape(-1, d))
        t_basins = time.perf_counter() - t0
        print(f"  of which: posterior paths {t_paths:.2f} s, basin assignment of "
              f"{z.shape[0] * z.shape[1]} latent samples {t_basins:.2f} s")

    lat = []
    for seq in X_test[:stream_sequences]:
        stream = seg.stream()
        for t, x_t in enumerate(seq):
            t0 = time.perf_counter()
            stream.update(x_t)
            if t >= 20:
                lat.append(time.perf_counter() - t0)
    lat_ms = np.array(lat) * 1e3
    p50, p90, p99 = np.percentile(lat_ms, [50, 90, 99])
    print(f"  stream.update  median {p50:.3f} ms, p90 {p90:.3f} ms, p99 {p99:.3f} ms "
          f"per new observation ({len(lat)} updates, {stream_sequences} sequences)")


if __name__ == "__main__":
    main()
