"""Recordings of motion drawn at random, each fitted and labelled on its own.

The protocol of a study of recorded motion capture: one recording at a time,
of 4 joint angles, 4,600-10,600 steps, 3-9 activities; every method is
fitted on the recording without labels and labels the same recording, and
the labels are scored against the activities (there is no test recording).
The recordings come from :func:`nldseg.datasets.make_oscillation_sequences`
(activities as oscillations of their own tempo, amplitude and posture, with
nearly the same phase pattern), with the number of activities, the length,
how much the activities' phase patterns differ and the noise drawn at random
from ``--draw-seed``; the mean segment lasts ``length / (1.5 K)`` steps, so
each activity is visited about 1.5 times and some, by chance, hardly or not
at all. The ranges were fixed before any recording was fitted and are not
tuned to nldseg::

    python benchmarks/motion_recordings.py                    # 6 recordings of draw 0
    python benchmarks/motion_recordings.py --list             # the recordings only
    python benchmarks/motion_recordings.py --draw-seed 1 --out motion1.csv

Methods and columns are the suite's (``suite.run_case``: nldseg with library
defaults; KMeans, a GMM and hmmlearn's HMM given the number of activities the
generator had, ``K_true``, of which some may never occur). ``present`` is
the number of activities that occur in the recording, ``>= 2 %`` those that
fill at least 2 % of it; the occupancy's truth is the recording's own shares
(so its floor is 0).
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

from nldseg.datasets import make_oscillation_sequences  # noqa: E402


class _OneRecording(Case):
    """A case whose one recording is both the training and the scored set."""

    def draw(self, seed: int) -> tuple:
        X, y, params = self.generator(1, self.train_length, random_state=10_000 + seed,
                                      emission_random_state=seed, return_params=True,
                                      **self.kwargs)
        shares = np.bincount(y[0], minlength=self.kwargs["n_states"]) / y[0].size
        params = dict(params, stationary_distribution=shares, train_labels=list(y))
        return list(X), list(X), list(y), params


def draw_recordings(draw_seed: int, n_recordings: int) -> list:
    """``n_recordings`` :class:`_OneRecording` cases drawn from ``draw_seed``."""
    rng = np.random.default_rng([draw_seed, 11])
    cases = []
    for i in range(n_recordings):
        k = int(rng.integers(3, 10))
        length = int(rng.integers(4600, 10601))
        dwell = length / (1.5 * k)
        kwargs = dict(n_states=k, n_features=4,
                      switch_prob=round(1.0 / ((k - 1) * dwell), 7),
                      pattern_spread=round(float(rng.uniform(0.1, 0.5)), 2),
                      noise=round(float(rng.uniform(0.05, 0.3)), 2))
        note = (f"{k} activities, {length} steps, mean segment {dwell:.0f}, pattern "
                f"spread {kwargs['pattern_spread']}, noise {kwargs['noise']}")
        cases.append(_OneRecording(f"motion{draw_seed}_{i}", make_oscillation_sequences,
                                   kwargs, 1, length, 1, length, note, oracle=None))
    return cases


def _present(case: Case, seed: int) -> tuple:
    """Activities that occur in the recording, and those filling >= 2 % of it."""
    y = case.draw(seed)[2][0]
    shares = np.bincount(y) / y.size
    return int((shares > 0).sum()), int((shares >= 0.02).sum())


def _run(draw_seed: int, n_recordings: int, index: int, seed: int,
         with_hmm: bool) -> tuple:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    case = draw_recordings(draw_seed, n_recordings)[index]
    t0 = time.perf_counter()
    rows = run_case(case, seed, {}, with_hmm)
    present, common = _present(case, seed)
    for row in rows:
        row.update(present=present, present_2pc=common)
    return rows, time.perf_counter() - t0


def _row(r: dict) -> str:
    return (f"| {r['case']} | {r['method']} | {r['K']} / {r['K_true']} "
            f"({r['present']}, {r['present_2pc']}) | {r['acc']:.3f} | "
            f"{r['ari']:.3f} | {r['changes']} / {r['true_changes']} | "
            f"{r['fit_s']:.0f} |")


def _describe(case: Case, seed: int) -> str:
    present, common = _present(case, seed)
    return f"{present} occur, {common} fill >= 2 %"


def main(argv: list | None = None) -> None:
    draw_main(argv, description=__doc__.splitlines()[0], noun="recording",
              plural="recordings", draw=draw_recordings, describe=_describe,
              setting="; every method fits and labels the same recording", task=_run,
              header="| recording | method | K found / generated (present, >= 2 %) "
                     "| acc | ARI | label changes / true | fit s |", format_row=_row)


if __name__ == "__main__":
    main()
