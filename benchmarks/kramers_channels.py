"""Eyring-Kramers against simulation on a well with one, three spread or three close exits.

``kramers_rates`` sums the Eyring-Kramers rate over a state's exits, each a
harmonic saddle. On a fitted landscape it was 2.7x too fast on a small
shallow well whose three exits were close together and soft across
(``benchmarks/RESULTS.md``). This script asks the same of an analytic 2-D
energy where the exits can be placed at will:

    E(r, theta) = D (3 q^2 - 2 q^3) + w q^6 prod_k (1 - cos(theta - theta_k)),
    q = r / r_s,

a central well, a ring of height ``D`` at ``r_s`` with saddles exactly at
``(r_s, theta_k)``, and beyond it an energy that falls away. Overdamped
paths (``beta = gamma = 1``, Euler step ``--dt``) start at the minimum; the
escape time is the first time past ``r_out = 1.4 r_s``. Printed per case:
the formula's total rate (``nldseg._kinetics.eyring_kramers_rate`` summed
over the saddles), the simulated mean escape time, their product (the
formula over the simulation: 1 is exact), the basin's Boltzmann mass over
its harmonic estimate (the well's anharmonicity, which the formula leaves
out) and the product divided by it.

Example (the figures in ``benchmarks/RESULTS.md``)::

    python benchmarks/kramers_channels.py
"""

from __future__ import annotations

import argparse
import math
import platform

import numpy as np
import torch

from nldseg._kinetics import eyring_kramers_rate

D, RS, R_OUT, BETA, GAMMA = 3.0, 2.0, 2.8, 1.0, 1.0
CASES = {"one exit": [0.0], "three spread (0, 120, 240 deg)": [0.0, 120.0, 240.0],
         "three close (0, 40, 80 deg)": [0.0, 40.0, 80.0],
         "three closer (0, 30, 60 deg)": [0.0, 30.0, 60.0]}


def _energy(z: torch.Tensor, angles: list, w: float) -> torch.Tensor:
    r = z.norm(dim=-1).clamp_min(1e-12)
    theta = torch.atan2(z[..., 1], z[..., 0])
    h = torch.ones_like(r)
    for a in angles:
        h = h * (1 - torch.cos(theta - a))
    q = r / RS
    return D * (3 * q ** 2 - 2 * q ** 3) + w * q ** 6 * h


def _hessian(point, angles: list, w: float) -> np.ndarray:
    z = torch.as_tensor(point, dtype=torch.float64)
    return torch.func.hessian(lambda x: _energy(x, angles, w))(z).numpy()


def _escape_time(angles: list, w: float, n_paths: int, dt: float, seed: int) -> float:
    """Mean first time past ``R_OUT`` of overdamped paths started at the minimum."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.zeros(n_paths, 2, dtype=torch.float64)
    alive = torch.ones(n_paths, dtype=torch.bool)
    exit_time = torch.full((n_paths,), float("nan"), dtype=torch.float64)
    scale, t = math.sqrt(2 * dt / (BETA * GAMMA)), 0.0
    while alive.any():
        za = z[alive].requires_grad_(True)
        (grad,) = torch.autograd.grad(_energy(za, angles, w).sum(), za)
        za = za.detach() - grad / GAMMA * dt + scale * torch.randn(
            za.shape, generator=gen, dtype=torch.float64)
        z[alive] = za
        t += dt
        out = alive.clone()
        out[alive] = za.norm(dim=-1) > R_OUT
        exit_time[out] = t
        alive &= ~out
    return float(exit_time.mean())


def _basin_mass_ratio(angles: list, w: float, h_min: np.ndarray, n: int = 801) -> float:
    """``integral_{r < r_s} exp(-beta E)`` over its harmonic estimate from ``h_min``."""
    g = torch.linspace(-RS, RS, n, dtype=torch.float64)
    x, y = torch.meshgrid(g, g, indexing="ij")
    z = torch.stack([x.ravel(), y.ravel()], 1)
    z = z[z.norm(dim=1) < RS]
    mass = float(torch.exp(-BETA * _energy(z, angles, w)).sum()) * float(g[1] - g[0]) ** 2
    return mass / (2 * math.pi / (BETA * math.sqrt(np.linalg.det(h_min))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--w", type=float, default=4.0, help="angular barrier scale")
    parser.add_argument("--n-paths", type=int, default=4000)
    parser.add_argument("--dt", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread; D={D}, r_s={RS}, r_out={R_OUT}, w={args.w}, dt={args.dt}, "
          f"{args.n_paths} paths, seed {args.seed}")
    print("| exits | transverse curvature at the saddles | formula rate | "
          "simulated escape time | formula / simulation | basin mass / harmonic | "
          "the same, corrected |")
    print("|---|---|---|---|---|---|---|")
    for name, degrees in CASES.items():
        angles = [math.radians(a) for a in degrees]
        h_min = _hessian([1e-6, 1e-6], angles, args.w)
        rate, soft = 0.0, []
        for a in angles:
            h_s = _hessian([RS * math.cos(a), RS * math.sin(a)], angles, args.w)
            soft.append(float(np.linalg.eigvalsh(h_s)[1]))
            rate += eyring_kramers_rate(D, h_min, h_s, BETA, GAMMA)
        escape = _escape_time(angles, args.w, args.n_paths, args.dt, args.seed)
        anharmonic = _basin_mass_ratio(angles, args.w, h_min)
        print(f"| {name} | {', '.join(f'{c:.3f}' for c in soft)} | {rate:.4f} | "
              f"{escape:.1f} | {rate * escape:.2f} | {anharmonic:.2f} | "
              f"{rate * escape / anharmonic:.2f} |", flush=True)


if __name__ == "__main__":
    main()
