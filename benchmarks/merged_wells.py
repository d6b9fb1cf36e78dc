"""States made of several merged wells: their neighbours and escape rates.

A fitted energy often has more minima than states: shallow or small wells
are merged into a neighbouring state (``energy_.all_minima`` against
``energy_.minima``), as on every default fit of the suite's ``motion`` case.
The minimum energy path from such a state's deepest minimum to another state
then dips through the state's own other minima. Until commit ``8c738fd`` a
dip in the path's energy profile made the pair "not neighbours", so a state
could be left with no neighbour at all: ``kramers_rates()`` gave it no way
out, and its core (for the kinetics' milestoning) was its whole basin. Since
then the neighbours are read off the basins the path steps through.

For each fit this prints, side by side on the same model:

* the states, the minima, and the states with no neighbour under the old rule
  (``state_saddles`` without ``state_of``: every minimum a state of its own,
  a dip cuts the pair) and under the library's (``landscape_saddles``);
* each state's Eyring-Kramers escape rate (sum of ``kramers_rate_matrix``'s
  row) under both rules, against its escape rate in simulations of the prior
  as trained, ``1 / mean_dwell_times(clock="model")`` (core-set labels with
  the library's cores), and the ratio (issue 14's bar: within a factor 2).
  Both sides run on the trained clock, so the calibrated
  ``prior_time_scale_`` (which a model fitted before ``8c738fd`` computed
  with the old cores) does not enter;
* where the case is a Markov chain of known transition matrix: the
  calibrated clock and ``mean_dwell_times()`` on it, in the learned states'
  order, beside the true mean dwell of each state (the learned states are not
  matched to the true ones: on ``motion`` every true dwell is the same, 800
  steps).

    python benchmarks/merged_wells.py --cases motion --seeds 3 5 6
    python benchmarks/merged_wells.py --load-dir models/ ...   # reuse saved fits
"""

import argparse
import os
import time

import numpy as np
import torch
from _common import machine_line
from suite import CASES

from nldseg import LangevinSegmenter
from nldseg._kinetics import kramers_rate_matrix, landscape_saddles, state_saddles

KRAMERS_BAR = 2.0


def _fitted(case: str, seed: int, train, load_dir, save_dir) -> tuple:
    """``(segmenter, fit seconds)``: read it from ``load_dir``, else fit defaults."""
    name = f"{case}_seed{seed}.nldseg"
    if load_dir:
        return LangevinSegmenter.load(os.path.join(load_dir, name)), float("nan")
    t0 = time.perf_counter()
    seg = LangevinSegmenter(random_state=seed).fit(train)
    t_fit = time.perf_counter() - t0
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        seg.save(os.path.join(save_dir, name))
    return seg, t_fit


def _escape(seg, saddles: dict) -> np.ndarray:
    """Eyring-Kramers escape rate of every state on the trained clock."""
    beta, gamma, mass = (t.detach().double() for t in seg.module_.langevin_params())
    rates = kramers_rate_matrix(seg.energy_, saddles, beta=float(beta),
                                gamma=float(gamma),
                                mass=mass.numpy() if seg.dynamics == "underdamped"
                                else None)
    return rates.sum(1)


def run(case: str, seed: int, load_dir, save_dir, n_trajectories: int,
        n_steps: int) -> dict:
    train, _, _, truth = CASES[case].draw(seed)
    seg, t_fit = _fitted(case, seed, train, load_dir, save_dir)
    land = seg.energy_
    old = state_saddles(land, land.gradient, land.hessian, land.minima)
    new = landscape_saddles(land)
    t0 = time.perf_counter()
    dwell = seg.mean_dwell_times(clock="model", n_trajectories=n_trajectories,
                                 n_steps=n_steps, random_state=seed)
    t_sim = time.perf_counter() - t0

    calibrated = {}
    if "transition_matrix" in truth:
        calibrated = {"clock": seg.prior_time_scale_,
                      "dwell": seg.mean_dwell_times(n_trajectories=n_trajectories,
                                                    n_steps=n_steps, random_state=seed),
                      "dwell_true": 1 / (1 - np.diag(truth["transition_matrix"]))}

    def lonely(s):
        return [i for i in range(seg.n_states_) if not np.isfinite(s["barriers"][i]).any()]

    return {"case": case, "seed": seed, "n_states": seg.n_states_,
            "n_minima": len(land.all_minima), "t_fit": t_fit, "t_sim": t_sim,
            "lonely_old": lonely(old), "lonely_new": lonely(new),
            "escape_old": _escape(seg, old), "escape_new": _escape(seg, new),
            "escape_sim": 1.0 / dwell, **calibrated}


def report(r: dict) -> None:
    ratio = r["escape_new"] / r["escape_sim"]
    within = np.abs(np.log(ratio)) <= np.log(KRAMERS_BAR)
    print(f"{r['case']} seed {r['seed']}: {r['n_states']} states from {r['n_minima']} "
          f"minima (fit {r['t_fit']:.0f} s, simulation {r['t_sim']:.0f} s)")
    print(f"  states with no neighbour: old rule {r['lonely_old']}, "
          f"library {r['lonely_new']}")
    for name, key in (("Kramers, old rule", "escape_old"),
                      ("Kramers, library", "escape_new"),
                      ("simulated prior", "escape_sim")):
        print(f"  escape rate per step, {name:17s}: "
              + " ".join(f"{v:.2e}" for v in r[key]))
    print("  Kramers (library) / simulated: "
          + " ".join(f"{v:.2f}" for v in ratio)
          + f"  -> within x{KRAMERS_BAR:g}: {int(within.sum())} of {len(within)}")
    if "dwell" in r:
        print(f"  calibrated clock {r['clock']:.3f}: mean dwell (learned order) "
              + " ".join(f"{v:.0f}" for v in r["dwell"]) + "; true "
              + " ".join(f"{v:.0f}" for v in r["dwell_true"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["motion"], choices=sorted(CASES))
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 6])
    p.add_argument("--load-dir", default=None, help="read saved fits from here")
    p.add_argument("--save-dir", default=None, help="write each fitted model here")
    p.add_argument("--n-trajectories", type=int, default=256)
    p.add_argument("--n-steps", type=int, default=4000)
    args = p.parse_args()
    print(machine_line(torch.device("cpu")))
    for case in args.cases:
        for seed in args.seeds:
            report(run(case, seed, args.load_dir, args.save_dir, args.n_trajectories,
                       args.n_steps))


if __name__ == "__main__":
    main()
