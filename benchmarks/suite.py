"""The benchmark suite: nldseg beside the baselines a user would otherwise pick.

One command runs every case of the suite for several seeds and prints one
table; the same figures are written as CSV (one row per case, method and seed)
and JSON (the rows plus the run's settings and machine); while it runs, the
rows of the (case, seed) runs done so far are kept in ``<out>.partial.csv``
(removed at the end), so that a run stopped early keeps them::

    python benchmarks/suite.py                       # the default cases, seeds 0 1 2
    python benchmarks/suite.py --cases overlap long --seeds 0 1 2 3 4
    python benchmarks/suite.py --cases highdim       # not in the default run
    python benchmarks/suite.py --cases motion        # not in the default run
    python benchmarks/suite.py --cases basic_motions  # recorded; pip install --no-deps aeon
    python benchmarks/suite.py --cases japanese_vowels  # recorded, as basic_motions
    python benchmarks/suite.py --nldseg '{"max_iter": 80}'   # other parameters

Each case draws a training set and a test set from one generator of
:mod:`nldseg.datasets` (same emission parameters, other sequences) per seed;
``basic_motions`` and ``japanese_vowels`` are recorded data instead
(``benchmarks/_recorded.py``: the seed orders the clips of their training and
test files).
Every method is fitted on the training set without labels and labels the test
set; nldseg and the forward filters online (step ``t`` sees ``x[:t+1]``),
Viterbi offline. Columns:

- ``acc``: one-to-one Hungarian-matched accuracy
  (:func:`nldseg.metrics.segmentation_accuracy`; a predicted state left
  without a partner counts as wrong); ``ari``, ``nmi``: adjusted Rand index
  and normalised mutual information of the pooled labels;
- ``K``: the number of states found (nldseg's ``n_states_``; the baselines are
  given the true number) against the true one;
- ``l1``: occupancy error, sum over true states of ``|true share - matched
  estimate|`` plus the share of any estimated state left unmatched (states are
  matched by the test labels). nldseg reports its three estimates (sampled =
  ``state_occupancy_``, zeroth and second order), the HMM its chain's
  stationary law, the GMM its weights, KMeans its cluster shares;
- ``l1 floor``: the same l1 for the true labels of the *training* set, i.e.
  how far the data's own time shares are from the stationary law (sampling
  error of a finite set; mean over seeds). An estimate learnt from these data
  cannot be expected to beat it by much;
- ``changes``: label changes in the test labels, against the true number;
- ``fit_s``, ``pred_s``: wall-clock seconds.

The summary gives the mean over seeds and the worst seed (lowest accuracy,
highest l1, largest change ratio).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
# Worker processes import this directory's modules too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_HERE, os.environ.get("PYTHONPATH")) if p)

from _baselines import frame_baselines, hmm_baseline, oracle_labels  # noqa: E402
from _recorded import (  # noqa: E402
    BASIC_MOTIONS_CLASSES,
    JAPANESE_VOWELS_CLASSES,
    basic_motions_recording,
    data_dir,
    japanese_vowels_recording,
)

from nldseg import LangevinSegmenter  # noqa: E402
from nldseg._validation import delay_embed  # noqa: E402
from nldseg.datasets import (  # noqa: E402
    make_langevin_sequences,
    make_markov_chain_sequences,
    make_oscillation_sequences,
    make_switching_ar_sequences,
)
from nldseg.metrics import (  # noqa: E402
    label_mapping,
    n_label_changes,
    segmentation_accuracy,
)


def _unequal_transitions() -> np.ndarray:
    """4 states with time shares 0.466 / 0.301 / 0.196 / 0.037; dwell 71 to 20 steps."""
    return np.array([[0.986, 0.008, 0.005, 0.001],
                     [0.012, 0.978, 0.008, 0.002],
                     [0.012, 0.012, 0.972, 0.004],
                     [0.015, 0.015, 0.020, 0.950]])


def _symmetric_chain(k: int, switch_prob: float) -> tuple:
    """Transition matrix leaving to each other state with ``switch_prob``, and
    its stationary law (uniform: the chain is symmetric)."""
    transition = np.full((k, k), switch_prob)
    np.fill_diagonal(transition, 1 - switch_prob * (k - 1))
    return transition, np.full(k, 1.0 / k)


def _state_paths(rng, transition: np.ndarray, start: np.ndarray, n_sequences: int,
                 n_timesteps: int):
    """The chain's state paths, one sequence at a time: a generator, so that
    the caller draws each sequence's frames from ``rng`` before the next path."""
    k = len(start)
    for _ in range(n_sequences):
        s = np.empty(n_timesteps, dtype=int)
        s[0] = rng.choice(k, p=start)
        for t in range(1, n_timesteps):
            s[t] = rng.choice(k, p=transition[s[t - 1]])
        yield s


