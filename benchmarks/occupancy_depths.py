"""Where ``state_occupancy_`` goes wrong: minibatch noise or a bias of the depths?

Fits the library defaults (with ``--density-weight``, default the library's)
on one case of the suite (``benchmarks/suite.py``: same data, same sizes),
keeping a copy of the energy every ``--every`` gradient steps. After the fit,
the stationary law ``exp(-beta E) / Z`` of every copy is weighed on one fixed
set of importance draws (Gaussians around the fitted minima), each labelled by
the *fitted* model's basins, and its shares of the states are printed beside
the training labels' own shares (the true states matched to the learned ones
by the Hungarian map of ``predict`` on the training data):

* shares that wander from copy to copy and average out: minibatch noise;
* copies that agree with each other, and their average too, but not with the
  training labels: a bias of the objective.

    python benchmarks/occupancy_depths.py --case unequal --seed 0 --density-weight 0
    python benchmarks/occupancy_depths.py --case regimes --seed 0 --density-weight 0

The energy copies hook :func:`nldseg._training.gradient_step` (the training
loop's step) and change nothing in it.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

import numpy as np
import torch
from scipy.special import logsumexp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import cpu_model  # noqa: E402
from suite import CASES  # noqa: E402

import nldseg._training as training  # noqa: E402
from nldseg import LangevinSegmenter  # noqa: E402
from nldseg.metrics import label_mapping  # noqa: E402


def _shares(energy, beta: float, draws: np.ndarray, log_q: np.ndarray,
            labels: np.ndarray, n_states: int) -> np.ndarray:
    """Self-normalised importance estimate of the states' shares of exp(-beta E)."""
    with torch.no_grad():
        e = energy(torch.as_tensor(draws)).numpy()
    log_w = -beta * e - log_q
    w = np.exp(log_w - log_w.max())
    return np.bincount(labels, weights=w / w.sum(), minlength=n_states)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="unequal", choices=sorted(CASES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--density-weight", type=float, default=None,
                   help="LangevinSegmenter(density_weight=...); default: the library's")
    p.add_argument("--every", type=int, default=20, help="gradient steps between copies")
    p.add_argument("--last", type=int, nargs="+", default=[5, 10, 37],
                   help="average the last n copies' parameters")
    args = p.parse_args()
    torch.set_num_threads(1)
    train, _, _, params = CASES[args.case].draw(args.seed)

    copies = []
    step = training.gradient_step

    def hooked(module, *a, **k):
        out = step(module, *a, **k)
        hooked.calls += 1
        if hooked.calls % args.every == 0:
            copies.append((hooked.calls, copy.deepcopy(module.energy.state_dict()),
                           float(module.langevin_params()[0])))
        return out

    hooked.calls = 0
    training.gradient_step = hooked
    kw = {} if args.density_weight is None else {"density_weight": args.density_weight}
    seg = LangevinSegmenter(random_state=args.seed, **kw)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg.fit(train)
    fit_s = time.perf_counter() - t0
    training.gradient_step = step
    # With n_lags="auto" a retry trains a second model: keep its copies only.
    copies = [c for c in copies if c[0] > hooked.calls - seg.n_iter_]

    y = np.concatenate(params["train_labels"])
    k_true = int(y.max()) + 1
    mapping = label_mapping(params["train_labels"], seg.predict(train))

    def matched(shares):
        out = np.zeros(k_true)
        for j, s in enumerate(shares):
            if mapping.get(j, -1) >= 0:
                out[mapping[j]] += s
        return out

    emp = np.bincount(y, minlength=k_true) / y.size
    land = seg.energy_
    rng = np.random.default_rng(0)
    d = land.latent_dim
    draws = np.concatenate([m + 0.6 * rng.standard_normal((20000, d))
                            for m in land.all_minima])
    log_q = logsumexp(np.stack([-0.5 * ((draws - m) ** 2).sum(1) / 0.36
                                for m in land.all_minima]), axis=0)
    labels = land.predict(draws)
    energy = copy.deepcopy(seg.module_.energy).double()

    def shares_of(state_dict, beta):
        energy.load_state_dict({k: v.double() for k, v in state_dict.items()})
        return matched(_shares(energy, beta, draws, log_q, labels, seg.n_states_))

    print(f"# {args.case} seed {args.seed}, density_weight={seg.density_weight}, "
          f"{seg.n_states_} states, n_lags_={seg.n_lags_}, {seg.n_iter_} steps, "
          f"fit {fit_s:.0f} s; {cpu_model()}, 1 torch thread")
    print(f"training labels' shares      {np.round(emp, 3)}")
    occ = matched(seg.state_occupancy_)
    print(f"state_occupancy_ (matched)   {np.round(occ, 3)}"
          f"  l1 to the labels' shares {np.abs(occ - emp).sum():.3f}")
    print("step  shares of exp(-beta E)  l1 to the labels' shares")
    first = hooked.calls - seg.n_iter_
    for calls, state_dict, beta in copies[-40:]:
        s = shares_of(state_dict, beta)
        print(f"{calls - first:5d} {np.round(s, 3)} {np.abs(s - emp).sum():.3f}")
    for n in args.last:
        last = copies[-n:]
        mean = {k: sum(c[1][k].double() for c in last) / len(last) for k in last[-1][1]}
        s = shares_of(mean, float(np.mean([c[2] for c in last])))
        print(f"parameters averaged over the last {len(last)} copies: {np.round(s, 3)}, "
              f"l1 {np.abs(s - emp).sum():.3f}")


if __name__ == "__main__":
    main()
