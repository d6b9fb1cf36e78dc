"""Peak memory of one training step and its growth with the window length.

Paper setting (15 features, library defaults from
``LangevinSegmenter().get_params()``: ``latent_dim=3``, ``hidden_size=64``,
``context_size=32``, ``dt=0.5``, batch 128), one full training step as
``nldseg._training.train`` takes it (ELBO, loss, backward, gradient
clipping, Adam step) on the fused path (``solver="euler"``) and, for windows
up to ``--reference-max-length``, on the torchsde reference path
(``torchsde.sdeint(..., logqp=True)`` with its default Brownian motion; see
``benchmarks/_common.py``).

Method. Every (path, length) runs in a fresh Python subprocess, which builds
the model, the batch and the Adam optimiser, and takes one warm-up step on the
first 4 time steps of the batch (loads the kernels and allocates the Adam
state). Then:

* CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's peak
  resident set size) is read before and after one full-length step; the
  figure is the difference, i.e. how far the step pushed the peak RSS above
  everything before it. ``VmRSS`` before the step is printed as well: it
  should be close to the earlier peak, else the difference underestimates.
  RSS counts pages touched, so allocator caching and freed-but-kept memory
  are included; it is an upper-bound-ish figure, not a count of tensors.
* CUDA: ``torch.cuda.reset_peak_memory_stats()`` before the step, then
  ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before
  the step (tensor memory the step added at its peak), and the total peak.

The slope of a least-squares line through the lengths gives the memory per
additional time step (for the whole batch): the autograd graph of the Euler
loop keeps every step's activations until the backward pass.

Run (the figures in benchmarks/RESULTS.md use idle cores)::

    python benchmarks/training_memory.py --lengths 50 100 200 400 --batch 128 \\
        --reference-max-length 400 --device cpu
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from _common import (
    PATHS,
    build_module,
    machine_line,
    make_batch,
    make_optimizer,
    paper_params,
    resolve_device,
    set_threads,
    sync,
    train_step,
)

_MIB = 1024.0 * 1024.0


def _vm_rss_kib() -> float:
    """Current resident set size in KiB (``VmRSS``; NaN where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _maxrss_kib() -> float:
    """``ru_maxrss`` in KiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform == "darwin" else float(r)


def child(args) -> dict:
    """Measure one (path, length) in this process; returns the figures."""
    set_threads(args.threads)
    device = resolve_device(args.device)
    params = paper_params(batch_size=args.batch)
    module = build_module(params, args.dynamics, device, seed=args.seed)
    trainable, opt = make_optimizer(module, params["learning_rate_init"])
    x, mask = make_batch(args.batch, args.length, device, seed=args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    np.random.seed(args.seed)
    dt, warm = params["dt"], params["kl_warmup"]
    short = min(4, args.length)
    train_step(args.path, module, opt, trainable, x[:, :short], mask[:, :short], dt,
               gen, 0, warm)
    gc.collect()
    sync(device)
    out = {"path": args.path, "length": args.length}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    rss_before = _vm_rss_kib()
    maxrss_before = _maxrss_kib()
    t0 = time.perf_counter()
    train_step(args.path, module, opt, trainable, x, mask, dt, gen, 1, warm)
    sync(device)
    out["step_s"] = time.perf_counter() - t0
    maxrss_after = _maxrss_kib()
    out["rss_before_mib"] = rss_before / 1024.0
    out["maxrss_before_mib"] = maxrss_before / 1024.0
    out["cpu_peak_mib"] = (maxrss_after - maxrss_before) / 1024.0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out["cuda_peak_mib"] = (peak - cuda_before) / _MIB
        out["cuda_total_mib"] = peak / _MIB
    return out


def run_child(args, path: str, length: int) -> dict:
    """One measurement in a fresh subprocess (so that peaks do not carry over)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--path", path,
           "--length", str(length), "--batch", str(args.batch), "--dynamics",
           args.dynamics, "--device", args.device, "--seed", str(args.seed)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{path} at length {length} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 400])
    p.add_argument("--batch", type=int, default=None,
                   help="windows per step (default: the library's batch_size, 128)")
    p.add_argument("--dynamics", default="overdamped",
                   choices=["overdamped", "underdamped"])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--reference-max-length", type=int, default=400,
                   help="measure the reference path only up to this length")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: all cores)")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"],
                   help="auto: CUDA when available (as the estimator)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", default="fused", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=200, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch is None:
        args.batch = paper_params()["batch_size"]
    if args.child:
        print(json.dumps(child(args)))
        return
    set_threads(args.threads)
    device = resolve_device(args.device)
    print(machine_line(device))
    params = paper_params()
    print(f"# one training step, {args.dynamics}, batch {args.batch} x 15 features, "
          f"latent_dim {params['latent_dim']}, hidden_size {params['hidden_size']}, "
          f"dt {params['dt']}; one fresh subprocess per row")
    cuda = device.type == "cuda"
    head = (f"{'path':10s} {'length':>6s} {'CPU peak RSS +MiB':>18s} "
            f"{'RSS before':>11s} {'maxRSS before':>14s}")
    if cuda:
        head += f" {'CUDA peak +MiB':>15s} {'CUDA peak MiB':>14s}"
    print(head + f" {'step (s)':>9s}", flush=True)
    results = []
    for path in args.paths:
        for length in args.lengths:
            if path == "reference" and length > args.reference_max_length:
                continue
            r = run_child(args, path, length)
            results.append(r)
            line = (f"{path:10s} {length:6d} {r['cpu_peak_mib']:18.1f} "
                    f"{r['rss_before_mib']:11.1f} {r['maxrss_before_mib']:14.1f}")
            if cuda:
                line += f" {r['cuda_peak_mib']:15.1f} {r['cuda_total_mib']:14.1f}"
            print(line + f" {r['step_s']:9.2f}", flush=True)
    print("\ngrowth (least-squares slope over the lengths, whole batch):")
    for path in args.paths:
        rs = [r for r in results if r["path"] == path]
        if len(rs) < 2:
            continue
        lengths = np.array([r["length"] for r in rs], dtype=float)
        keys = ["cpu_peak_mib"] + (["cuda_peak_mib"] if cuda else [])
        parts = []
        for key in keys:
            slope = np.polyfit(lengths, [r[key] for r in rs], 1)[0]
            parts.append(f"{key.split('_')[0].upper()} {slope:.3f} MiB per time step "
                         f"({1024 * slope / args.batch:.1f} KiB per sequence-step)")
        print(f"  {path:10s} " + ", ".join(parts))


if __name__ == "__main__":
    main()