def scalar_chain_sequences(n_sequences: int, n_timesteps: int, *, random_state=None,
                           emission_random_state=None, return_params: bool = True,
                           sds: tuple = (0.5, 1.0, 2.0), means: tuple | None = None,
                           switch_prob: float = 0.004):
    """1-D Gaussian HMM: by default returns whose regimes differ only in volatility.

    A Markov chain over ``len(sds)`` regimes leaves its regime with
    probability ``switch_prob`` to each other one per step (dwell 125 steps
    for the defaults); a step's value is ``N(means[k], sds[k]^2)``, the
    means 0 unless given: volatility regimes as in finance, or with means
    the current levels of a single ion channel. ``emission_random_state``
    is not used (the parameters are fixed). Returns ``(X, y, params)`` as
    ``nldseg.datasets``' generators.
    """
    rng = np.random.default_rng(random_state)
    k = len(sds)
    mu = np.zeros(k) if means is None else np.asarray(means, dtype=float)
    transition, start = _symmetric_chain(k, switch_prob)
    X, Y = [], []
    for s in _state_paths(rng, transition, start, n_sequences, n_timesteps):
        X.append((mu[s] + np.asarray(sds)[s] * rng.standard_normal(n_timesteps))[:, None])
        Y.append(s)
    params = {"stationary_distribution": start, "transition_matrix": transition,
              "means": mu[:, None],
              "covariances": np.asarray(sds, dtype=float)[:, None, None] ** 2}
    return np.array(X), np.array(Y), params


def student_chain_sequences(n_sequences: int, n_timesteps: int, *, random_state=None,
                            emission_random_state=None, return_params: bool = True,
                            n_states: int = 4, n_features: int = 6,
                            mean_scale: float = 0.8, scale: float = 0.8,
                            df: float = 3.0, switch_prob: float = 0.0067):
    """An HMM with heavy-tailed frames: independent Student-t coordinates.

    The chain leaves its state with probability ``switch_prob`` to each other
    one per step (dwell 50 steps for the defaults) and starts uniform; state
    ``k`` emits ``means[k] + scale * t(df)`` per coordinate, the means drawn
    as ``mean_scale * N(0, I)`` from ``emission_random_state``. With ``df=3``
    the variance is 3 ``scale**2`` and outliers are common, as the spikes
    of a sensor. Returns ``(X, y, params)`` as ``nldseg.datasets``'
    generators (``params``: ``means``, ``scale``, ``df``, the chain).
    """
    means = mean_scale * np.random.default_rng(emission_random_state).standard_normal(
        (n_states, n_features))
    rng = np.random.default_rng(random_state)
    transition, start = _symmetric_chain(n_states, switch_prob)
    X, Y = [], []
    for s in _state_paths(rng, transition, start, n_sequences, n_timesteps):
        X.append(means[s] + scale * rng.standard_t(df, size=(n_timesteps, n_features)))
        Y.append(s)
    params = {"stationary_distribution": start, "transition_matrix": transition,
              "means": means, "scale": scale, "df": df}
    return np.array(X), np.array(Y), params


