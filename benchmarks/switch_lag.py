"""Where the online labels err: by steps since the last true switch.

On one case of the suite (``benchmarks/suite.py``: same data for a seed) this
fits the library defaults (or loads a saved fit), labels the test set and
prints the error rate of the labels at 0, 1, 2, ... steps after a true
switch, beside a reference's: the oracle filter's (the forward filter with the
generating parameters) where the suite knows it, else hmmlearn's
``GaussianHMM`` forward filter fitted on the training set as the suite does
(true K, best of 3 restarts). A method that is as good as the reference away
from switches but worse just after them *lags*.

It then asks whether the evidence was in the encoder: a logistic regression
is trained *with the true labels* on the GRU's hidden state ``h_t`` of half of
the test sequences and read on the other half (a supervised upper bound of
what a linear read of the encoder gives), and, for comparison, on
exponential moving averages of the frames alone and of the frames with their
pairwise products (what a filter for states differing in covariance reads)::

    python benchmarks/switch_lag.py --case overlap --seed 0
    python benchmarks/switch_lag.py --case overlap --seed 0 --load model.nldseg
    python benchmarks/switch_lag.py --case overlap --nldseg '{"encoder_input": "linear"}'
    python benchmarks/switch_lag.py --case highdim --max-since 32   # HMM reference

The probe on pairwise products is skipped above 16 features (its logistic
regression would read thousands of columns).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _baselines import hmm_baseline, oracle_labels  # noqa: E402
from suite import CASES  # noqa: E402

from nldseg import LangevinSegmenter  # noqa: E402
from nldseg.metrics import match_labels, segmentation_accuracy  # noqa: E402

MAX_SINCE = 10  # Steps since a switch are pooled from here on (--max-since).
MAX_PRODUCT_FEATURES = 16  # No probe on pairwise products above this.
EMA_DECAYS = (0.0, 0.5, 0.75, 0.9)


def steps_since_switch(y: np.ndarray, max_since: int = MAX_SINCE) -> np.ndarray:
    """Steps since the last true switch at every step, capped at ``max_since``."""
    since, count = np.empty(len(y), int), max_since
    for t in range(len(y)):
        count = 0 if t and y[t] != y[t - 1] else count + 1
        since[t] = min(count, max_since)
    return since


def errors_by_since(y_true: list, y_pred: list, matched: bool = True,
                    max_since: int = MAX_SINCE) -> np.ndarray:
    """Error rate at 0..max_since steps since a switch (labels matched one to one)."""
    if matched:
        y_pred = match_labels(y_true, y_pred)
    wrong, total = np.zeros(max_since + 1), np.zeros(max_since + 1)
    for y, lab in zip(y_true, y_pred):
        since = steps_since_switch(y, max_since)
        np.add.at(wrong, since, lab != y)
        np.add.at(total, since, 1)
    return wrong / np.maximum(total, 1)


def _row(name: str, acc: float, rates: np.ndarray) -> str:
    cells = " ".join(f"{r:.3f}" for r in rates)
    return f"{name:<34} {acc:.4f}  {cells}"


def _moving_averages(features: np.ndarray) -> np.ndarray:
    """Exponential moving averages (B, T, F) -> (B, T, F * len(EMA_DECAYS))."""
    out = []
    for a in EMA_DECAYS:
        avg, acc = np.empty_like(features), features[:, 0]
        for t in range(features.shape[1]):
            acc = a * acc + (1 - a) * features[:, t] if t else features[:, 0]
            avg[:, t] = acc
        out.append(avg)
    return np.concatenate(out, -1)


def probe(features: np.ndarray, Y: np.ndarray, max_since: int = MAX_SINCE) -> tuple:
    """Logistic regression trained on the first half of the sequences, read on the rest."""
    half, n_feat = len(Y) // 2, features.shape[-1]
    train, rest = features[:half].reshape(-1, n_feat), features[half:].reshape(-1, n_feat)
    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(max_iter=3000).fit(scaler.transform(train), Y[:half].ravel())
    pred = clf.predict(scaler.transform(rest))
    pred = pred.reshape(len(Y) - half, Y.shape[1])
    return (pred == Y[half:]).mean(), errors_by_since(list(Y[half:]), list(pred), False,
                                                      max_since)


def encoder_states(seg: LangevinSegmenter, X: np.ndarray) -> np.ndarray:
    """The fitted GRU's hidden state at every step (B, T, hidden), as in ``predict``."""
    rows = seg._model_frames(X.reshape(-1, X.shape[-1]), np.full(len(X), X.shape[1]),
                             seg.scaler_mean_, seg.scaler_scale_)
    x = torch.as_tensor(rows).reshape(X.shape[0], X.shape[1], -1)
    module, h, out = seg.module_, None, []
    with torch.no_grad():
        for t in range(x.shape[1]):
            h = module.gru_step(x[:, t], h)
            out.append(h.numpy())
    return np.stack(out, 1)


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="overlap", choices=list(CASES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--load", help="a saved fit (LangevinSegmenter.save) instead of fitting")
    p.add_argument("--save", help="save the fit here")
    p.add_argument("--nldseg", default="{}", help="JSON of parameters over the defaults")
    p.add_argument("--max-since", type=int, default=MAX_SINCE,
                   help="steps since a switch are pooled from here on")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    case = CASES[args.case]
    train, test, y_test, params = case.draw(args.seed)
    n_since = args.max_since
    if args.load:
        seg = LangevinSegmenter.load(args.load)
    else:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = LangevinSegmenter(random_state=args.seed,
                                    **json.loads(args.nldseg)).fit(train)
        print(f"fit {time.perf_counter() - t0:.0f} s, {seg.n_iter_} steps")
        if args.save:
            seg.save(args.save)
    labels = list(seg.predict(test))
    if case.oracle is not None:
        reference = ("oracle filter", oracle_labels(test, params, case.oracle))
    else:
        k_true = len(params["stationary_distribution"])
        reference = ("HMM filter (hmmlearn)", hmm_baseline(
            train, test, k_true, args.seed)["hmm_filter"]["labels"])
    X, Y = np.stack(test), np.stack(y_test)
    print(f"case {args.case}, seed {args.seed}, encoder_input={seg.encoder_input!r}, "
          f"{seg.n_states_} states (true {len(np.unique(Y))})")
    print(f"{'error rate at steps since switch:':<34} {'acc':<6}  "
          + " ".join(f"{k:>5}" for k in range(n_since)) + f" >={n_since}")
    for name, lab in (("nldseg (online)", labels), reference):
        print(_row(name, segmentation_accuracy(y_test, lab),
                   errors_by_since(y_test, lab, max_since=n_since)))
    print("supervised probes (train on half the test sequences, read the rest):")
    probes = [("GRU state h_t", encoder_states(seg, X)),
              ("moving averages of frames", _moving_averages(X))]
    if X.shape[-1] <= MAX_PRODUCT_FEATURES:
        iu = np.triu_indices(X.shape[-1])
        products = (X[..., :, None] * X[..., None, :])[..., iu[0], iu[1]]
        probes.append(("... of frames and products",
                       _moving_averages(np.concatenate([X, products], -1))))
    for name, feats in probes:
        print(_row(name, *probe(feats, Y, n_since)))


if __name__ == "__main__":
    main()
