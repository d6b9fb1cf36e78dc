"""Training-step throughput: the fused Euler loop against torchsde's generic path.

Paper setting: 15 features, windows of 200 steps, batch 128, and the library
defaults read from ``LangevinSegmenter().get_params()`` (``latent_dim=3``,
``hidden_size=64``, ``context_size=32``, ``dt=0.5``, stationary initial prior,
Adam at ``learning_rate_init``). Note that the estimator's default
``window_length`` is 50; 200 is the paper's full training sequence.

For each dynamics, one training step is timed on two paths that share the
model, its initial weights and the batch:

* ``fused``: ``module.elbo_terms(x, mask, noise, eps0, dt, solver="euler",
  partition_noise=probe)``, then the loss, backward, ``clip_grad_norm_``, the
  finiteness check and the Adam step: the library's own
  :func:`nldseg._training.gradient_step` and ``opt.step()``, as
  :func:`nldseg._training.train` takes them (noise drawn per step as there).
  With autograd on, the GRU encoder and the Euler loop run the
  hand-differentiated kernels of ``nldseg._fused``.
* ``reference``: the same ELBO with the posterior SDE solved by
  ``torchsde.sdeint(PosteriorLangevinSDE(module, projected), z0, ts,
  method="euler", dt=dt, logqp=True)`` and torchsde's default Brownian motion
  (no ``bm``: a ``BrownianInterval`` queried at every solver step), as in
  torchsde's latent-SDE example.

Reported: median (and inter-quartile range) of the step time over ``--steps``
steps after ``--warmup`` steps (the paths' steps alternate, so that a slow
phase of a shared machine hits both alike), sequence-steps per second
(``batch * length / median``) and the ratio reference / fused. ``train``
also copies the parameters and Adam's state before every update (its rollback
snapshot, :class:`nldseg._training.RollbackSnapshot`); that cost is printed on
its own line, not included in the step.

Step-0 check: both losses from the same initial weights, ``eps0`` and
partition probe (they differ slightly because the Brownian draws differ), and
the reference path driven by the fused path's own increments (the library's
grid Brownian motion), which must agree with the fused loss to rounding.

Run (the figures in benchmarks/RESULTS.md use idle cores)::

    python benchmarks/training_throughput.py --dynamics overdamped underdamped \\
        --length 200 --batch 128 --steps 10 --warmup 2 --device cpu

Time-to-accuracy mode (``--time-to-accuracy``): train on the paper data set
(500 sequences of length 200, ``random_state=1000+seed``,
``emission_random_state=seed``) and measure online accuracy
(:func:`nldseg.metrics.segmentation_accuracy` of ``predict``) on 100 held-out
sequences of length 500 (``random_state=2000+seed``, same emissions). Fits
with ``max_iter = 1, 2, 4, ...`` until the accuracy reaches ``--target``, then
bisect on ``max_iter`` between the last miss and the first hit. Reported: the
``k`` found, the wall time of ``fit(max_iter=k)`` and the accuracy of every
``k`` tried::

    python benchmarks/training_throughput.py --time-to-accuracy \\
        --dynamics overdamped underdamped --seed 0 --device cpu

What the search measures: each ``k`` is a complete fit with the library's
defaults and a budget of ``k`` gradient steps, i.e. the fit a user gets with
``max_iter=k``. It is not a prefix of a longer fit: the learning rate anneals
over the last quarter of the budget (or from the held-out plateau on), and
early stopping may end a fit before ``k`` steps; then every larger ``k`` gives
the same model, so the search stops there. Caveats: (1) accuracy need not be
monotone in ``k``: the ``k`` found is a first hit after a miss at ``k - 1``
within the bracketing powers of two, not necessarily the smallest ``k`` with
accuracy >= target. (2) The fit time includes the fixed cost of standardising
the data, the held-out checks and building the energy landscape after
training.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch
from _common import (
    PATHS,
    build_module,
    draw_noise,
    grid_brownian,
    machine_line,
    make_batch,
    make_optimizer,
    paper_params,
    resolve_device,
    set_threads,
    sync,
    train_step,
    training_loss,
)
from sklearn.exceptions import ConvergenceWarning

from nldseg import LangevinSegmenter
from nldseg._training import RollbackSnapshot
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import segmentation_accuracy


def initial_losses(module, x, mask, dt, seed: int) -> dict:
    """Step-0 losses of both paths from the same weights, ``eps0`` and probe."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noise, eps0, probe = draw_noise(module, x, dt, gen)
    weight = 1.0  # Full KL, so that the KL terms are compared too.
    out = {}
    # With autograd on, as in training: the fused path then runs its training
    # kernels (nldseg._fused), which differ from the inference loop.
    out["fused"] = training_loss("fused", module, x, mask, noise, eps0, probe, dt,
                                 weight)
    with torch.no_grad():
        np.random.seed(seed)  # torchsde seeds its BrownianInterval from numpy.
        out["reference"] = training_loss("reference", module, x, mask, noise, eps0,
                                         probe, dt, weight)
        bm = grid_brownian(module, noise, dt)
        out["reference, fused increments"] = training_loss(
            "reference", module, x, mask, noise, eps0, probe, dt, weight, bm=bm)
    return {k: (float(loss.detach()), float(kl.detach().mean()) / x.shape[1])
            for k, (loss, kl) in out.items()}