@dataclass
class Case:
    """One case of the suite: a generator and the sizes of its two sets."""

    name: str
    generator: object
    kwargs: dict
    n_train: int
    train_length: int
    n_test: int
    test_length: int
    note: str
    oracle: str | None = "gaussian"  # kind of oracle filter, None: unknown
    extra: dict = field(default_factory=dict)
    in_default_run: bool = True  # False: run only when named with --cases

    def draw(self, seed: int) -> tuple:
        """``(train, test, y_test, params)``; lists of 2-D arrays and of labels.

        ``params`` are the generator's, plus ``"train_labels"``: the true
        labels of the training set (for the sampling floor of occupancy).
        """
        shared = dict(self.kwargs, emission_random_state=seed, return_params=True)
        X, y, params = self.generator(self.n_train, self.train_length,
                                      random_state=10_000 + seed, **shared)
        params["train_labels"] = list(y)
        X_test, y_test, _ = self.generator(self.n_test, self.test_length,
                                           random_state=20_000 + seed, **shared)
        return list(X), list(X_test), list(y_test), params


class RecordedCase(Case):
    """A case of recorded data: ``generator(split, random_state)`` gives one
    recording ``(X, y)`` of the training or the test split.

    ``extra`` names the data set's ``"folder"`` (for :func:`data_dir`) and its
    ``"classes"``. The true occupancy is the classes' shares of the training
    recording (so the l1 floor is 0).
    """

    def draw(self, seed: int) -> tuple:
        X, y = self.generator("train", 10_000 + seed)
        X_test, y_test = self.generator("test", 20_000 + seed)
        shares = np.bincount(y, minlength=len(self.extra["classes"])) / len(y)
        params = {"stationary_distribution": shares, "train_labels": [y]}
        return [X], [X_test], [y_test], params


