"""Do two true states share a well because the latent path does not tell them apart?

When a fit finds fewer wells than states, the merge can sit in two places:
the posterior paths of the two states may visit distinct places that the
energy covers with one well (the energy's fault), or the encoder may put
both states in the same place (training's: the energy cannot separate what
the paths do not). This script fits one case (a suite case, or a case of
``fresh_cases.py``'s draws) and reads the training sequences' posterior
paths (``transform`` with one path, as the wells are searched on one path):

* per true state, its centre in the latent space, the spread of its codes,
  the energy there, and how its steps fall into the fit's wells;
* per pair of true states, how well a linear discriminant tells their codes
  apart (2-fold cross-validated accuracy; 0.5 is chance) and the distance
  between their centres, least separable pairs first;
* the fit's held-out ELBO (``candidate_scores_``), to compare runs that
  merged with runs that did not on the same data.

::

    python benchmarks/latent_separation.py --fresh 1 5
    python benchmarks/latent_separation.py --fresh 1 5 --nldseg '{"kl_warmup": 200}'
    python benchmarks/latent_separation.py --case heavy_tails --seed 2 --save ht2.joblib
    python benchmarks/latent_separation.py --load ht2.joblib   # a saved fit again
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import joblib
import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import cross_val_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fresh_cases import draw_cases  # noqa: E402
from suite import CASES, commit, machine  # noqa: E402

from nldseg import LangevinSegmenter  # noqa: E402
from nldseg.metrics import segmentation_accuracy  # noqa: E402

#: Codes per pair of states given to the discriminant (drawn at random).
MAX_PAIR_CODES = 6000


def fit_case(case, seed: int, overrides: dict) -> dict:
    """Fit ``case`` (seed ``seed``) with library defaults plus ``overrides``."""
    train, test, y_test, params = case.draw(seed)
    seg = LangevinSegmenter(random_state=seed, **overrides)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg.fit(train)
    took = time.perf_counter() - t0
    acc = segmentation_accuracy(np.concatenate(y_test), np.concatenate(seg.predict(test)))
    return {"seg": seg, "train": train, "y_train": params["train_labels"],
            "accuracy": acc, "fit_s": took, "case": case.name, "seed": seed,
            "overrides": overrides}


def pair_separation(codes: np.ndarray, y: np.ndarray, centres: np.ndarray,
                    rng: np.random.Generator) -> list:
    """``(accuracy, a, b, distance)`` per pair of states, least separable first.

    ``centres`` (k, latent_dim): each state's mean code.
    """
    k = len(centres)
    pairs = []
    for a in range(k):
        for b in range(a + 1, k):
            idx = np.flatnonzero((y == a) | (y == b))
            idx = rng.choice(idx, min(len(idx), MAX_PAIR_CODES), replace=False)
            acc = cross_val_score(LinearDiscriminantAnalysis(), codes[idx],
                                  y[idx] == a, cv=2).mean()
            pairs.append((float(acc), a, b,
                          float(np.linalg.norm(centres[a] - centres[b]))))
    return sorted(pairs)


def report(fit: dict) -> None:
    seg = fit["seg"]
    y = np.concatenate(fit["y_train"])
    codes = np.concatenate(seg.set_params(n_paths=1).transform(fit["train"]))
    wells = seg.energy_.predict(codes)
    k = int(y.max()) + 1
    centres = np.stack([codes[y == s].mean(0) for s in range(k)])
    print(f"# {fit['case']} seed {fit['seed']}, overrides {fit['overrides']}: "
          f"{seg.n_states_} wells for {k} states, accuracy {fit['accuracy']:.4f}, "
          f"{seg.n_iter_} steps, fit {fit['fit_s']:.0f} s")
    print("# candidates (lags: held-out ELBO per step): " + " ".join(
        f"{lag}:{score:.4f}" for lag, score in zip(seg.candidate_lags_,
                                                   seg.candidate_scores_)))
    print("| true state | steps | centre | spread (sd per axis) | energy "
          "| steps per well |")
    print("|---|---|---|---|---|---|")
    for s in range(k):
        z = codes[y == s]
        energy = float(np.asarray(seg.energy_(centres[s][None])).ravel()[0])
        print(f"| {s} | {len(z)} | {np.round(centres[s], 2).tolist()} | "
              f"{np.round(z.std(0), 2).tolist()} | {energy:.3f} | "
              f"{np.bincount(wells[y == s], minlength=seg.n_states_).tolist()} |")
    print("| pair | linear discriminant accuracy (2-fold; 0.5 chance) | centre distance |")
    print("|---|---|---|")
    for acc, a, b, dist in pair_separation(codes, y, centres, np.random.default_rng(0))[:6]:
        print(f"| {a}, {b} | {acc:.4f} | {dist:.3f} |")


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--case", choices=sorted(CASES), help="a suite case")
    which.add_argument("--fresh", type=int, nargs=2, metavar=("DRAW", "INDEX"),
                       help="case INDEX of fresh_cases.py's draw DRAW (6 cases)")
    which.add_argument("--load", help="a fit saved with --save")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the fit")
    p.add_argument("--nldseg", default="{}",
                   help="JSON dict of LangevinSegmenter parameters beside the defaults")
    p.add_argument("--save", help="save the fit and its training data here (joblib)")
    a = p.parse_args(argv)
    try:
        overrides = json.loads(a.nldseg)
    except json.JSONDecodeError as exc:
        p.error(f"--nldseg is not JSON: {exc}")
    if not isinstance(overrides, dict):
        p.error("--nldseg must be a JSON object of parameters")
    print(f"# machine: {machine()}; commit {commit()}")
    if a.load:
        fit = joblib.load(a.load)
    else:
        if a.fresh is not None:
            draw, index = a.fresh
            if not 0 <= index < 6:
                p.error("--fresh takes a case index 0-5 of the draw")
            case = draw_cases(draw, 6)[index]
        else:
            case = CASES[a.case]
        fit = fit_case(case, a.seed, overrides)
        if a.save:
            joblib.dump(fit, a.save)
    report(fit)


if __name__ == "__main__":
    main()
