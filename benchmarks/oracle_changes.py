"""How often the exact online filter itself changes label: the flicker bar's floor.

Issue 13 asks that the labels change at most twice as often as the true
states do. For every case of the suite whose generator is known (the
Gaussian-HMM cases and ``regimes``), this labels the suite's test set with
the *oracle* forward filter (the generating parameters and transition
matrix, the true number of states; the suite's ``oracle_filter`` row) and
counts its label changes against the true ones, two ways from the same
probabilities:

* ``argmax``: the most probable state at every step (the suite's oracle row);
* ``hysteresis``: nldseg's default labelling rule on those probabilities
  (``switch_margin=0.2``, and ``switch_hold="auto"``: 0.2 % of the true chain's
  mean steps between changes, printed in brackets), so that the rule's own
  effect is separated from nldseg's model.

No nldseg fit: it runs in seconds. An online labeller of the true model that
changes label more than twice as often as the truth tells that the bar
cannot be met on that case by filtering alone::

    python benchmarks/oracle_changes.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _baselines import ar_log_densities, forward_filter, gaussian_log_densities  # noqa: E402
from suite import CASES, commit, machine  # noqa: E402

from nldseg._inference import AUTO_HOLD_FRACTION, hysteresis_labels  # noqa: E402
from nldseg.metrics import n_label_changes, segmentation_accuracy  # noqa: E402

MARGIN = 0.2  # nldseg's default switch_margin


def oracle_proba(seq: np.ndarray, params: dict, kind: str) -> np.ndarray:
    """The oracle forward filter's state probabilities of one sequence, (T, K)."""
    if kind == "ar":
        log_b = ar_log_densities(seq, params["dynamics"], params["noise_covariances"])
    else:
        log_b = gaussian_log_densities(seq, params["means"], params["covariances"])
    return forward_filter(log_b, params["stationary_distribution"],
                          params["transition_matrix"])


def run(case_name: str, seed: int) -> dict:
    """Accuracy and label changes of the oracle's two labellings on one seed."""
    case = CASES[case_name]
    _, test, y_test, params = case.draw(seed)
    probas = [oracle_proba(seq, params, case.oracle) for seq in test]
    trans = np.asarray(params["transition_matrix"])
    pi = np.asarray(params["stationary_distribution"])
    dwell = 1.0 / max(float((pi * (1.0 - np.diag(trans))).sum()), 1e-12)
    hold = int(AUTO_HOLD_FRACTION * dwell)
    out = {"true": n_label_changes(y_test), "hold": hold}
    for name, labels in (("argmax", [p.argmax(1) for p in probas]),
                         ("hysteresis", [hysteresis_labels(p, MARGIN, hold=hold)
                                         for p in probas])):
        out[name] = (segmentation_accuracy(y_test, labels), n_label_changes(labels))
    return out


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    known = [name for name, case in CASES.items() if case.oracle is not None]
    p.add_argument("--cases", nargs="+", default=known, choices=known)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    print(f"# machine: {machine()}; commit {commit()}")
    print("| case | seed | true changes | oracle argmax: acc, changes (x true) "
          "| oracle + nldseg's rule (hold): acc, changes (x true) |")
    print("|---|---|---|---|---|")
    for name in args.cases:
        for seed in args.seeds:
            r = run(name, seed)
            cells = [f"{acc:.4f}, {ch} ({ch / r['true']:.2f}x)"
                     for acc, ch in (r["argmax"], r["hysteresis"])]
            print(f"| {name} | {seed} | {r['true']} | {cells[0]} | "
                  f"{cells[1]} ({r['hold']}) |", flush=True)


if __name__ == "__main__":
    main()
