"""Probe (not in the library): the wells' depths refitted after training.

``state_occupancy_`` reads the relative depths of the energy's wells. On some
fits it stays farther from the truth than the training data's own sampling
error, while the posterior paths' basin shares are at that floor: the wells
are in the right places, the depths are not (the ELBO's score-matching part
is blind to them; ``density_weight`` only partly corrects it). This probe
takes a fitted model and refits the energy alone, after training, by maximum
likelihood of ``exp(-beta E) / Z`` on the posterior paths' positions through
*all* the training steps:

* loss ``mean(beta E(q)) + log Z`` over minibatches of 2,048 positions;
* ``log Z`` by the library's importance sampler of the training step
  (``NeuralLangevinVAE._log_z_from_codes``: 4,096 draws, a defensive
  mixture of Gaussians at 1,024 positions, Scott's bandwidth per dimension);
* Adam, learning rate 1e-4, ``--steps`` steps; ``beta``, encoder, decoder and
  the posterior are untouched.

Before and after, it rebuilds the wells from the same positions (the
library's ``build_landscape``) and prints: the number of wells, the accuracy
of the positions' basins against the true labels of the training steps
(do the basins move?), the stationary law's shares against the posterior
positions' basin shares, and the occupancy l1 against the truth (states
matched by the basins' labels, as the suite matches them). The library's own
labels and ``state_occupancy_`` of the fit are not changed::

    python benchmarks/depth_refinement.py --cases overlap regimes unequal --seeds 0
    python benchmarks/depth_refinement.py --load fits/overlap_0.joblib  # a saved fit

A saved fit is a joblib dict ``{"seg", "train", "params"}`` of a suite case
(``params`` as ``Case.draw`` returns them).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import joblib
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suite import CASES, commit, machine, matched_occupancy  # noqa: E402

from nldseg import LangevinSegmenter  # noqa: E402
from nldseg._inference import PosteriorSampler  # noqa: E402
from nldseg._landscape import build_landscape  # noqa: E402
from nldseg.metrics import segmentation_accuracy  # noqa: E402

BATCH, CENTRES, DRAWS, LR = 2048, 1024, 4096, 1e-4


def posterior_positions(seg, train: list, seed: int) -> list:
    """One posterior path through every training sequence (positions), in order."""
    seqs = seg._prepare(train, None)
    sampler = PosteriorSampler(seg.module_, seg.dt, 1, seed, seg.solver)
    paths = sampler.landscape_paths(seqs, np.random.default_rng(seed),
                                    budget=int(seqs.lengths.sum()))
    assert [len(p) for p in paths] == [len(x) for x in train]
    return paths


def refine(module, positions: np.ndarray, n_steps: int, seed: int) -> float:
    """Refit ``module.energy`` in place by maximum likelihood; returns seconds."""
    energy = module.energy
    params = list(energy.parameters())
    for p in params:
        p.requires_grad_(True)
    data = torch.as_tensor(positions, dtype=torch.float32)
    n, d = data.shape
    log_scale = torch.log(data.std(0) * CENTRES ** (-1.0 / (d + 4))).expand(CENTRES, d)
    opt = torch.optim.Adam(params, lr=LR)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        centres = data[torch.randint(n, (CENTRES,), generator=g)]
        batch = data[torch.randint(n, (BATCH,), generator=g)]
        log_z = module._log_z_from_codes(centres, log_scale,
                                         torch.randn((DRAWS, d), generator=g))
        loss = -module._log_stationary_position(batch, log_z).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return time.perf_counter() - t0


def report(tag: str, module, seg, paths: list, y_train: list, true_occ: np.ndarray) -> None:
    """Wells rebuilt from the positions; their shares against the truth."""
    codes = np.concatenate(paths).astype(np.float32)
    beta = float(module.langevin_params()[0])
    land = build_landscape(module.energy, beta, codes,
                           min_state_fraction=seg.min_state_fraction, n_states=None,
                           rng=np.random.default_rng(1))
    occ = land.occupancy("sampled")
    basins = land.predict(codes)
    shares = np.bincount(basins, minlength=land.n_states) / len(basins)
    labels = np.split(basins, np.cumsum([len(p) for p in paths])[:-1])
    matched, unmatched = matched_occupancy(y_train, labels, occ, len(true_occ))
    print(f"| {tag} | {land.n_states} | {segmentation_accuracy(y_train, labels):.4f} | "
          f"{np.abs(occ - shares).sum():.4f} | "
          f"**{unmatched + np.abs(matched - true_occ).sum():.4f}** |", flush=True)


def run(name: str, seg, train: list, params: dict, steps: int, seed: int) -> None:
    y_train = params["train_labels"]
    true_occ = np.asarray(params["stationary_distribution"])
    floor = np.abs(np.bincount(np.concatenate(y_train), minlength=len(true_occ))
                   / sum(len(y) for y in y_train) - true_occ).sum()
    paths = posterior_positions(seg, train, seed)
    module = copy.deepcopy(seg.module_)
    print(f"\n{name}: floor (training labels' shares vs the truth) {floor:.4f}; "
          f"library's state_occupancy_ {np.round(seg.state_occupancy_, 3).tolist()}")
    print("| energy | wells | positions' basins: accuracy vs true labels | "
          "l1 stationary vs basin shares | occupancy l1 vs truth |")
    print("|---|---|---|---|---|")
    report("as trained", module, seg, paths, y_train, true_occ)
    seconds = refine(module, np.concatenate(paths), steps, seed)
    report(f"refitted, {steps} steps ({seconds:.0f} s)", module, seg, paths, y_train,
           true_occ)


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=[], choices=sorted(CASES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--load", nargs="+", default=[], help="saved fits (joblib dicts)")
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# machine: {machine()}; commit {commit()}; library defaults; "
          f"refit: {args.steps} Adam steps, lr {LR}")
    for path in args.load:
        d = joblib.load(path)
        run(os.path.basename(path), d["seg"], d["train"], d["params"], args.steps, 0)
    for name in args.cases:
        for seed in args.seeds:
            train, _, _, params = CASES[name].draw(seed)
            seg = LangevinSegmenter(random_state=seed).fit(train)
            run(f"{name} seed {seed}", seg, train, params, args.steps, seed)


if __name__ == "__main__":
    main()
