"""
What the landscape tells: wells, paths, kinetics and segmentation as pictures
=============================================================================

Fits the paper's three-state chain, then draws what the learned energy says:
the energy on the plane through its minima with the minimum energy paths and
saddles, the energy along each path, the kinetic network of the learned prior
(occupancies and transition probabilities), its dwell-time distributions
beside those of the labelled test data, and one test sequence's online
labels against the truth with the observations beneath.

Run ``python examples/landscape_kinetics.py`` (about 4 minutes on 2 CPU
cores); the PNGs are written to ``examples/output/``.
"""

# %%
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nldseg import LangevinSegmenter  # noqa: E402
from nldseg.datasets import make_markov_chain_sequences  # noqa: E402
from nldseg.metrics import match_labels, segmentation_accuracy  # noqa: E402
from nldseg.plotting import (  # noqa: E402
    plot_dwell_times,
    plot_energy_landscape,
    plot_energy_profiles,
    plot_kinetic_network,
    plot_segmentation,
)

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--max-iter", type=int, default=800)
parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

# %%
# Data and fit.
X_train, _ = make_markov_chain_sequences(150, 200, n_states=3, n_features=15,
                                         switch_prob=0.025, random_state=1000,
                                         emission_random_state=0)
X_test, y_test = make_markov_chain_sequences(20, 500, n_states=3, n_features=15,
                                             switch_prob=0.025, random_state=2000,
                                             emission_random_state=0)
# A short budget: the KL term warms up over its first quarter (the default
# 1,000-step warm-up is for the default 3,000-step budget).
seg = LangevinSegmenter(max_iter=args.max_iter, kl_warmup=args.max_iter // 4,
                        random_state=0).fit(X_train)
labels = seg.predict(X_test)  # In the model's state order.
y_pred = match_labels(y_test, labels)  # In the true order.
print(f"{seg.n_states_} states found; online accuracy "
      f"{segmentation_accuracy(y_test, y_pred):.4f}")


def save(ax, name):
    ax.figure.tight_layout()
    ax.figure.savefig(args.out / name, dpi=110)
    plt.close(ax.figure)
    print(f"wrote {args.out / name}")


# %%
# The energy on the plane through the minima, with the paths and saddles.
save(plot_energy_landscape(seg, X_test[:5], paths=True), "landscape_paths.png")
save(plot_energy_profiles(seg), "energy_profiles.png")

# %%
# Kinetics of the learned prior.
save(plot_kinetic_network(seg, random_state=0), "kinetic_network.png")
_, ax = plt.subplots(figsize=(6, 4.5))
# The data's visits in the model's state order, as the prior's are.
save(plot_dwell_times(seg, labels, ax=ax, random_state=0), "dwell_times.png")
# The prior as trained switches too slowly; its clock is calibrated after
# fitting to the switching of the posterior paths (prior_time_scale_).
dwell = seg.mean_dwell_times(random_state=0)
trained = seg.mean_dwell_times(clock="model", random_state=0)
stacked, states = np.stack(labels), np.arange(seg.n_states_)[:, None, None]
observed = (stacked == states).sum((1, 2)) / (
    (stacked[:, :-1] == states) & (stacked[:, 1:] != states)).sum((1, 2))
print(f"prior clock: {seg.prior_time_scale_:.2f}x the trained one; mean dwell "
      f"times {np.round(dwell, 1)} (as trained {np.round(trained, 1)}; "
      f"predicted labels of the test data {np.round(observed, 1)}; true 20 each)")
# The same states' chain re-estimated on the training data (Baum-Welch with the
# model's emissions held): the data's own switching, read through the states.
estimated = seg.estimate_transition_matrix(X_train)
print(f"mean dwell times estimated on the training data "
      f"{np.round(1 / (1 - np.diag(estimated)), 1)}")
# How long from one state until another is first reached (true: 40 steps for
# every pair), and the relaxation times of the chain (true: about 12.8 steps).
print("mean first-passage times (row: from, column: to):\n"
      f"{np.round(seg.mean_first_passage_times(random_state=0), 1)}")
print(f"implied time scales {np.round(seg.implied_timescales(random_state=0), 1)}")

# %%
# One test sequence: labels against the truth, observations beneath.
top, bottom = plot_segmentation(y_pred[0], y_test[0], X_test[0], title="Test sequence 0")
save(bottom, "segmentation.png")
