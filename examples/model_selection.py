"""
Choosing the temperature and friction by cross-validation
==========================================================

The inverse temperature ``beta`` and the friction ``gamma`` of the Langevin
prior are ordinary hyperparameters of :class:`~nldseg.LangevinSegmenter`, so
they can be chosen with scikit-learn's model selection tools. Here a pipeline
of :class:`~nldseg.preprocessing.SequenceStandardScaler` and the segmenter is
grid-searched over ``beta`` x ``gamma`` with :class:`~sklearn.model_selection.GridSearchCV`.

Two scores are recorded for every grid point:

- ``elbo``: the segmenter's own, unsupervised score, the held-out evidence lower
  bound per time step (:meth:`LangevinSegmenter.score`). It needs no labels and
  is the one used to pick the model (``refit="elbo"``).
- ``accuracy``: the Hungarian-matched segmentation accuracy against the true
  states (:data:`nldseg.metrics.segmentation_scorer`), available here only
  because the data are synthetic.

Cross-validation splits whole sequences: ``X`` is a list of sequences (a 3-D
array works the same way), so each fold holds out complete sequences. A 2-D
array of sequences stacked with ``lengths`` cannot be split without cutting
sequences; turn it into a list first with ``np.split(X, np.cumsum(lengths)[:-1])``.

.. note::

   Grid-search ``beta`` and ``gamma`` with the default
   ``learn_langevin_params=False``, where they stay fixed during training.
   With ``learn_langevin_params=True`` they are trained along with the networks
   and the grid value is only their starting value (the fitted values are in
   ``beta_`` and ``gamma_``), so the search would compare initialisations, not
   models.

Run ``python examples/model_selection.py`` (add ``--quick`` for a run of about a
minute on a CPU); the score table is printed and the score surface is written to
``examples/output/model_selection_scores.png``.
"""

# %%
import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import segmentation_accuracy, segmentation_scorer
from nldseg.preprocessing import SequenceStandardScaler

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--quick", action="store_true",
                    help="small data, small model and a 2 x 2 grid (a minute or two)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--n-jobs", type=int, default=1,
                    help="parallel fits of the grid search (default: 1)")
parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
args, _ = parser.parse_known_args()
t_start = time.perf_counter()

# %%
# Data: three states, switching with probability 0.025 per step. Train and test
# share the emission parameters but not the sequences.
n_train, n_test, n_steps = (60, 20, 100) if args.quick else (100, 50, 100)
n_features = 8 if args.quick else 10
X_train, y_train = make_markov_chain_sequences(
    n_train, n_steps, n_states=3, n_features=n_features, switch_prob=0.025,
    random_state=1000 + args.seed, emission_random_state=args.seed)
X_test, y_test = make_markov_chain_sequences(
    n_test, 2 * n_steps, n_states=3, n_features=n_features, switch_prob=0.025,
    random_state=2000 + args.seed, emission_random_state=args.seed)
# A list of sequences, as real recordings of different lengths would come.
X_train, y_train = list(X_train), list(y_train)
print(f"train: {len(X_train)} sequences of {n_steps} steps, {n_features} features")

# %%
# The pipeline and the grid. Parameters of a pipeline step are addressed as
# ``<step name>__<parameter>``.
if args.quick:
    model = dict(hidden_size=16, context_size=8, window_length=40, batch_size=16,
                 max_iter=80, learning_rate_init=1e-2, kl_warmup=40, n_paths=4)
    grid = {"langevinsegmenter__beta": [0.5, 2.0],
            "langevinsegmenter__gamma": [0.5, 2.0]}
else:
    model = dict(hidden_size=32, context_size=16, window_length=40, batch_size=32,
                 max_iter=150, learning_rate_init=1e-2, kl_warmup=60, n_paths=8)
    grid = {"langevinsegmenter__beta": [0.25, 0.5, 1.0, 2.0, 4.0],
            "langevinsegmenter__gamma": [0.5, 1.0, 2.0]}
pipe = make_pipeline(SequenceStandardScaler(),
                     LangevinSegmenter(**model, random_state=args.seed))


def elbo(estimator, X, y=None):
    """The estimator's own unsupervised score: held-out ELBO per time step."""
    return estimator.score(X)


search = GridSearchCV(pipe, grid, cv=2, n_jobs=args.n_jobs, refit="elbo",
                      scoring={"elbo": elbo, "accuracy": segmentation_scorer})

# %%
# Search. Short runs stop before converging; that is expected here. In the
# quick run, a model trained on half of the sequences may find fewer than the
# three wells, which shows as an accuracy near the largest state's share. The
# ELBO scores the fitted density of the data, not the labels, so with so little
# training the two scores need not rank the grid alike.
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    search.fit(X_train, y_train)
n_fits = len(search.cv_results_["params"]) * search.n_splits_ + 1
print(f"grid search: {n_fits} fits in {time.perf_counter() - t0:.0f} s")

# %%
# The score table, best first by held-out ELBO.
res = search.cv_results_
betas = grid["langevinsegmenter__beta"]
gammas = grid["langevinsegmenter__gamma"]
print(f"\n{'beta':>6} {'gamma':>6} {'ELBO/step':>16} {'accuracy':>16} {'rank':>5}")
for i in np.argsort(res["rank_test_elbo"], kind="stable"):
    p = res["params"][i]
    print(f"{p['langevinsegmenter__beta']:>6g} {p['langevinsegmenter__gamma']:>6g} "
          f"{res['mean_test_elbo'][i]:>9.3f} +- {res['std_test_elbo'][i]:.3f} "
          f"{res['mean_test_accuracy'][i]:>9.3f} +- {res['std_test_accuracy'][i]:.3f} "
          f"{res['rank_test_elbo'][i]:>5d}")
best = {k.split("__")[1]: v for k, v in search.best_params_.items()}
print(f"\nbest parameters (by held-out ELBO): {best}")

# %%
# The refitted best pipeline on the longer test sequences.
y_pred = search.predict(X_test)
seg = search.best_estimator_[-1]
print(f"best model: {seg.n_states_} states, test accuracy "
      f"{segmentation_accuracy(y_test, y_pred):.3f}, test ELBO/step "
      f"{search.best_estimator_.score(X_test):.3f}")

# %%
# The score surface: mean held-out score over the beta x gamma grid.
def surface(key):
    """Mean test score of every grid point as a (n_gamma, n_beta) array."""
    out = np.full((len(gammas), len(betas)), np.nan)
    for p, s in zip(res["params"], res[f"mean_test_{key}"]):
        out[gammas.index(p["langevinsegmenter__gamma"]),
            betas.index(p["langevinsegmenter__beta"])] = s
    return out


try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed; skipping the figure")
else:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in zip(axes, ["elbo", "accuracy"],
                              ["held-out ELBO per step", "held-out matched accuracy"]):
        values = surface(key)
        im = ax.imshow(values, origin="lower", cmap="viridis", aspect="auto")
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=8,
                    color="k" if im.norm(v) > 0.5 else "w")
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(gammas)), [f"{g:g}" for g in gammas])
        ax.set_xlabel(r"inverse temperature $\beta$")
        ax.set_ylabel(r"friction $\gamma$")
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "model_selection_scores.png"
    fig.savefig(path, dpi=120)
    print(f"score surface written to {path}")
print(f"total wall time: {time.perf_counter() - t_start:.0f} s")
