"""Latency of the online labelling service: many concurrent streams over WebSocket.

A server (``nldseg serve MODEL``, a separate process with its default of one
torch thread) is started on a loopback port. ``--streams`` clients (asyncio,
in this process) each stream one test sequence of ``--length`` observations,
one observation per message, and time every answer from the moment its
observation was sent. Every answer is checked against a local
``stream().update`` of the same sequence (label and probabilities, bit for
bit through JSON); the run fails if one differs or is missing.

Two loads:

* ``paced``: each stream sends one observation every ``1 / rate`` seconds
  (``--rates`` per stream; the offered load is ``streams * rate``
  observations per second), as an instrument or a simulation would;
* ``closed``: each stream sends its next observation as soon as the previous
  answer arrives: the service's throughput, and the latency at saturation.

The model is read from ``--model`` or, without it, fitted here on the paper
setting (3 states, 15 features) with the library defaults except
``max_iter=400`` (the architecture, which decides the latency, is the
default one).

Run::

    python benchmarks/serve_latency.py --streams 32 --length 1000 --rates 10 20
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model(path: str | None, workdir: Path) -> Path:
    if path:
        return Path(path)
    X, _ = make_markov_chain_sequences(200, 200, n_states=3, n_features=15,
                                       switch_prob=0.025, random_state=0,
                                       emission_random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(max_iter=400, random_state=0).fit(X)
    out = workdir / "model.nldseg"
    seg.save(out)
    return out


async def _stream(base: str, seq: np.ndarray, interval: float | None) -> tuple:
    """``(answers, latencies)`` of one stream; ``interval=None``: closed loop."""
    from websockets.asyncio.client import connect

    answers, latencies = [], []
    async with connect(f"ws://{base}/stream", max_size=None) as ws:
        start = time.perf_counter()
        for t, x in enumerate(seq):
            if interval is not None:
                delay = start + t * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent = time.perf_counter()
            await ws.send(json.dumps({"x": x.tolist()}))
            answers.append(json.loads(await ws.recv()))
            latencies.append(time.perf_counter() - sent)
    return answers, latencies


async def _load(base: str, sequences: list, interval: float | None) -> tuple:
    # Stagger the paced streams' phases over one interval, as independent
    # sources would be.
    async def one(i, seq):
        if interval is not None:
            await asyncio.sleep(interval * i / len(sequences))
        return await _stream(base, seq, interval)

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i, s) for i, s in enumerate(sequences)))
    return results, time.perf_counter() - start


def _check(results: list, expected: list) -> None:
    for i, ((answers, _), local) in enumerate(zip(results, expected)):
        if len(answers) != len(local):
            raise SystemExit(f"stream {i}: {len(answers)} answers for {len(local)} "
                             f"observations")
        for t, (answer, (label, proba)) in enumerate(zip(answers, local)):
            if answer.get("t") != t or answer.get("label") != label or \
                    answer.get("proba") != proba.tolist():
                raise SystemExit(f"stream {i}, step {t}: {answer} differs from the "
                                 f"local stream ({label}, {proba.tolist()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a saved model (default: fit one here)")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--rates", type=float, nargs="*", default=[10.0, 20.0],
                   help="observations per second per stream, paced loads")
    p.add_argument("--no-closed", action="store_true", help="skip the closed loop")
    p.add_argument("--inference", choices=["markov", "filter", "paths"], default=None,
                   help="serve the model with this inference (default: as fitted "
                        "or saved; markov: the states' Markov chain, filter: the "
                        "particle filter, paths: unweighted posterior paths)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_path = _model(args.model, Path(tmp))
        seg = LangevinSegmenter.load(model_path)
        if args.inference is not None:
            seg.set_params(inference=args.inference)
            model_path = Path(tmp) / "served.nldseg"
            seg.save(model_path)
        X, _ = make_markov_chain_sequences(args.streams, args.length,
                                           n_states=3, n_features=seg.n_features_in_,
                                           switch_prob=0.025, random_state=7,
                                           emission_random_state=0)
        expected = []
        for seq in X:
            stream = seg.stream()
            expected.append([stream.update(x) for x in seq])
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "nldseg", "serve", str(model_path), "--port",
             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            base = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the server did not start: "
                                         f"{server.stderr.read()}") from None
                    time.sleep(0.1)
            print(f"# machine: {platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores; python {platform.python_version()}; "
                  f"server: 1 torch thread (nldseg serve's default); "
                  f"{args.streams} streams x {args.length} observations; model "
                  f"{seg.n_states_} states, {seg.n_features_in_} features, "
                  f"inference={seg.inference!r}, prior_weight={seg.prior_weight}, "
                  f"n_particles={seg.n_particles}, n_paths={seg.n_paths}, dt={seg.dt}, "
                  f"hidden_size={seg.hidden_size}")
            print("| load | offered obs/s | answered obs/s | median ms | p90 ms | "
                  "p99 ms | max ms | all equal to local stream |")
            print("|---|---|---|---|---|---|---|---|")
            loads = [(f"paced {r:g}/s per stream", 1.0 / r) for r in args.rates]
            if not args.no_closed:
                loads.append(("closed loop", None))
            for name, interval in loads:
                results, wall = asyncio.run(_load(base, list(X), interval))
                _check(results, expected)
                lat = np.concatenate([r[1] for r in results]) * 1e3
                n_obs = lat.size
                offered = "-" if interval is None else f"{args.streams / interval:.0f}"
                print(f"| {name} | {offered} | {n_obs / wall:.0f} | "
                      f"{np.median(lat):.2f} | {np.percentile(lat, 90):.2f} | "
                      f"{np.percentile(lat, 99):.2f} | {lat.max():.1f} | "
                      f"yes ({n_obs}) |", flush=True)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