CASES = {case.name: case for case in [
    Case("paper", make_markov_chain_sequences,
         dict(n_states=3, n_features=15, switch_prob=0.025), 200, 200, 100, 500,
         "the paper's chain (3 states, 15-D); separable frame by frame"),
    Case("overlap", make_markov_chain_sequences,
         dict(n_states=4, n_features=8, mean_scale=0.3, switch_prob=0.006),
         200, 200, 100, 200,
         "4 states, strongly overlapping 8-D emissions; time separates them"),
    Case("unequal", make_markov_chain_sequences,
         dict(transition_matrix=_unequal_transitions(), n_features=8, mean_scale=0.6),
         200, 200, 100, 200,
         "4 states, shares 0.47/0.30/0.20/0.04, moderately overlapping 8-D"),
    Case("two_states", make_markov_chain_sequences,
         dict(n_states=2, n_features=5, mean_scale=0.5, switch_prob=0.01),
         100, 200, 50, 200, "2 states, overlapping 5-D emissions"),
    Case("six_states", make_markov_chain_sequences,
         dict(n_states=6, n_features=10, mean_scale=0.6, switch_prob=0.004),
         200, 200, 100, 200, "6 states, moderately overlapping 10-D emissions"),
    Case("langevin", make_langevin_sequences,
         dict(n_wells=4, n_features=10, well_depths=[1.1, 0.78, 0.42, 0.0]),
         100, 400, 50, 400,
         "4-well diffusion through a nonlinear 10-D map, shares 0.72/0.21/0.05/0.01",
         oracle=None),
    Case("long", make_markov_chain_sequences,
         dict(n_states=3, n_features=6, mean_scale=0.4, switch_prob=0.005),
         2, 20_000, 1, 20_000,
         "few long recordings: 2 x 20,000 steps, 3 overlapping states"),
    Case("regimes", make_switching_ar_sequences,
         dict(n_states=3, n_features=4, switch_prob=0.01), 200, 200, 100, 200,
         "3 regimes with identical frames (N(0, I)), differing in dynamics only",
         oracle="ar"),
    # Not in the default run (the run's 30-minute bar on 2 cores): name them.
    Case("five_states", make_markov_chain_sequences,
         dict(n_states=5, n_features=8, mean_scale=0.3, switch_prob=0.006),
         200, 200, 100, 200,
         "5 states, strongly overlapping 8-D emissions (overlap with one state "
         "more; the issue's first case); one seed merged two states, another "
         "split off a 0.6 % dimple, before restarts and the barrier floor",
         in_default_run=False),
    Case("volatility", scalar_chain_sequences, {}, 4, 2500, 2, 2500,
         "1-D returns, 3 regimes of volatility 0.5 / 1 / 2 with mean 0 (as "
         "market regimes), dwell 125 steps; 4 series of 2,500 steps",
         in_default_run=False),
    Case("ion_channel", scalar_chain_sequences,
         dict(means=(0.0, 1.0, 2.0), sds=(0.5, 0.5, 0.5), switch_prob=0.01),
         100, 400, 50, 400,
         "1-D current of a single ion channel: 3 levels 0 / 1 / 2 under noise "
         "of sd 0.5 (frames overlap), dwell 50 steps; 100 x 400 steps",
         in_default_run=False),
    Case("eight_states", make_markov_chain_sequences,
         dict(n_states=8, n_features=6, switch_prob=0.0014), 200, 200, 100, 200,
         "8 states in 6-D, mostly separable frame by frame, dwell 89 steps: "
         "many states for EM to place", in_default_run=False),
    Case("fast", make_markov_chain_sequences,
         dict(n_states=3, n_features=8, mean_scale=0.6, switch_prob=0.05),
         200, 200, 100, 200,
         "3 states switching fast (dwell 10 steps), moderately overlapping 8-D: "
         "visits as short as the hysteresis and the cores",
         in_default_run=False),
    Case("heavy_tails", student_chain_sequences, {}, 200, 200, 100, 200,
         "4 states, 6-D frames with Student-t (3 degrees of freedom) noise: "
         "outliers as a sensor's spikes, moderately overlapping; dwell 50 steps",
         oracle="student", in_default_run=False),
    Case("highdim", make_langevin_sequences,
         dict(n_wells=3, n_features=45, noise=3.0), 4, 5000, 2, 5000,
         "3-well diffusion through a nonlinear 45-D map under heavy noise (sd 3 "
         "per feature), as 45 distances of a molecular simulation; 4 x 5,000 "
         "steps; frames overlap", oracle=None, in_default_run=False),
    Case("motion", make_oscillation_sequences,
         dict(n_states=4, n_features=4), 1, 8000, 1, 8000,
         "4 activities as oscillations of their own tempo (periods 20-80 "
         "steps), amplitude and posture with nearly the same phase pattern, as "
         "4 joint angles of recorded motion; one recording of 8,000 steps, "
         "segments of 800 steps on average",
         oracle=None, in_default_run=False),
    RecordedCase("basic_motions", basic_motions_recording, {}, 1, 4000, 1, 4000,
                 "recorded: a smart watch's 3-D accelerometer and gyroscope at "
                 "10 Hz, 4 students doing 4 activities (standing, walking, "
                 "running, badminton; UEA archive's BasicMotions, files from the "
                 "aeon wheel); one recording = the split's 40 clips of 10 s in a "
                 "random order", oracle=None,
                 extra={"classes": BASIC_MOTIONS_CLASSES, "folder": "BasicMotions"},
                 in_default_run=False),
    RecordedCase("japanese_vowels", japanese_vowels_recording, {}, 1, 4274, 1, 5687,
                 "recorded: 12 LPC cepstrum coefficients of 9 speakers saying "
                 "/ae/ (UCI's JapaneseVowels, files from the aeon wheel); one "
                 "recording = the split's utterances of 7-29 frames in a random "
                 "order, so 9 voices take turns of about 16 frames", oracle=None,
                 extra={"classes": JAPANESE_VOWELS_CLASSES, "folder": "JapaneseVowels"},
                 in_default_run=False),
]}


def matched_occupancy(y_test: list, labels: list, occupancy: np.ndarray,
                      n_true: int) -> tuple:
    """Estimated shares in true state order, and the share left unmatched.

    Estimated state ``j`` is matched to a true state by the Hungarian matching
    of the test labels; returns ``(matched (n_true,), unmatched share)``.
    """
    mapping = label_mapping(y_test, labels)
    matched = np.zeros(n_true)
    unmatched = 0.0
    for j, share in enumerate(np.asarray(occupancy, dtype=float)):
        k = mapping.get(j, -1)
        if k < 0:
            unmatched += share
        else:
            matched[k] += share
    return matched, unmatched


