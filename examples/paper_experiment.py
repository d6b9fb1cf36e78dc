"""
Reproducing the Neural Langevin Dynamics paper's three-state experiment
=========================================================================

A random walk on three states switches to each other state with probability
0.025 per step and emits a 15-D Gaussian vector whose mean and covariance depend
on the state. We train on sequences of length 200 without labels, then segment
500 test sequences of length 500 online (2.5x longer than seen in training),
find the wells of the learned energy, and compare the time spent in each well
with the truth (1/3 each).

Run ``python examples/paper_experiment.py`` (add ``--dynamics underdamped`` or
``--quick``); figures are written to ``examples/output/``.
"""

# %%
import argparse
import time
from pathlib import Path

import numpy as np

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import match_labels, segmentation_accuracy

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--dynamics", choices=["overdamped", "underdamped"],
                    default="overdamped")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--n-train", type=int, default=500,
                    help="training sequences of length 200 (default: 500)")
parser.add_argument("--quick", action="store_true",
                    help="smaller run (150 training, 100 test sequences, a budget of "
                         "400 gradient steps instead of the default 3000, with a "
                         "KL warm-up of 200)")
parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
args, _ = parser.parse_known_args()
n_train = 150 if args.quick else args.n_train
n_test = 100 if args.quick else 500

# %%
# Data: train and test share the emission parameters (``emission_random_state``)
# but not the sequences.
X_train, y_train = make_markov_chain_sequences(
    n_train, 200, n_states=3, n_features=15, switch_prob=0.025,
    random_state=1000 + args.seed, emission_random_state=args.seed)
X_test, y_test = make_markov_chain_sequences(
    n_test, 500, n_states=3, n_features=15, switch_prob=0.025,
    random_state=2000 + args.seed, emission_random_state=args.seed)
print(f"train {X_train.shape}, test {X_test.shape}")

# %%
# Fit with the library's defaults (``--quick``: a smaller budget): the number of
# states is not given.
# A 400-step budget warms the KL term up over its first 200 steps (the
# default 1,000-step warm-up would outlast it, and fit would warn).
budget = {"max_iter": 400, "kl_warmup": 200} if args.quick else {}
t0 = time.perf_counter()
seg = LangevinSegmenter(dynamics=args.dynamics, random_state=args.seed, **budget)
seg.fit(X_train)
t_fit = time.perf_counter() - t0
print(f"fit: {t_fit:.0f} s, {seg.n_iter_} gradient steps, converged={seg.converged_}")

# %%
# Online segmentation of the long test sequences, Hungarian-matched to the truth.
t0 = time.perf_counter()
y_pred = seg.predict(X_test)
t_pred = time.perf_counter() - t0
per_seq = segmentation_accuracy(y_test, y_pred, per_sequence=True)
pooled = segmentation_accuracy(y_test, y_pred)
print(f"predict: {t_pred:.1f} s for {y_test.size} steps")
print(f"online accuracy: {per_seq.mean():.4f} +- {per_seq.std():.4f} over "
      f"{len(per_seq)} sequences (pooled {pooled:.4f})")

# %%
# The wells found, and the stationary time spent in each.
land = seg.energy_
print(f"wells found: {seg.n_states_}")
for k in range(seg.n_states_):
    print(f"  state {k}: minimum {np.round(land.minima[k], 2)}, "
          f"E = {land.minima_energies[k]:.3f}")
truth = np.full(3, 1 / 3)
for method in ("sampled", "zeroth_order", "second_order"):
    occ = land.occupancy(method)
    err = np.abs(np.sort(occ) - truth[: len(occ)]).sum() if len(occ) == 3 else np.nan
    print(f"  occupancy ({method:12s}): {np.round(occ, 3)}  l1 to 1/3: {err:.3f}")

# %%
# Figures: the energy on the plane through the minima (paper Fig. 2f) and the
# predicted vs true labels of the first test sequence (paper Fig. 3).
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nldseg.plotting import plot_energy_landscape, plot_segmentation
except ImportError:
    print("matplotlib is not installed; skipping figures")
else:
    args.out.mkdir(parents=True, exist_ok=True)
    ax = plot_energy_landscape(seg, X_train[:20])
    ax.figure.savefig(args.out / f"energy_{args.dynamics}.png", dpi=120)
    matched = match_labels(y_test[0], y_pred[0])
    fig, ax = plt.subplots(figsize=(10, 3))
    plot_segmentation(matched, y_test[0], ax=ax,
                      title=f"Test sequence 0 ({args.dynamics}), accuracy "
                            f"{np.mean(matched == y_test[0]):.3f}")
    fig.tight_layout()
    fig.savefig(args.out / f"segmentation_{args.dynamics}.png", dpi=120)
    print(f"figures written to {args.out}/")
