"""How far apart the wells of a fit are in what they say about one observation.

Fits a suite case with library defaults (and ``--n-lags``), then compares the
decoder's observation law ``N(g(m_k), Sigma(m_k))`` at every pair of well
minima ``m_k`` by their symmetric Kullback-Leibler divergence (in the model's
standardised units). A diagnostic for ``n_lags="auto"``: where frames carry
no state (``regimes``), wells kept by a single-frame model should decode to
nearly the same law; see ``benchmarks/RESULTS.md``, "The suite under today's
defaults".

    python benchmarks/decoded_wells.py regimes 2 --n-lags 0
"""

import argparse
import itertools
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suite import CASES  # noqa: E402

from nldseg import LangevinSegmenter  # noqa: E402


def gaussian_kl(mu_a, cov_a, mu_b, cov_b) -> float:
    """``KL(N(mu_a, cov_a) || N(mu_b, cov_b))`` in nats (float64)."""
    inv_b = torch.linalg.inv(cov_b)
    d = mu_b - mu_a
    return 0.5 * float(torch.trace(inv_b @ cov_a) + d @ inv_b @ d - len(d)
                       + torch.logdet(cov_b) - torch.logdet(cov_a))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", choices=list(CASES))
    p.add_argument("seed", type=int)
    p.add_argument("--n-lags", default="auto", help="0, 1 or auto (default)")
    a = p.parse_args()
    n_lags = a.n_lags if a.n_lags == "auto" else int(a.n_lags)
    X, _, _, _ = CASES[a.case].draw(a.seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(n_lags=n_lags, random_state=a.seed).fit(X)
    took = time.perf_counter() - t0
    print(f"{a.case} seed {a.seed}, n_lags={n_lags!r}: fit {took:.0f} s, "
          f"{seg.n_states_} wells, occupancy {np.round(seg.state_occupancy_, 3)}, "
          f"n_lags_ {seg.n_lags_}")
    minima = torch.as_tensor(seg.energy_.minima, dtype=torch.float32)
    with torch.no_grad():
        mean, scale = seg.module_.decoder_mean_and_scale(minima)
    scale = scale.expand(len(minima), *scale.shape[-2:]).double()
    cov, mean = scale @ scale.transpose(-1, -2), mean.double()
    energies = seg.energy_.minima_energies
    for i, j in itertools.combinations(range(len(minima)), 2):
        sym = 0.5 * (gaussian_kl(mean[i], cov[i], mean[j], cov[j])
                     + gaussian_kl(mean[j], cov[j], mean[i], cov[i]))
        print(f"  wells {i}-{j}: symmetric KL {sym:.3f} nats, mean shift "
              f"{float((mean[i] - mean[j]).norm()):.3f}, E {energies[i]:.2f} / "
              f"{energies[j]:.2f}")


if __name__ == "__main__":
    main()