def time_paths(paths, module0, x, mask, params: dict, device, steps: int,
               warmup: int, seed: int) -> dict:
    """Median step time per path, the paths' steps interleaved.

    Each path trains its own copy of ``module0`` (own Adam, own noise
    generator), so its losses are those of a run on its own; only the timing
    alternates between the paths step by step, so that a slow phase of a
    shared machine hits all paths alike.
    """
    state = {}
    for path in paths:
        module = copy.deepcopy(module0)
        trainable, opt = make_optimizer(module, params["learning_rate_init"])
        gen = torch.Generator(device=device).manual_seed(seed)
        state[path] = (module, opt, trainable, gen, [], [])
    np.random.seed(seed)
    for step in range(warmup + steps):
        for path in paths:
            module, opt, trainable, gen, times, losses = state[path]
            sync(device)
            t0 = time.perf_counter()
            loss = train_step(path, module, opt, trainable, x, mask, params["dt"],
                              gen, step, params["kl_warmup"])
            sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - t0)
            losses.append(loss)
    out = {}
    for path, (module, opt, _, _, times, losses) in state.items():
        t = np.array(times)
        snapshot = RollbackSnapshot(module, opt)
        t0 = time.perf_counter()
        snapshot.take(module, opt)
        sync(device)
        out[path] = {"median": float(np.median(t)), "q1": float(np.percentile(t, 25)),
                     "q3": float(np.percentile(t, 75)), "losses": losses,
                     "snapshot": time.perf_counter() - t0}
    return out


def throughput(args, device) -> None:
    params = paper_params(batch_size=args.batch)
    print(f"# setting: {args.batch} windows x {args.length} steps x 15 features, "
          f"latent_dim {params['latent_dim']}, hidden_size {params['hidden_size']}, "
          f"context_size {params['context_size']}, dt {params['dt']} "
          f"({int(round(1 / params['dt']))} Euler steps per observation), "
          f"initial_prior {params['initial_prior']}, lr "
          f"{params['learning_rate_init']}; {args.steps} timed steps after "
          f"{args.warmup} warm-up")
    x, mask = make_batch(args.batch, args.length, device, seed=args.seed)
    rows = []
    for dyn in args.dynamics:
        module = build_module(params, dyn, device, seed=args.seed)
        init = initial_losses(module, x, mask, params["dt"], args.seed)
        print(f"\n[{dyn}] step-0 check (same weights, eps0 and probe; full KL weight):")
        ref_loss = init["fused"][0]
        for name, (loss, kl) in init.items():
            print(f"  {name:28s} loss {loss:12.6f} (rel. diff to fused "
                  f"{abs(loss - ref_loss) / abs(ref_loss):.1e}), KL per step {kl:.6f}")
        res = time_paths(args.paths, module, x, mask, params, device, args.steps,
                         args.warmup, args.seed)
        for p, r in res.items():
            print(f"  {p:9s} losses over the run: "
                  + " ".join(f"{v:.3f}" for v in r["losses"]))
        print(f"  train's per-step rollback snapshot (parameters + Adam state): "
              f"{1e3 * res[args.paths[0]]['snapshot']:.2f} ms")
        rows.append((dyn, res))
    seq_steps = args.batch * args.length
    print(f"\n{'dynamics':12s} {'path':10s} {'median step (s)':>16s} "
          f"{'IQR (s)':>17s} {'seq-steps/s':>12s} {'ref/fused':>10s}")
    for dyn, res in rows:
        for p, r in res.items():
            ratio = ""
            if "fused" in res and p == "reference":
                ratio = f"{r['median'] / res['fused']['median']:.2f}x"
            print(f"{dyn:12s} {p:10s} {r['median']:16.4f} "
                  f"{r['q1']:8.4f}-{r['q3']:<8.4f} {seq_steps / r['median']:12.0f} "
                  f"{ratio:>10s}")