def occupancy_l1(y_test: list, labels: list, occupancy: np.ndarray,
                 true_occupancy: np.ndarray) -> float:
    """l1 between the true shares and the estimated shares matched one to one.

    An estimated state left unmatched (:func:`matched_occupancy`) adds its
    whole share, a true state left unmatched its whole share.
    """
    matched, unmatched = matched_occupancy(y_test, labels, occupancy,
                                           len(true_occupancy))
    return float(unmatched + np.abs(matched - true_occupancy).sum())


def score_labels(y_test: list, labels: list) -> dict:
    """Accuracy (one to one), ARI, NMI and label changes of test labels."""
    flat_true, flat_pred = np.concatenate(y_test), np.concatenate(labels)
    return {"acc": segmentation_accuracy(y_test, labels),
            "ari": adjusted_rand_score(flat_true, flat_pred),
            "nmi": normalized_mutual_info_score(flat_true, flat_pred),
            "changes": n_label_changes(labels), "true_changes": n_label_changes(y_test)}


#: Other ways to label the test set with the same fit (``--also``): parameters.
LABELLINGS = {"paths": {"inference": "paths"},
              "markov": {"inference": "markov"},
              "filter": {"inference": "filter"},
              "w0": {"prior_weight": 0.0},
              "w1": {"prior_weight": 1.0},
              # Hysteresis of the labels (the default is 0.2; 0 is the argmax).
              "margin0": {"switch_margin": 0.0},
              "margin0.1": {"switch_margin": 0.1},
              "margin0.3": {"switch_margin": 0.3},
              "margin0.5": {"switch_margin": 0.5},
              # Steps a new state must lead before a switch (the default "auto"
              # holds 0.2 % of the fit's training_dwell_time_).
              "hold0": {"switch_hold": 0},
              "hold2": {"switch_hold": 2},
              "hold4": {"switch_hold": 4}}


def _degrees_of_freedom(seg) -> str:
    """The fit's learned Student-t degrees of freedom, one per decoded feature, or ""."""
    df = seg.decoder_df_
    if np.isinf(df).all():  # A Gaussian noise.
        return ""
    return " ".join(f"{v:.1f}" for v in df.tolist())


def run_nldseg(train: list, test: list, seed: int, overrides: dict,
               also: tuple = ()) -> dict:
    """Fit nldseg with library defaults (plus ``overrides``) and label ``test``.

    The same fit also labels ``test`` with each labelling of ``also`` (names
    from :data:`LABELLINGS`): ``result["also"][name]`` holds those labels and
    times.
    """
    seg = LangevinSegmenter(random_state=seed, **overrides)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg.fit(train)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = seg.predict(test)
    t_pred = time.perf_counter() - t0
    other = {}
    for name in also:
        variant = copy.copy(seg).set_params(**LABELLINGS[name])
        t0 = time.perf_counter()
        other[name] = {"labels": variant.predict(test), "t_fit": t_fit,
                       "t_predict": time.perf_counter() - t0}
    return {"labels": labels, "t_fit": t_fit, "t_predict": t_pred, "also": other,
            "n_states": seg.n_states_, "n_lags": seg.n_lags_,
            "occupancies": {m: seg.energy_.occupancy(m)
                            for m in ("sampled", "zeroth_order", "second_order")},
            "warnings": sorted({f"{w.category.__name__}: {w.message}"
                                for w in caught
                                if "jit.script" not in str(w.message)}),
            "steps": seg.n_iter_,
            "dwell": seg.training_dwell_time_,
            "depths_refitted": seg.depths_refitted_,
            # The learned degrees of freedom of a Student-t decoder noise, per
            # decoded feature ("" for a Gaussian one).
            "decoder_df": _degrees_of_freedom(seg),
            # Each candidate model's lags and held-out ELBO when they were compared.
            "candidates": " ".join(f"{lag}:{score:.4f}" for lag, score in zip(
                seg.candidate_lags_, seg.candidate_scores_)),
            # The wells of the candidates whose energy was analysed (- for none).
            "candidate_wells": " ".join("-" if np.isnan(w) else str(int(w))
                                        for w in seg.candidate_wells_),
            # Their labels' cross-fitted switching AR(1) scores (- for none),
            # and the lag's gain in it with its standard error (nan: none).
            "candidate_state_scores": " ".join(
                "-" if np.isnan(v) else f"{v:.4f}" for v in seg.candidate_state_scores_),
            "lag_state_gain": "{:.4f} +- {:.4f}".format(*seg.lag_state_gain_),
            "lag_gain": "{:.4f} +- {:.4f}".format(*seg.lag_elbo_gain_)}


