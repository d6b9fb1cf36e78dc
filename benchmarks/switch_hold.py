"""The labels' hold (``switch_hold``) on a chain whose states last ~1,000 steps.

Not a case of the suite, and not the data the hold was developed on (the
suite's ``motion``): a 3-state Gaussian chain, 6 overlapping features
(``mean_scale=0.4``, as the suite's ``long``), ``switch_prob=0.0005`` (a
visit lasts 1,000 steps on average), trained on 2 recordings of 20,000 steps
and labelled on a third. Each seed fits the library defaults once and labels
the test recording three ways from the same probabilities: the default
(``switch_hold="auto"``: 0.2 % of ``training_dwell_time_``), ``switch_hold=0``
(the labels before the hold) and the plain argmax (``switch_margin=0``,
``switch_hold=0``). It prints the fit's ``training_dwell_time_`` beside the
training labels' true mean dwell, and each labelling's accuracy and label
changes against the true number::

    python benchmarks/switch_hold.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

from nldseg import LangevinSegmenter
from nldseg._inference import hold_steps
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import n_label_changes, segmentation_accuracy

LABELLINGS = {"default (auto)": {},
              "switch_hold=0": {"switch_hold": 0},
              "argmax": {"switch_margin": 0.0, "switch_hold": 0}}


def mean_dwell(labels: list) -> float:
    """Steps per label change of labelled sequences (all steps if none changes)."""
    steps = sum(len(y) - 1 for y in labels)
    return steps / max(1, n_label_changes(list(labels)))


def run(seed: int) -> None:
    kw = dict(n_states=3, n_features=6, mean_scale=0.4, switch_prob=0.0005,
              emission_random_state=seed)
    X, y = make_markov_chain_sequences(2, 20_000, random_state=10_000 + seed, **kw)
    X_test, y_test = make_markov_chain_sequences(1, 20_000, random_state=20_000 + seed,
                                                 **kw)
    seg = LangevinSegmenter(random_state=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg.fit(list(X))
    print(f"seed {seed}: {seg.n_states_} states, fit {time.perf_counter() - t0:.0f} s; "
          f"training_dwell_time_ {seg.training_dwell_time_:.1f} (hold "
          f"{hold_steps('auto', seg.training_dwell_time_)}), true training dwell "
          f"{mean_dwell(list(y)):.1f}")
    for name, params in LABELLINGS.items():
        labels = copy.copy(seg).set_params(**params).predict(list(X_test))
        print(f"  {name:15s} accuracy {segmentation_accuracy(list(y_test), labels):.4f}"
              f", label changes {n_label_changes(labels)} (true "
              f"{n_label_changes(list(y_test))})", flush=True)


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    for seed in p.parse_args(argv).seeds:
        run(seed)


if __name__ == "__main__":
    main()