def search_budget(run, target: float, max_steps: int) -> int | None:
    """Smallest-found ``k`` with ``run(k)["acc"] >= target``, or None.

    ``run(k)`` fits with ``max_iter=k`` and returns ``{"acc", "n_iter", ...}``.
    Tries ``k = 1, 2, 4, ...`` (capped at ``max_steps``) until a hit, then
    bisects between the last miss and the first hit.
    """
    lo, hi, k = 0, None, 1
    while k <= max_steps:
        r = run(k)
        if r["acc"] >= target:
            hi = k
            break
        lo = k
        if r["n_iter"] < k:  # Stopped early: a larger max_iter changes nothing.
            break
        k = min(2 * k, max_steps) if k < max_steps else k + 1
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if run(mid)["acc"] >= target:
                hi = mid
            else:
                lo = mid
    return hi


def time_to_accuracy(args, device) -> None:
    seed = args.seed
    X, _ = make_markov_chain_sequences(args.n_train, 200, n_features=15,
                                       switch_prob=0.025, random_state=1000 + seed,
                                       emission_random_state=seed)
    X_test, y_test = make_markov_chain_sequences(args.n_test, 500, n_features=15,
                                                 switch_prob=0.025,
                                                 random_state=2000 + seed,
                                                 emission_random_state=seed)
    print(f"# time to online accuracy >= {args.target}: train {args.n_train} x 200, "
          f"test {args.n_test} x 500, seed {seed}, library defaults, max_iter "
          f"(gradient steps) searched in 1..{args.max_steps}")
    summary = []
    for dyn in args.dynamics:
        # A throw-away fit first, so that one-time costs (kernel loading, lazy
        # initialisation) are not charged to the first max_iter tried.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LangevinSegmenter(dynamics=dyn, max_iter=1, random_state=seed,
                              device=args.device).fit(X[:8])
        tried: dict[int, dict] = {}

        def run(k: int, dyn=dyn, tried=tried) -> dict:
            if k not in tried:
                seg = LangevinSegmenter(dynamics=dyn, max_iter=k, random_state=seed,
                                        device=args.device)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    sync(device)
                    t0 = time.perf_counter()
                    seg.fit(X)
                    sync(device)
                    t_fit = time.perf_counter() - t0
                t0 = time.perf_counter()
                acc = segmentation_accuracy(y_test, seg.predict(X_test))
                t_pred = time.perf_counter() - t0
                tried[k] = {"acc": float(acc), "fit": t_fit, "predict": t_pred,
                            "n_iter": seg.n_iter_, "wells": seg.n_states_}
                r = tried[k]
                print(f"  {dyn:12s} max_iter {k:4d}: steps run {r['n_iter']:4d}, "
                      f"wells {r['wells']}, accuracy {r['acc']:.4f}, fit "
                      f"{r['fit']:7.1f} s, predict {r['predict']:5.1f} s", flush=True)
            return tried[k]

        summary.append((dyn, search_budget(run, args.target, args.max_steps), tried))
    print(f"\n{'dynamics':12s} {'k (steps)':>10s} {'fit time (s)':>13s}  "
          "accuracy per max_iter tried")
    for dyn, hi, tried in summary:
        accs = ", ".join(f"{k}: {tried[k]['acc']:.4f}" for k in sorted(tried))
        if hi is None:
            print(f"{dyn:12s} {'not hit':>10s} {'-':>13s}  {accs}")
        else:
            print(f"{dyn:12s} {hi:10d} {tried[hi]['fit']:13.1f}  {accs}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dynamics", nargs="+", default=["overdamped", "underdamped"],
                   choices=["overdamped", "underdamped"])
    p.add_argument("--length", type=int, default=200, help="window length")
    p.add_argument("--batch", type=int, default=None,
                   help="windows per step (default: the library's batch_size)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: all cores)")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"],
                   help="auto: CUDA when available (as the estimator)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-to-accuracy", action="store_true",
                   help="measure the fit time to reach --target held-out accuracy")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--max-steps", type=int, default=None,
                   help="largest max_iter tried (default: the library's max_iter)")
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--n-test", type=int, default=100)
    args = p.parse_args()
    defaults = paper_params()
    if args.batch is None:
        args.batch = defaults["batch_size"]
    if args.max_steps is None:
        args.max_steps = defaults["max_iter"]
    set_threads(args.threads)
    device = resolve_device(args.device)
    print(machine_line(device))
    if args.time_to_accuracy:
        time_to_accuracy(args, device)
    else:
        throughput(args, device)


if __name__ == "__main__":
    main()