def _embedded(seqs: list, n_lags: int) -> list:
    """Each sequence delay-embedded as nldseg's ``n_lags`` does."""
    return [delay_embed(x, np.array([len(x)]), n_lags) for x in seqs]


def run_case(case: Case, seed: int, overrides: dict, with_hmm: bool,
             baseline_lags: int = 0, also: tuple = ()) -> list:
    """Every method on one seed of ``case``; one row per method.

    ``baseline_lags``: the frame-wise baselines and the HMM read each frame
    delay-embedded with that many previous frames (the oracle reads the raw
    frames). ``also``: rows ``nldseg_<name>``, the same nldseg fit labelling
    as :data:`LABELLINGS` ``[name]`` says.
    """
    train, test, y_test, params = case.draw(seed)
    k_true = len(params["stationary_distribution"])
    true_occ = params["stationary_distribution"]
    # The sampling floor: how far the training data's own (true) time shares
    # are from the stationary law; no estimate learnt from them is expected
    # to be much closer.
    y_train = np.concatenate(params["train_labels"])
    floor = np.abs(np.bincount(y_train, minlength=k_true) / len(y_train)
                   - true_occ).sum()
    base = {"case": case.name, "seed": seed, "K_true": k_true, "l1_floor": floor}
    rows = []

    def add(method: str, result: dict, occupancies: dict, n_states: int) -> None:
        row = dict(base, method=method, K=n_states, **score_labels(y_test,
                                                                   result["labels"]))
        for name, occ in occupancies.items():
            row[f"l1_{name}"] = occupancy_l1(y_test, result["labels"], occ, true_occ)
        row["fit_s"] = result.get("t_fit", float("nan"))
        row["pred_s"] = result.get("t_predict", float("nan"))
        rows.append(row)

    nld = run_nldseg(train, test, seed, overrides, also)
    add("nldseg", nld, {f"nld_{k}": v for k, v in nld["occupancies"].items()},
        nld["n_states"])
    rows[-1]["warnings"] = "; ".join(nld["warnings"])
    rows[-1]["steps"] = nld["steps"]
    # Mean steps between state changes of the fit's posterior paths (the
    # default switch_hold is 0.2 % of it).
    rows[-1]["dwell"] = nld["dwell"]
    rows[-1]["depths_refitted"] = nld["depths_refitted"]  # The refit kept after training.
    rows[-1]["decoder_df"] = nld["decoder_df"]
    rows[-1]["n_lags"] = nld["n_lags"]  # The lags kept (n_lags="auto" may add one).
    rows[-1]["candidates"] = nld["candidates"]
    rows[-1]["candidate_wells"] = nld["candidate_wells"]
    rows[-1]["candidate_state_scores"] = nld["candidate_state_scores"]
    rows[-1]["lag_state_gain"] = nld["lag_state_gain"]
    rows[-1]["lag_gain"] = nld["lag_gain"]
    for name, res in nld["also"].items():
        add(f"nldseg_{name}", res,
            {f"nld_{k}": v for k, v in nld["occupancies"].items()}, nld["n_states"])
    train_b, test_b = _embedded(train, baseline_lags), _embedded(test, baseline_lags)
    for name, res in frame_baselines(train_b, test_b, k_true, seed).items():
        add(name, res, {"model": res["occupancy"]}, k_true)
    if with_hmm:
        for name, res in hmm_baseline(train_b, test_b, k_true, seed).items():
            add(name, res, {"model": res["occupancy"]}, k_true)
    if case.oracle is not None:
        t0 = time.perf_counter()
        res = {"labels": oracle_labels(test, params, case.oracle)}
        res["t_predict"] = time.perf_counter() - t0
        add("oracle_filter", res, {"model": true_occ}, k_true)
    return rows


