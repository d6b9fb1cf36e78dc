"""nldseg on a busy machine: stream, predict and fit, idle and with every core loaded.

For each ``n_threads`` setting of the estimator (``None``: the library's
choice, one thread; ``-1``: torch's own setting, one thread per core unless
``OMP_NUM_THREADS`` says otherwise) the same three measurements are taken
twice in one run, first on the idle machine, then while ``--load`` other
processes (default: one per core) spin on the CPU:

* stream: latency of ``stream().update(x_t)`` over ``--updates`` observations
  (median and 99th percentile);
* predict: time steps labelled per second by ``predict`` on 50 sequences of
  500 steps;
* fit: wall time of a fit of ``--fit-steps`` gradient steps on the paper
  setting (500 x 200 observations, 15 features).

The model for stream and predict is fitted here on the paper setting with
``max_iter=300`` (the default architecture).

Run::

    python benchmarks/busy_machine.py
"""

import argparse
import multiprocessing as mp
import os
import platform
import time
import warnings

import numpy as np
import torch

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _measure(seg, X_fit, X_pred, stream_seq, n_threads, fit_steps, n_updates) -> dict:
    seg.set_params(n_threads=n_threads)
    stream = seg.stream()
    times = []
    for x in stream_seq[:n_updates]:
        t0 = time.perf_counter()
        stream.update(x)
        times.append(time.perf_counter() - t0)
    lat = np.array(times[20:]) * 1e3
    t0 = time.perf_counter()
    seg.predict(X_pred)
    predict_rate = X_pred.shape[0] * X_pred.shape[1] / (time.perf_counter() - t0)
    fitter = LangevinSegmenter(max_iter=fit_steps, kl_warmup=fit_steps,
                               early_stopping=False, n_threads=n_threads,
                               random_state=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitter.fit(X_fit)
    return {"stream_median_ms": float(np.median(lat)),
            "stream_p99_ms": float(np.percentile(lat, 99)),
            "predict_steps_per_s": predict_rate,
            "fit_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", type=int, default=os.cpu_count(),
                   help="spinning processes during the loaded run (default: one per "
                        "core)")
    p.add_argument("--fit-steps", type=int, default=60)
    p.add_argument("--updates", type=int, default=2000)
    args = p.parse_args()

    X, _ = make_markov_chain_sequences(500, 200, n_states=3, n_features=15,
                                       switch_prob=0.025, random_state=0,
                                       emission_random_state=0)
    X_new, _ = make_markov_chain_sequences(50, 500, n_states=3, n_features=15,
                                           switch_prob=0.025, random_state=1,
                                           emission_random_state=0)
    stream_seq = np.concatenate(list(X_new))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(max_iter=300, random_state=0).fit(X)
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores, no GPU; torch {torch.__version__}, torch's own thread setting "
          f"{torch.get_num_threads()}; model: {seg.n_states_} states, default "
          f"architecture; loaded run: {args.load} spinning processes")
    print("| n_threads | machine | stream median ms | stream p99 ms | "
          "predict steps/s | fit s |")
    print("|---|---|---|---|---|---|")
    results = {}
    for state in ["idle", "loaded"]:
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True)
                    for _ in range(args.load if state == "loaded" else 0)]
        for proc in spinners:
            proc.start()
        try:
            for n_threads in [None, -1]:
                r = _measure(seg, X, X_new, stream_seq, n_threads, args.fit_steps,
                             args.updates)
                results[state, n_threads] = r
                print(f"| {n_threads} | {state} | {r['stream_median_ms']:.2f} | "
                      f"{r['stream_p99_ms']:.2f} | {r['predict_steps_per_s']:.0f} | "
                      f"{r['fit_s']:.1f} |", flush=True)
        finally:
            stop.set()
            for proc in spinners:
                proc.join()
    for n_threads in [None, -1]:
        idle, busy = results["idle", n_threads], results["loaded", n_threads]
        print(f"# n_threads={n_threads}: loaded / idle: stream median "
              f"{busy['stream_median_ms'] / idle['stream_median_ms']:.2f}x, predict "
              f"throughput {idle['predict_steps_per_s'] / busy['predict_steps_per_s']:.2f}"
              f"x slower, fit {busy['fit_s'] / idle['fit_s']:.2f}x")


if __name__ == "__main__":
    main()
