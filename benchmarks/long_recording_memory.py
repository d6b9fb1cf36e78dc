"""Memory and time of ``predict``, ``score`` or ``fit`` on one long sequence.

One sequence of ``--steps`` observations with 45 features (standard normal) is
labelled (``predict``) or scored (``score``) by a model of the default
architecture, fitted here for 20 gradient steps (the cost of inference does
not depend on training). Printed: the wall time of the call and the growth
of the peak resident memory (``ru_maxrss``) during it. Run each call in a
fresh process, so that the peak is the call's own::

    python benchmarks/long_recording_memory.py --call predict --steps 200000
    python benchmarks/long_recording_memory.py --call score --steps 200000

``--inference paths`` labels by unweighted posterior paths instead of the
particle filter. ``--call fit`` instead fits a model with library defaults on
one recording of ``--steps`` observations of a 3-state Markov chain with 45-D
overlapping Gaussian emissions (``make_markov_chain_sequences``,
``mean_scale=0.5``, ``switch_prob=0.002``), and prints the fit time, the
memory it added, the states found and the training accuracy of ``predict``
(one-to-one)::

    python benchmarks/long_recording_memory.py --call fit --steps 1000000

``--emissions long`` fits instead on the suite's ``long`` emissions (3 states
in 6-D, ``mean_scale=0.4``, ``switch_prob=0.005``: overlapping frame by
frame, as ``benchmarks/suite.py --cases long`` draws them for ``--seed``),
and also prints the online accuracy and label changes on a test recording
of 20,000 steps with the same emissions, and the suite's baselines' online
accuracies on it (``benchmarks/_baselines.py``: KMeans and a Gaussian
mixture on single frames, hmmlearn's HMM with the true K read by the
forward filter, fitted on the same recording)::

    python benchmarks/long_recording_memory.py --call fit --steps 50000 \
        --emissions long --seed 0
"""

import argparse
import dataclasses
import os
import resource
import sys
import time
import warnings

import numpy as np
import torch

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import n_label_changes, segmentation_accuracy


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--call", choices=["predict", "score", "fit"], default="predict")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--inference", choices=["filter", "paths"], default=None,
                   help="the model's inference for predict (default: the library's; "
                        "paths labels by unweighted posterior paths)")
    p.add_argument("--emissions", choices=["separable", "long"], default="separable",
                   help="with --call fit: 45-D separable frames, or the suite's long "
                        "case's overlapping 6-D ones")
    p.add_argument("--seed", type=int, default=0, help="with --emissions long")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.call == "fit":
        _fit_long(args.steps, args.emissions, args.seed)
        return
    X, _ = make_markov_chain_sequences(40, 100, n_features=45, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(max_iter=20, kl_warmup=20, random_state=0).fit(X)
    if args.inference is not None:
        seg.set_params(inference=args.inference)
    long = np.random.default_rng(0).normal(size=(args.steps, 45))
    before = _peak_mb()
    start = time.perf_counter()
    out = getattr(seg, args.call)(long)
    elapsed = time.perf_counter() - start
    shown = f"{out:.8f}" if args.call == "score" else f"{len(out)} labels"
    print(f"{args.call} (inference={seg.inference!r}), 1 sequence x "
          f"{args.steps} steps x 45 features: {elapsed:.1f} s, "
          f"peak memory +{_peak_mb() - before:.0f} MB (before the call "
          f"{before:.0f} MB); {shown}")


def _fit_long(steps: int, emissions: str, seed: int) -> None:
    if emissions == "long":  # The suite's long case, drawn as one recording.
        case = dataclasses.replace(_suite().CASES["long"], n_train=1, train_length=steps,
                                   n_test=1, test_length=20_000)
        X, X_test, y_test, params = case.draw(seed)
        y = params["train_labels"]
    else:
        X, y = make_markov_chain_sequences(1, steps, n_states=3, n_features=45,
                                           mean_scale=0.5, switch_prob=0.002,
                                           random_state=0)
    before = _peak_mb()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = LangevinSegmenter(random_state=seed).fit(X)
    elapsed = time.perf_counter() - start
    added = _peak_mb() - before
    acc = segmentation_accuracy(y, seg.predict(X))
    print(f"fit (library defaults), 1 sequence x {steps} steps x {np.shape(X[0])[-1]} "
          f"features ({emissions}): {elapsed:.1f} s, peak memory +{added:.0f} MB "
          f"(before the call {before:.0f} MB); {seg.n_iter_} gradient steps, "
          f"{seg.n_states_} states (true 3), n_lags_ {seg.n_lags_}, "
          f"training accuracy {acc:.3f}")
    if emissions == "long":
        labels = seg.predict(X_test)
        print(f"test recording of 20000 steps: online accuracy "
              f"{segmentation_accuracy(y_test, labels):.4f}, label changes "
              f"{n_label_changes(labels)} / true {n_label_changes(y_test)}")
        suite = _suite()
        baselines = {**suite.frame_baselines(X, X_test, 3, seed),
                     **suite.hmm_baseline(X, X_test, 3, seed)}
        print("baselines' online accuracy on it: " + ", ".join(
            f"{name} {segmentation_accuracy(y_test, out['labels']):.4f}"
            for name, out in baselines.items() if name != "hmm_viterbi"))
    for w in {f"{w.category.__name__}: {w.message}" for w in caught}:
        print("warning:", w)


def _suite():
    """``benchmarks/suite.py``, imported from beside this script."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import suite

    return suite


if __name__ == "__main__":
    main()
