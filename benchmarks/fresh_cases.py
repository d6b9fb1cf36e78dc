"""Cases drawn at random, beside the baselines: a check on data the suite never held.

The suite's cases are the ones the library was developed on; a default that
fits them alone would show on other data. This script draws ``--n-cases``
case configurations at random from ``--draw-seed`` (a generator of
:mod:`nldseg.datasets`, its sizes, overlap, switching rate and the shape of
the training set), then passes each case's observations through a random
affine map (a random rotation, per-direction scales spread over two decades,
an offset, and an overall scale between 0.01 and 100), as recorded channels
come in units of their own. Each case is then fitted and scored exactly as
a suite case (``suite.run_case``: nldseg with library defaults, KMeans, GMM
and hmmlearn's HMM given the true number of states; on the Gaussian HMMs
also the oracle filter, with the generating emissions carried through the
map)::

    python benchmarks/fresh_cases.py                      # 6 cases of draw 0, seed 0
    python benchmarks/fresh_cases.py --draw-seed 1 --n-cases 4 --jobs 2
    python benchmarks/fresh_cases.py --list               # the configurations only
    python benchmarks/fresh_cases.py --out fresh0.csv     # every row also as CSV

The draws' ranges were fixed when the script was written, before any case
was run, and are not tuned to nldseg: Gaussian HMMs (2-6 states, 3-16
features, emission scale 0.35-0.9, mean dwell 20-200 steps), switching
vector autoregressions with identical frames (2-3 regimes, 2-6 features),
and multi-well diffusions seen through a nonlinear map (2-4 wells, 3-20
features, noise 0.1-1.0); training sets of 200 x 150, 100 x 200, 40 x 500,
4 x 5,000 or 1 x 15,000 steps. One row per case and method; the columns are
the suite's (see ``suite.py``).
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _drawn import draw_main  # noqa: E402
from suite import Case, run_case  # noqa: E402

from nldseg.datasets import (  # noqa: E402
    make_langevin_sequences,
    make_markov_chain_sequences,
    make_switching_ar_sequences,
)

#: Training-set shapes (sequences, steps); the test set has half the sequences
#: (at least one) of the same length.
SHAPES = [(200, 150), (100, 200), (40, 500), (4, 5000), (1, 15000)]


class _Affine:
    """A generator whose observations pass through ``x -> scale * (x @ A + b)``."""

    def __init__(self, generator, rng: np.random.Generator, n_features: int):
        self.generator = generator
        q, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
        self.matrix = q * np.exp(rng.uniform(np.log(0.1), np.log(10.0), n_features))
        self.offset = rng.normal(0.0, 5.0, n_features)
        self.scale = float(np.exp(rng.uniform(np.log(0.01), np.log(100.0))))

    def __call__(self, n_sequences, n_timesteps, **kwargs):
        X, y, params = self.generator(n_sequences, n_timesteps, **kwargs)
        if "means" in params:  # Gaussian emissions: their law under the map.
            params = dict(params, means=self.scale * (np.asarray(params["means"])
                                                      @ self.matrix + self.offset),
                          covariances=self.scale ** 2 * np.einsum(
                              "fi,kfg,gj->kij", self.matrix,
                              np.asarray(params["covariances"]), self.matrix))
        return self.scale * (np.asarray(X) @ self.matrix + self.offset), y, params


def draw_cases(draw_seed: int, n_cases: int) -> list:
    """``n_cases`` suite :class:`~suite.Case` objects drawn from ``draw_seed``."""
    rng = np.random.default_rng([draw_seed, 7])
    cases = []
    for i in range(n_cases):
        kind = rng.choice(["chain", "ar", "langevin"], p=[0.5, 0.2, 0.3])
        n_train, length = SHAPES[rng.integers(len(SHAPES))]
        if kind == "chain":
            k = int(rng.integers(2, 7))
            dwell = float(np.exp(rng.uniform(np.log(20), np.log(200))))
            kwargs = dict(n_states=k, n_features=int(rng.integers(3, 17)),
                          mean_scale=round(float(rng.uniform(0.35, 0.9)), 2),
                          switch_prob=round(1.0 / (dwell * (k - 1)), 5))
            generator = make_markov_chain_sequences
            note = (f"Gaussian HMM, {k} states, {kwargs['n_features']}-D, mean_scale "
                    f"{kwargs['mean_scale']}, dwell {dwell:.0f}")
        elif kind == "ar":
            k = int(rng.integers(2, 4))
            dwell = float(np.exp(rng.uniform(np.log(50), np.log(200))))
            kwargs = dict(n_states=k, n_features=int(rng.integers(2, 7)),
                          switch_prob=round(1.0 / (dwell * (k - 1)), 5))
            generator = make_switching_ar_sequences
            note = (f"switching AR(1), identical frames, {k} regimes, "
                    f"{kwargs['n_features']}-D, dwell {dwell:.0f}")
        else:
            k = int(rng.integers(2, 5))
            kwargs = dict(n_wells=k, n_features=int(rng.integers(3, 21)),
                          noise=round(float(rng.uniform(0.1, 1.0)), 2))
            generator = make_langevin_sequences
            note = (f"{k}-well diffusion through a nonlinear map, "
                    f"{kwargs['n_features']}-D, noise {kwargs['noise']}")
        n_features = kwargs["n_features"]
        mapped = _Affine(generator, rng, n_features)
        note += f"; affine map, overall scale {mapped.scale:.3g}"
        cases.append(Case(f"fresh{draw_seed}_{i}", mapped, kwargs, n_train, length,
                          max(1, n_train // 2), length, note,
                          oracle="gaussian" if kind == "chain" else None))
    return cases


def _run(draw_seed: int, n_cases: int, index: int, seed: int, with_hmm: bool) -> tuple:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    rows = run_case(draw_cases(draw_seed, n_cases)[index], seed, {}, with_hmm)
    return rows, time.perf_counter() - t0


def _row(r: dict) -> str:
    l1 = r.get("l1_nld_sampled", r.get("l1_model", float("nan")))
    return (f"| {r['case']} | {r['method']} | {r['K']} / {r['K_true']} | "
            f"{r['acc']:.3f} | {r['ari']:.3f} | {l1:.3f} ({r['l1_floor']:.3f}) | "
            f"{r['changes']} / {r['true_changes']} | {r['fit_s']:.0f} |")


def _describe(case: Case, seed: int) -> str:
    return (f"train {case.n_train} x {case.train_length}, "
            f"test {case.n_test} x {case.test_length}")


def main(argv: list | None = None) -> None:
    draw_main(argv, description=__doc__.splitlines()[0], noun="case", plural="cases",
              draw=draw_cases, describe=_describe, setting="", task=_run,
              header="| case | method | K found / true | acc | ARI | occupancy l1 "
                     "(floor) | label changes / true | fit s |", format_row=_row)


if __name__ == "__main__":
    main()
