"""Baselines for the benchmark suite, run on the same splits as nldseg.

- ``KMeans`` and ``GaussianMixture`` (full covariance, true K) on single frames:
  what a user gets without modelling time;
- hmmlearn's ``GaussianHMM`` (full covariance, true K, best of several
  restarts by training log-likelihood), labelled online by its forward filter
  (``argmax p(s_t | x_0..x_t)``, comparable to ``LangevinSegmenter.predict``)
  and offline by Viterbi;
- the oracle forward filter with the generating parameters, where they are
  known: the best any online labeller can do on average.

hmmlearn is a benchmark extra (``pip install hmmlearn``), not a dependency
of nldseg.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture


def gaussian_log_densities(frames: np.ndarray, means: np.ndarray,
                           covariances: np.ndarray) -> np.ndarray:
    """``log N(x_t; mu_k, Sigma_k)`` for every frame and state, (T, K)."""
    out = np.empty((len(frames), len(means)))
    d = frames.shape[1]
    for k, (mu, cov) in enumerate(zip(means, covariances)):
        chol = np.linalg.cholesky(cov)
        sol = np.linalg.solve(chol, (frames - mu).T)
        out[:, k] = (-0.5 * (sol * sol).sum(0) - np.log(np.diag(chol)).sum()
                     - 0.5 * d * np.log(2 * np.pi))
    return out


def ar_log_densities(seq: np.ndarray, dynamics: np.ndarray,
                     noise_covariances: np.ndarray) -> np.ndarray:
    """``log N(x_t; A_k x_{t-1}, Q_k)`` per step and regime (N(0, I) at t = 0)."""
    d = seq.shape[1]
    out = np.empty((len(seq), len(dynamics)))
    out[0] = -0.5 * (seq[0] ** 2).sum() - 0.5 * d * np.log(2 * np.pi)
    for k, (a, q) in enumerate(zip(dynamics, noise_covariances)):
        resid = seq[1:] - seq[:-1] @ a.T
        out[1:, k] = gaussian_log_densities(resid, np.zeros((1, d)), q[None])[:, 0]
    return out


def student_log_densities(frames: np.ndarray, means: np.ndarray, scale: float,
                          df: float) -> np.ndarray:
    """``log p(x_t | k)`` for independent Student-t coordinates, (T, K).

    Each coordinate of state ``k`` is ``means[k, i] + scale * t(df)``.
    """
    from scipy.special import gammaln

    z = (frames[:, None, :] - means[None]) / scale
    const = (gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * np.log(df * np.pi)
             - np.log(scale))
    return (const - (df + 1) / 2 * np.log1p(z * z / df)).sum(-1)


def forward_filter(log_b: np.ndarray, start: np.ndarray,
                   transition_matrix: np.ndarray) -> np.ndarray:
    """Filtered state probabilities ``p(s_t | x_0..x_t)`` of an HMM, (T, K).

    ``log_b`` (T, K) holds the emission log-densities of one sequence. The
    recursion runs on normalised probabilities (``alpha_t = (alpha_{t-1} P)
    * b_t / norm``), with each ``b_t`` scaled by its largest entry.
    """
    b = np.exp(log_b - log_b.max(axis=1, keepdims=True))
    out = np.empty_like(b)
    alpha = start * b[0]
    out[0] = alpha / alpha.sum()
    for t in range(1, len(b)):
        alpha = (out[t - 1] @ transition_matrix) * b[t]
        out[t] = alpha / alpha.sum()
    return out


def oracle_labels(seqs: list, params: dict, kind: str) -> list:
    """Online labels of the forward filter with the generating parameters."""
    start = params["stationary_distribution"]
    trans = params["transition_matrix"]
    out = []
    for seq in seqs:
        if kind == "ar":
            log_b = ar_log_densities(seq, params["dynamics"], params["noise_covariances"])
        elif kind == "student":
            log_b = student_log_densities(seq, params["means"], params["scale"],
                                          params["df"])
        else:
            log_b = gaussian_log_densities(seq, params["means"], params["covariances"])
        out.append(forward_filter(log_b, start, trans).argmax(1))
    return out


def frame_baselines(train: list, test: list, n_states: int, seed: int) -> dict:
    """KMeans and a full-covariance Gaussian mixture on single frames."""
    frames = np.concatenate(train)
    out = {}
    for name, model in (
            ("kmeans", KMeans(n_states, n_init=10, random_state=seed)),
            ("gmm", GaussianMixture(n_states, covariance_type="full", n_init=3,
                                    random_state=seed))):
        t0 = time.perf_counter()
        model.fit(frames)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = [model.predict(seq) for seq in test]
        occupancy = (model.weights_ if name == "gmm"
                     else np.bincount(model.labels_, minlength=n_states) / len(frames))
        out[name] = {"labels": labels, "t_fit": t_fit,
                     "t_predict": time.perf_counter() - t0, "occupancy": occupancy}
    return out


def hmm_baseline(train: list, test: list, n_states: int, seed: int,
                 n_restarts: int = 3) -> dict:
    """hmmlearn ``GaussianHMM`` (full covariance, true K), best of ``n_restarts``.

    Returns the forward-filter (online) and Viterbi (offline) labels of the
    test sequences and the fitted chain's stationary distribution. EM runs
    hmmlearn's scaled forward-backward rather than its default log-space one:
    the same algorithm, about 1.6x faster here, and on the suite's
    six_states, overlap and langevin cases the same log-likelihood to 1e-6
    and the same labels; a restart whose scaled recursion underflows (heavy
    tails) is run again in log space.
    """
    from hmmlearn.hmm import GaussianHMM

    frames = np.concatenate(train)
    lengths = [len(s) for s in train]
    best, best_ll = None, -np.inf
    t0 = time.perf_counter()
    for r in range(n_restarts):
        # The scaled recursion underflows on heavy-tailed frames (an outlier
        # far from every state): that restart is run again in log space.
        for implementation in ("scaling", "log"):
            model = GaussianHMM(n_states, covariance_type="full", n_iter=100, tol=1e-3,
                                random_state=seed * 100 + r,
                                implementation=implementation)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    model.fit(frames, lengths)
                    ll = model.score(frames, lengths)
                    break
                except ValueError as error:
                    ll = -np.inf
                    if "underflow" not in str(error):
                        break
                except np.linalg.LinAlgError:
                    ll = -np.inf
                    break
        if np.isfinite(ll) and ll > best_ll:
            best, best_ll = model, ll
    t_fit = time.perf_counter() - t0
    if best is None:
        raise RuntimeError(f"hmmlearn's GaussianHMM failed on all {n_restarts} restarts.")
    t0 = time.perf_counter()
    online = [forward_filter(gaussian_log_densities(seq, best.means_, best.covars_),
                             best.startprob_, best.transmat_).argmax(1)
              for seq in test]
    t_online = time.perf_counter() - t0
    t0 = time.perf_counter()
    viterbi = [best.predict(seq) for seq in test]
    t_viterbi = time.perf_counter() - t0
    evals, evecs = np.linalg.eig(best.transmat_.T)
    pi = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
    pi = np.abs(pi) / np.abs(pi).sum()
    return {"hmm_filter": {"labels": online, "t_fit": t_fit, "t_predict": t_online,
                           "occupancy": pi},
            "hmm_viterbi": {"labels": viterbi, "t_fit": t_fit, "t_predict": t_viterbi,
                            "occupancy": pi}}