def summarise(rows: list) -> list:
    """Mean and worst over seeds per case and method."""
    out = []
    keys = sorted({(r["case"], r["method"]) for r in rows},
                  key=lambda cm: (list(CASES).index(cm[0]), _method_order(cm[1])))
    for case, method in keys:
        rs = [r for r in rows if r["case"] == case and r["method"] == method]
        acc = np.array([r["acc"] for r in rs])
        l1_key = "l1_nld_sampled" if method.startswith("nldseg") else "l1_model"
        l1 = np.array([r.get(l1_key, np.nan) for r in rs])
        ratio = np.array([r["changes"] / max(r["true_changes"], 1) for r in rs])
        out.append({
            "case": case, "method": method, "seeds": len(rs),
            "acc_mean": acc.mean(), "acc_worst": acc.min(),
            "ari_mean": np.mean([r["ari"] for r in rs]),
            "nmi_mean": np.mean([r["nmi"] for r in rs]),
            "K": "/".join(str(r["K"]) for r in rs), "K_true": rs[0]["K_true"],
            "l1_mean": np.nanmean(l1) if np.isfinite(l1).any() else np.nan,
            "l1_worst": np.nanmax(l1) if np.isfinite(l1).any() else np.nan,
            "l1_floor": np.mean([r.get("l1_floor", np.nan) for r in rs]),
            "changes_mean": np.mean([r["changes"] for r in rs]),
            "true_changes_mean": np.mean([r["true_changes"] for r in rs]),
            "change_ratio_worst": ratio.max(),
            "fit_s": np.mean([r["fit_s"] for r in rs]),
            "pred_s": np.mean([r["pred_s"] for r in rs]),
        })
    return out


_METHODS = ["nldseg", "kmeans", "gmm", "hmm_filter", "hmm_viterbi", "oracle_filter"]


def _method_order(method: str) -> tuple:
    """Table order: nldseg, its other labellings of the same fit, then the baselines."""
    if method.startswith("nldseg_"):
        return (0, method)
    return (_METHODS.index(method), "")


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) \
        else format(v, spec)


def print_table(summary: list) -> None:
    """The summary as a Markdown table."""
    print("| case | method | acc mean | acc worst | ARI | NMI | K found (per seed) / true "
          "| occupancy l1 mean | l1 worst | l1 floor | label changes / true | fit s "
          "| predict s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['case']} | {s['method']} | {_fmt(s['acc_mean'], '.3f')} | "
              f"{_fmt(s['acc_worst'], '.3f')} | {_fmt(s['ari_mean'], '.3f')} | "
              f"{_fmt(s['nmi_mean'], '.3f')} | {s['K']} / {s['K_true']} | "
              f"{_fmt(s['l1_mean'], '.3f')} | {_fmt(s['l1_worst'], '.3f')} | "
              f"{_fmt(s['l1_floor'], '.3f')} | "
              f"{s['changes_mean']:.0f} / {s['true_changes_mean']:.0f} | "
              f"{_fmt(s['fit_s'], '.1f')} | {_fmt(s['pred_s'], '.2f')} |")


def machine() -> str:
    """CPU model, cores, threads and versions."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def commit() -> str:
    """The checkout's commit (with ``+dirty`` for uncommitted changes)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                                      text=True, stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD", "--", "nldseg"],
                                cwd=here, stderr=subprocess.DEVNULL)
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_csv(rows: list, path: str) -> None:
    """``rows`` as CSV, one column per key of any row (case, method, seed first)."""
    fields = sorted({k for r in rows for k in r}, key=lambda k: (
        ["case", "method", "seed"].index(k) if k in ("case", "method", "seed") else 3, k))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _run_task(case_name: str, seed: int, overrides: dict, with_hmm: bool,
              threads: int, baseline_lags: int, also: tuple = ()) -> tuple:
    """One (case, seed) in a worker process: its rows and wall time."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    rows = run_case(CASES[case_name], seed, overrides, with_hmm, baseline_lags, also)
    return rows, time.perf_counter() - t0


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+",
                   default=[name for name, c in CASES.items() if c.in_default_run],
                   choices=list(CASES),
                   help="default: every case except those run only when named: "
                        + ", ".join(n for n, c in CASES.items() if not c.in_default_run))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--nldseg", default="{}",
                   help="JSON dict of LangevinSegmenter parameters (default: none, "
                        "library defaults)")
    p.add_argument("--no-hmm", action="store_true", help="skip hmmlearn's HMM")
    p.add_argument("--baseline-lags", type=int, default=0,
                   help="the baselines read each frame with this many previous "
                        "frames (as nldseg's n_lags), instead of single frames")
    p.add_argument("--jobs", type=int, default=2,
                   help="(case, seed) runs side by side in worker processes, each "
                        "with --threads torch threads (default 2 jobs x 1 thread: "
                        "the per-step loops gain little from a second thread)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of each worker; nldseg itself runs on its "
                        "n_threads (1 unless --nldseg sets it, e.g. -1 for these)")
    p.add_argument("--also", nargs="*", default=[], choices=list(LABELLINGS),
                   help="also label the test set of each nldseg fit these ways "
                        "(rows nldseg_<name>; the same fit): "
                        + "; ".join(f"{k}: {v}" for k, v in LABELLINGS.items()))
    p.add_argument("--out", default="suite_results",
                   help="path stem of the CSV and JSON files written")
    a = p.parse_args(argv)
    overrides = json.loads(a.nldseg)
    with_hmm = not a.no_hmm
    if with_hmm:
        try:
            import hmmlearn  # noqa: F401
        except ImportError:
            sys.exit("hmmlearn is needed for the HMM baseline: pip install hmmlearn "
                     "(or pass --no-hmm)")
    for name in a.cases:
        if isinstance(CASES[name], RecordedCase):
            try:
                data_dir(CASES[name].extra["folder"])
            except RuntimeError as exc:
                sys.exit(str(exc))
    print(f"# machine: {machine()}; commit {commit()}")
    print("# nldseg parameters: library defaults"
          + (f" with {overrides}" if overrides else ""))
    if a.baseline_lags:
        print(f"# baselines (KMeans, GMM, HMM) read each frame with its "
              f"{a.baseline_lags} previous frame(s) (delay embedding)")
    for name in a.cases:
        c = CASES[name]
        print(f"# {name}: {c.note}; train {c.n_train} x {c.train_length}, "
              f"test {c.n_test} x {c.test_length}")
    print(f"# {a.jobs} job(s) side by side, {a.threads} torch thread(s) each; fit and "
          f"predict times are wall-clock seconds under that load")
    t_start = time.perf_counter()
    tasks = [(name, seed) for name in a.cases for seed in a.seeds]
    results = Parallel(n_jobs=a.jobs, return_as="generator")(
        delayed(_run_task)(name, seed, overrides, with_hmm, a.threads,
                           a.baseline_lags, tuple(a.also))
        for name, seed in tasks)
    rows = []
    partial = a.out + ".partial.csv"
    for (name, seed), (new, took) in zip(tasks, results):
        rows.extend(new)
        # The rows so far, so that a run stopped early keeps what it measured.
        write_csv(rows, partial)
        nld = new[0]
        print(f"# done {name} seed {seed} in {took:.0f} s: nldseg {nld['K']} states, "
              f"acc {nld['acc']:.3f}, {nld['changes']} label changes, {nld['steps']} "
              f"steps, training dwell {nld['dwell']:.1f}, depths refitted "
              f"{nld['depths_refitted']}"
              + (f", decoder df {nld['decoder_df']}" if nld["decoder_df"] else "")
              + (f"; warnings: {nld['warnings']}" if nld.get("warnings") else ""),
              flush=True)
    summary = summarise(rows)
    print()
    print_table(summary)
    print(f"\n# total {time.perf_counter() - t_start:.0f} s")
    write_csv(rows, a.out + ".csv")
    if os.path.exists(partial):
        os.remove(partial)
    with open(a.out + ".json", "w") as fh:
        json.dump({"machine": machine(), "commit": commit(), "nldseg": overrides,
                   "baseline_lags": a.baseline_lags,
                   "seeds": a.seeds, "rows": rows, "summary": summary}, fh, indent=1,
                  default=float)
    print(f"# wrote {a.out}.csv and {a.out}.json")


if __name__ == "__main__":
    main()
