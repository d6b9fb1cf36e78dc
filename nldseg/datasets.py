"""Synthetic benchmark data sets for time-series segmentation.

Every generator returns a batch of sequences ``X`` of shape
(n_sequences, n_timesteps, n_features) together with the hidden state labels
``y`` of shape (n_sequences, n_timesteps), so that a segmentation can be scored
with :func:`nldseg.metrics.segmentation_accuracy`; with ``return_params=True``
also the generating parameters, including the true time share of every state
(``"stationary_distribution"``) and, for the Markov-switching generators, the
transition matrix.

- :func:`make_markov_chain_sequences`: a Markov chain with Gaussian emissions
  (a Gaussian HMM); any transition matrix, any overlap of the emissions.
- :func:`make_switching_ar_sequences`: regimes that differ only in their
  dynamics; every frame has the same law N(0, I) whatever the regime.
- :func:`make_langevin_sequences`: a metastable multi-well diffusion seen
  through a nonlinear map.
- :func:`make_oscillation_sequences`: activities that are oscillations of
  their own tempo, amplitude and posture, as joint angles of recorded motion;
  long segments, frames that overlap.

The emission parameters (how hidden states are turned into observations) can
be drawn from their own seed, ``emission_random_state``. Use the same
``emission_random_state`` and a different ``random_state`` to build train and
test sets that share the observation model but contain different sequences.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils import check_random_state

__all__ = [
    "make_langevin_sequences",
    "make_markov_chain_sequences",
    "make_oscillation_sequences",
    "make_switching_ar_sequences",
    "stationary_distribution",
]

_WELL_SPACING = 2.0 * np.sqrt(3.0)
_WELL_WIDTH = 1.0
_WELL_DEPTH = 1.0
_N_HIDDEN = 32


def _check_int(value: object, name: str, min_value: int) -> int:
    """Check that ``value`` is an integer (not a bool) of at least ``min_value``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}.")
    if value < min_value:
        raise ValueError(f"{name} must be >= {min_value}; got {value}.")
    return int(value)


def _check_real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
) -> float:
    """Check that ``value`` is a finite real number in the given range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}.")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}.")
    if low is not None:
        if low_inclusive and value < low:
            raise ValueError(f"{name} must be >= {low}; got {value}.")
        if not low_inclusive and value <= low:
            raise ValueError(f"{name} must be > {low}; got {value}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value}.")
    return value


def _emission_rng(
    rng: np.random.RandomState, emission_random_state: object
) -> np.random.RandomState:
    """Generator for the emission parameters: its own seed, or the main one."""
    if emission_random_state is None:
        return rng
    return check_random_state(emission_random_state)


def _markov_emission_params(
    rng: np.random.RandomState, n_states: int, n_features: int, mean_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the Gaussian emission means and SPD covariances of every state."""
    means = mean_scale * rng.standard_normal((n_states, n_features))
    factors = rng.standard_normal((n_states, n_features, n_features))
    covariances = 0.5 * factors @ factors.transpose(0, 2, 1) / n_features
    covariances += 0.25 * np.eye(n_features)
    return means, covariances


def _sample_markov_chain(
    rng: np.random.RandomState,
    n_sequences: int,
    n_timesteps: int,
    n_states: int,
    switch_prob: float,
) -> np.ndarray:
    """Sample state paths that jump to each other state with ``switch_prob``."""
    initial = rng.randint(n_states, size=n_sequences)
    switches = rng.random_sample((n_sequences, n_timesteps - 1)) < (
        (n_states - 1) * switch_prob
    )
    offsets = rng.randint(1, n_states, size=(n_sequences, n_timesteps - 1))
    jumps = np.where(switches, offsets, 0)
    cumulative = np.concatenate(
        [np.zeros((n_sequences, 1), dtype=np.int64), np.cumsum(jumps, axis=1)], axis=1
    )
    return ((initial[:, None] + cumulative) % n_states).astype(np.int64)


def _check_transition_matrix(transition_matrix: object) -> np.ndarray:
    """Check that ``transition_matrix`` is a row-stochastic square matrix."""
    try:
        P = np.asarray(transition_matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"transition_matrix must be an array of real numbers; got {exc}."
        ) from exc
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] < 2:
        raise ValueError(
            "transition_matrix must be a square matrix of shape (n_states, n_states) "
            f"with n_states >= 2; got shape {P.shape}."
        )
    if not np.all(np.isfinite(P)) or np.any(P < 0):
        raise ValueError("transition_matrix must hold finite, non-negative numbers.")
    row_sums = P.sum(axis=1)
    if not np.allclose(row_sums, 1.0, rtol=0.0, atol=1e-8):
        raise ValueError(
            "Every row of transition_matrix must sum to 1; got row sums "
            f"{np.round(row_sums, 6).tolist()}."
        )
    return P


def stationary_distribution(transition_matrix: object) -> np.ndarray:
    """Stationary law ``pi`` of a Markov chain: ``pi P = pi``, ``sum(pi) = 1``.

    Parameters
    ----------
    transition_matrix : array-like of shape (n_states, n_states)
        Row-stochastic matrix; ``transition_matrix[i, j]`` is the probability
        of moving from state ``i`` to state ``j`` in one step. The chain
        should be irreducible, so that the law is unique.

    Returns
    -------
    pi : ndarray of shape (n_states,)
        The long-run fraction of time spent in each state.

    Examples
    --------
    >>> from nldseg.datasets import stationary_distribution
    >>> stationary_distribution([[0.9, 0.1], [0.3, 0.7]]).round(3).tolist()
    [0.75, 0.25]
    """
    P = _check_transition_matrix(transition_matrix)
    n = P.shape[0]
    system = np.vstack([P.T - np.eye(n), np.ones((1, n))])
    rhs = np.zeros(n + 1)
    rhs[-1] = 1.0
    pi = np.linalg.lstsq(system, rhs, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _uniform_switching(n_states: object, switch_prob: object) -> np.ndarray:
    """The transition matrix that jumps to each other state with ``switch_prob``."""
    n_states = _check_int(n_states, "n_states", 2)
    switch_prob = _check_real(switch_prob, "switch_prob", low=0.0, high=1.0)
    if (n_states - 1) * switch_prob > 1.0:
        raise ValueError(
            "The probability of staying in a state, 1 - (n_states - 1) * "
            f"switch_prob = {1.0 - (n_states - 1) * switch_prob:.4g}, is "
            f"negative; switch_prob must be <= 1 / (n_states - 1) = "
            f"{1.0 / (n_states - 1):.4g}."
        )
    transition_matrix = np.full((n_states, n_states), switch_prob)
    np.fill_diagonal(transition_matrix, 1.0 - (n_states - 1) * switch_prob)
    return transition_matrix


def _sample_chain(
    rng: np.random.RandomState,
    n_sequences: int,
    n_timesteps: int,
    transition_matrix: np.ndarray,
    initial: np.ndarray,
) -> np.ndarray:
    """State paths of a Markov chain started from the law ``initial``."""
    cum = np.cumsum(transition_matrix, axis=1)
    cum[:, -1] = 1.0
    start = np.cumsum(initial)
    start[-1] = 1.0
    y = np.empty((n_sequences, n_timesteps), dtype=np.int64)
    y[:, 0] = np.searchsorted(start, rng.random_sample(n_sequences), side="right")
    u = rng.random_sample((n_timesteps - 1, n_sequences, 1))
    for t in range(1, n_timesteps):
        y[:, t] = (u[t - 1] >= cum[y[:, t - 1]]).sum(axis=1)
    return y


def make_markov_chain_sequences(
    n_sequences: int = 100,
    n_timesteps: int = 200,
    *,
    n_states: int = 3,
    n_features: int = 15,
    switch_prob: float = 0.025,
    mean_scale: float = 1.0,
    transition_matrix: ArrayLike | None = None,
    random_state: int | np.random.RandomState | None = None,
    emission_random_state: int | np.random.RandomState | None = None,
    return_params: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate sequences from a Markov chain with Gaussian emissions.

    A discrete Markov chain on `n_states` states moves at every time step to
    each other state with probability `switch_prob` and stays put otherwise
    (or follows any given `transition_matrix`). Each time step emits a
    Gaussian vector whose mean and covariance depend on the current state: a
    Gaussian hidden Markov model. `mean_scale` sets how much the emissions of
    different states overlap.

    Parameters
    ----------
    n_sequences : int, default=100
        Number of sequences.

    n_timesteps : int, default=200
        Length of every sequence.

    n_states : int, default=3
        Number of hidden states. Must be at least 2.

    n_features : int, default=15
        Dimension of the observations.

    switch_prob : float, default=0.025
        Probability of jumping from the current state to each other state at
        every time step, so the chain leaves its state with probability
        ``(n_states - 1) * switch_prob``, which must not exceed 1.

    mean_scale : float, default=1.0
        Standard deviation of the entries of the state means. The emission
        variances are about 0.75, so small values (e.g. 0.3 with 8 features)
        make the states overlap: single frames no longer tell them apart and
        only their persistence in time does.

    transition_matrix : array-like of shape (n_states, n_states), default=None
        Row-stochastic matrix of the chain, ``transition_matrix[i, j]`` being
        the probability of moving from state ``i`` to state ``j``. When given,
        it sets the number of states and the switching, and `n_states` and
        `switch_prob` are ignored; each sequence then starts from the chain's
        stationary law, so that unequal time shares are possible.

    random_state : int, RandomState instance or None, default=None
        Seed of the Markov chain and of the emission noise, and of the emission
        parameters when `emission_random_state` is None. Pass an int for
        reproducible output across multiple function calls.

    emission_random_state : int, RandomState instance or None, default=None
        Seed of the emission parameters (state means and covariances). If None,
        they are drawn from `random_state`. Use the same
        `emission_random_state` and different `random_state` for train and
        test sets.

    return_params : bool, default=False
        If True, also return the parameters of the generative model.

    Returns
    -------
    X : ndarray of shape (n_sequences, n_timesteps, n_features)
        Observations, as float64.

    y : ndarray of shape (n_sequences, n_timesteps)
        Hidden state labels in ``0, ..., n_states - 1``, as int64.

    params : dict
        Only returned if `return_params` is True, with keys:

        - ``"means"``: ndarray of shape (n_states, n_features);
        - ``"covariances"``: ndarray of shape (n_states, n_features,
          n_features);
        - ``"transition_matrix"``: ndarray of shape (n_states, n_states),
          ``transition_matrix[i, j]`` being the probability of moving from
          state ``i`` to state ``j``;
        - ``"stationary_distribution"``: ndarray of shape (n_states,), the
          long-run time share of each state, from which the initial states
          are drawn (uniform without `transition_matrix`).

    See Also
    --------
    make_langevin_sequences : Sequences from metastable nonlinear dynamics.

    Notes
    -----
    The expected time spent in a state before leaving it is
    ``1 / ((n_states - 1) * switch_prob)`` time steps, 20 with the defaults.

    Each state ``k`` has a mean ``mean_scale * N(0, I)`` and a covariance
    ``0.5 * A_k A_k^T / n_features + 0.25 I`` with ``A_k`` a standard normal
    square matrix, so that the variances are about 0.75. The emission
    parameters are drawn before any sequence: for a given seed they do not
    depend on `n_sequences` or `n_timesteps`.

    Examples
    --------
    >>> from nldseg.datasets import make_markov_chain_sequences
    >>> X, y = make_markov_chain_sequences(n_sequences=4, n_timesteps=50,
    ...                                    random_state=0)
    >>> X.shape, y.shape
    ((4, 50, 15), (4, 50))
    >>> sorted(set(y.ravel().tolist()))
    [0, 1, 2]

    A rare state, one step in fifty on average:

    >>> P = [[0.95, 0.04, 0.01], [0.04, 0.95, 0.01], [0.2, 0.2, 0.6]]
    >>> X, y, params = make_markov_chain_sequences(
    ...     2, 100, transition_matrix=P, random_state=0, return_params=True)
    >>> params["stationary_distribution"].round(3).tolist()
    [0.488, 0.488, 0.024]
    """
    n_sequences = _check_int(n_sequences, "n_sequences", 1)
    n_timesteps = _check_int(n_timesteps, "n_timesteps", 1)
    n_features = _check_int(n_features, "n_features", 1)
    mean_scale = _check_real(mean_scale, "mean_scale", low=0.0)
    if transition_matrix is None:
        transition_matrix = _uniform_switching(n_states, switch_prob)
        n_states = transition_matrix.shape[0]
        stationary = np.full(n_states, 1.0 / n_states)
    else:
        transition_matrix = _check_transition_matrix(transition_matrix)
        n_states = transition_matrix.shape[0]
        stationary = stationary_distribution(transition_matrix)

    rng = check_random_state(random_state)
    means, covariances = _markov_emission_params(
        _emission_rng(rng, emission_random_state), n_states, n_features, mean_scale
    )
    if np.all(transition_matrix == transition_matrix[0, 1] + np.diag(
            np.diag(transition_matrix) - transition_matrix[0, 1])):
        # One switch probability for every pair: the original sampler, so that
        # the sequences of a seed stay what they were.
        y = _sample_markov_chain(rng, n_sequences, n_timesteps, n_states,
                                 float(transition_matrix[0, 1]))
    else:
        y = _sample_chain(rng, n_sequences, n_timesteps, transition_matrix,
                          stationary)

    noise = rng.standard_normal((n_sequences, n_timesteps, n_features))
    cholesky = np.linalg.cholesky(covariances)
    X = np.empty_like(noise)
    for state in range(n_states):
        mask = y == state
        X[mask] = means[state] + noise[mask] @ cholesky[state].T

    if not return_params:
        return X, y
    params = {
        "means": means,
        "covariances": covariances,
        "transition_matrix": transition_matrix,
        "stationary_distribution": stationary,
    }
    return X, y, params


def _regime_dynamics(
    n_states: int, n_features: int, rho: float, mixing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """VAR(1) matrices ``A_k`` and noise covariances ``I - A_k A_k^T`` of each regime.

    Regime ``k`` rotates each pair of (mixed) coordinates by
    ``theta_k = pi k / (n_states - 1)`` and shrinks by ``rho``; an odd last
    coordinate is multiplied by ``rho cos(theta_k)``. Every ``A_k`` has norm at
    most ``rho < 1``, and its noise covariance makes N(0, I) stationary.
    """
    thetas = np.pi * np.arange(n_states) / (n_states - 1)
    dynamics = np.zeros((n_states, n_features, n_features))
    for k, theta in enumerate(thetas):
        c, s = np.cos(theta), np.sin(theta)
        for i in range(0, n_features - 1, 2):
            dynamics[k, i:i + 2, i:i + 2] = rho * np.array([[c, -s], [s, c]])
        if n_features % 2:
            dynamics[k, -1, -1] = rho * c
    dynamics = mixing @ dynamics @ mixing.T
    noise_covariances = np.eye(n_features) - dynamics @ dynamics.transpose(0, 2, 1)
    return dynamics, 0.5 * (noise_covariances + noise_covariances.transpose(0, 2, 1))


def make_switching_ar_sequences(
    n_sequences: int = 100,
    n_timesteps: int = 200,
    *,
    n_states: int = 3,
    n_features: int = 4,
    switch_prob: float = 0.01,
    rho: float = 0.9,
    random_state: int | np.random.RandomState | None = None,
    emission_random_state: int | np.random.RandomState | None = None,
    return_params: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate regimes that differ only in their dynamics, not in their frames.

    A Markov chain (as in :func:`make_markov_chain_sequences`) picks the regime
    of every step; in regime ``k`` the observations follow the vector
    autoregression ``x_t = A_k x_{t-1} + e_t``, ``e_t ~ N(0, I - A_k A_k^T)``.
    Every regime leaves N(0, I) invariant, so every single frame has the law
    N(0, I) whatever the regime: the frame-wise mean and covariance carry no
    information about the state, and a frame-wise clustering or a Gaussian
    HMM is at chance. Only how a frame follows the previous one tells the
    regimes apart (slow drift, rotation, sign alternation...).

    Parameters
    ----------
    n_sequences : int, default=100
        Number of sequences.

    n_timesteps : int, default=200
        Length of every sequence.

    n_states : int, default=3
        Number of regimes. Must be at least 2.

    n_features : int, default=4
        Dimension of the observations.

    switch_prob : float, default=0.01
        Probability of jumping to each other regime at every step (mean dwell
        ``1 / ((n_states - 1) * switch_prob)``, 50 steps with the defaults).

    rho : float, default=0.9
        Contraction of every regime's dynamics, in ``[0, 1)``. Regime ``k``
        rotates pairs of coordinates by ``pi k / (n_states - 1)``: with 3
        regimes, a slow drift (lag-1 autocorrelation ``rho``), a quarter turn
        (0) and an alternation (``-rho``).

    random_state : int, RandomState instance or None, default=None
        Seed of the regimes and of the noise, and of the mixing when
        `emission_random_state` is None.

    emission_random_state : int, RandomState instance or None, default=None
        Seed of the random orthogonal mixing of the coordinates (shared by
        train and test sets when they use the same value).

    return_params : bool, default=False
        If True, also return the parameters of the generative model.

    Returns
    -------
    X : ndarray of shape (n_sequences, n_timesteps, n_features)
        Observations, as float64.

    y : ndarray of shape (n_sequences, n_timesteps)
        Regime of every step (the one that produced ``x_t`` from ``x_{t-1}``),
        as int64.

    params : dict
        Only returned if `return_params` is True, with keys
        ``"dynamics"`` (n_states, n_features, n_features), the matrices
        ``A_k``; ``"noise_covariances"`` (n_states, n_features, n_features);
        ``"transition_matrix"`` (n_states, n_states) and
        ``"stationary_distribution"`` (n_states,).

    See Also
    --------
    make_markov_chain_sequences : States that differ in their frames.

    Examples
    --------
    >>> from nldseg.datasets import make_switching_ar_sequences
    >>> X, y = make_switching_ar_sequences(4, 500, random_state=0)
    >>> X.shape, y.shape
    ((4, 500, 4), (4, 500))
    >>> [round(float(X[y == k].std()), 1) for k in range(3)]
    [1.0, 1.0, 1.0]
    """
    n_sequences = _check_int(n_sequences, "n_sequences", 1)
    n_timesteps = _check_int(n_timesteps, "n_timesteps", 1)
    n_features = _check_int(n_features, "n_features", 1)
    transition_matrix = _uniform_switching(n_states, switch_prob)
    n_states, switch_prob = transition_matrix.shape[0], float(switch_prob)
    rho = _check_real(rho, "rho", low=0.0)
    if rho >= 1.0:
        raise ValueError(f"rho must be < 1 (stable dynamics); got {rho}.")

    rng = check_random_state(random_state)
    emission_rng = _emission_rng(rng, emission_random_state)
    mixing, _ = np.linalg.qr(emission_rng.standard_normal((n_features, n_features)))
    dynamics, noise_cov = _regime_dynamics(n_states, n_features, rho, mixing)
    # The smallest eigenvalues of I - A A^T may round to -1e-17: jitter.
    noise_chol = np.linalg.cholesky(noise_cov + 1e-12 * np.eye(n_features))
    y = _sample_markov_chain(rng, n_sequences, n_timesteps, n_states, switch_prob)

    X = np.empty((n_sequences, n_timesteps, n_features))
    X[:, 0] = rng.standard_normal((n_sequences, n_features))
    noise = rng.standard_normal((n_timesteps, n_sequences, n_features))
    for t in range(1, n_timesteps):
        state = y[:, t]
        X[:, t] = (np.einsum("nij,nj->ni", dynamics[state], X[:, t - 1])
                   + np.einsum("nij,nj->ni", noise_chol[state], noise[t]))

    if not return_params:
        return X, y
    params = {
        "dynamics": dynamics,
        "noise_covariances": noise_cov,
        "transition_matrix": transition_matrix,
        "stationary_distribution": np.full(n_states, 1.0 / n_states),
    }
    return X, y, params


def _oscillation_params(
    rng: np.random.RandomState, n_states: int, n_features: int, mean_scale: float,
    period_range: tuple[float, float], pattern_spread: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Postures (K, D), loadings (K, D, 2) and periods (K,) of every state.

    The periods are spread evenly in log between the range's ends, in a random
    order, so that no two states share a tempo. Each state's loadings map the
    phase's ``(cos, sin)`` onto the features: a pattern shared by every state
    plus ``pattern_spread`` times one of its own (each entry N(0, 1/2),
    normalised so that the sum has that law too), scaled by the state's
    amplitude, log-uniform in [0.5, 2].
    """
    postures = mean_scale * rng.standard_normal((n_states, n_features))
    own = rng.standard_normal((n_states, n_features, 2))
    low, high = period_range
    periods = np.exp(np.linspace(np.log(low), np.log(high), n_states))
    periods = periods[rng.permutation(n_states)]
    shared = rng.standard_normal((n_features, 2))
    amplitudes = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n_states))
    pattern = (shared + pattern_spread * own) / np.sqrt(1.0 + pattern_spread**2)
    loadings = amplitudes[:, None, None] * pattern / np.sqrt(2.0)
    return postures, loadings, periods


def make_oscillation_sequences(
    n_sequences: int = 1,
    n_timesteps: int = 8000,
    *,
    n_states: int = 4,
    n_features: int = 4,
    switch_prob: float = 1.0 / 2400.0,
    mean_scale: float = 0.5,
    period_range: tuple[float, float] = (20.0, 80.0),
    pattern_spread: float = 0.25,
    noise: float = 0.1,
    posture_rate: float = 0.05,
    phase_noise: float = 0.05,
    random_state: int | np.random.RandomState | None = None,
    emission_random_state: int | np.random.RandomState | None = None,
    return_params: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate activities that are oscillations, as joint angles of recorded motion.

    A Markov chain (as in :func:`make_markov_chain_sequences`) picks the
    activity of every step; its segments are long (``1 / ((n_states - 1) *
    switch_prob)`` steps on average, 800 with the defaults), as in a recording
    of a few activities. In activity ``k`` the observations are

        x_t = p_t + W_k (cos phi_t, sin phi_t) + noise * e_t,

    a posture ``p_t`` that moves smoothly towards the activity's own ``m_k``
    (``p_t = p_{t-1} + posture_rate (m_k - p_{t-1})``), an oscillation whose
    phase advances by ``2 pi / T_k`` per step (times ``1 + phase_noise *
    N(0, 1)``, a tempo that wanders) and whose loadings ``W_k`` give each
    feature its amplitude and phase offset, and white noise. The phase and the
    posture carry on across a switch. The activities differ in posture,
    amplitude and tempo, and a little in their phase pattern (by
    `pattern_spread`: as walking and running move the same joints in the same
    order); a single frame of an oscillation lies anywhere on its cycle, so
    frames of different activities overlap, while a few steps in a row tell
    them apart.

    Parameters
    ----------
    n_sequences : int, default=1
        Number of sequences (recordings).

    n_timesteps : int, default=8000
        Length of every sequence.

    n_states : int, default=4
        Number of activities. Must be at least 2.

    n_features : int, default=4
        Dimension of the observations (joint angles, say).

    switch_prob : float, default=1/2400
        Probability of switching to each other activity at every step.

    mean_scale : float, default=0.5
        Standard deviation of the postures ``m_k`` around 0, per feature (the
        loadings' entries have standard deviation ``1 / sqrt(2)``).

    period_range : tuple of two floats, default=(20.0, 80.0)
        Shortest and longest period, in steps; the activities' periods are
        spread evenly in log between them (one each, in a random order).

    pattern_spread : float, default=0.25
        How much the activities' phase patterns differ: ``W_k = a_k (W + s
        V_k) / sqrt(2 (1 + s^2))``, with ``W`` shared, ``V_k`` the
        activity's own (entries standard normal) and ``a_k`` its amplitude,
        log-uniform in [0.5, 2]. 0: one pattern, the activities differ in
        tempo, amplitude and posture only; large: unrelated patterns, which
        one lag of the observations tells apart at once.

    noise : float, default=0.1
        Standard deviation of the white noise on every feature.

    posture_rate : float, default=0.05
        Fraction of the way to the new posture covered per step, in ``(0,
        1]`` (a time constant of 20 steps with the default).

    phase_noise : float, default=0.05
        Relative standard deviation of every step's phase increment.

    random_state : int, RandomState instance or None, default=None
        Seed of the activities, phases and noise, and of the emission
        parameters when `emission_random_state` is None.

    emission_random_state : int, RandomState instance or None, default=None
        Seed of the postures, loadings and periods (shared by train and test
        sets when they use the same value).

    return_params : bool, default=False
        If True, also return the parameters of the generative model.

    Returns
    -------
    X : ndarray of shape (n_sequences, n_timesteps, n_features)
        Observations, as float64.

    y : ndarray of shape (n_sequences, n_timesteps)
        Activity of every step, as int64.

    params : dict
        Only returned if `return_params` is True, with keys ``"postures"``
        (n_states, n_features), ``"loadings"`` (n_states, n_features, 2),
        ``"periods"`` (n_states,), ``"transition_matrix"`` (n_states,
        n_states) and ``"stationary_distribution"`` (n_states,).

    See Also
    --------
    make_switching_ar_sequences : Regimes with identical frames.

    Examples
    --------
    >>> import numpy as np
    >>> from nldseg.datasets import make_oscillation_sequences
    >>> X, y, params = make_oscillation_sequences(random_state=0, return_params=True)
    >>> X.shape, y.shape
    ((1, 8000, 4), (1, 8000))
    >>> np.round(np.sort(params["periods"]), 1)
    array([20. , 31.7, 50.4, 80. ])
    """
    n_sequences = _check_int(n_sequences, "n_sequences", 1)
    n_timesteps = _check_int(n_timesteps, "n_timesteps", 1)
    n_features = _check_int(n_features, "n_features", 1)
    transition_matrix = _uniform_switching(n_states, switch_prob)
    n_states, switch_prob = transition_matrix.shape[0], float(switch_prob)
    mean_scale = _check_real(mean_scale, "mean_scale", low=0.0)
    pattern_spread = _check_real(pattern_spread, "pattern_spread", low=0.0)
    noise = _check_real(noise, "noise", low=0.0)
    phase_noise = _check_real(phase_noise, "phase_noise", low=0.0)
    posture_rate = _check_real(posture_rate, "posture_rate", low=0.0, high=1.0,
                               low_inclusive=False)
    try:
        low, high = (float(v) for v in period_range)
    except (TypeError, ValueError):
        raise TypeError("period_range must be a pair of numbers (shortest, longest); "
                        f"got {period_range!r}.") from None
    if not 2.0 <= low <= high < np.inf:
        raise ValueError("period_range must be (shortest, longest) with 2 <= shortest "
                         f"<= longest, in steps; got {period_range!r}.")

    rng = check_random_state(random_state)
    postures, loadings, periods = _oscillation_params(
        _emission_rng(rng, emission_random_state), n_states, n_features, mean_scale,
        (low, high), pattern_spread)
    y = _sample_markov_chain(rng, n_sequences, n_timesteps, n_states, switch_prob)
    increments = (2.0 * np.pi / periods[y]) * (
        1.0 + phase_noise * rng.standard_normal((n_sequences, n_timesteps)))
    phase = rng.uniform(0.0, 2.0 * np.pi, (n_sequences, 1)) + np.cumsum(increments, 1)
    cycle = np.stack([np.cos(phase), np.sin(phase)], -1)
    X = np.einsum("nti,ntdi->ntd", cycle, loadings[y])
    posture = postures[y[:, 0]].copy()
    for t in range(n_timesteps):
        posture += posture_rate * (postures[y[:, t]] - posture)
        X[:, t] += posture
    X += noise * rng.standard_normal(X.shape)

    if not return_params:
        return X, y
    params = {
        "postures": postures,
        "loadings": loadings,
        "periods": periods,
        "transition_matrix": transition_matrix,
        "stationary_distribution": np.full(n_states, 1.0 / n_states),
    }
    return X, y, params


def _well_centers(n_wells: int) -> np.ndarray:
    """Well centers on a circle, adjacent wells ``_WELL_SPACING`` apart."""
    radius = _WELL_SPACING / (2.0 * np.sin(np.pi / n_wells))
    angles = 2.0 * np.pi * np.arange(n_wells) / n_wells
    return radius * np.column_stack([np.cos(angles), np.sin(angles)])


def _well_log_weights(z: np.ndarray, centers: np.ndarray,
                      depths: np.ndarray) -> np.ndarray:
    """``-|z - m_i|^2 / (2 width^2) + depth_i / _WELL_DEPTH`` per point and well."""
    diff = z[..., None, :] - centers
    return -np.sum(diff**2, axis=-1) / (2.0 * _WELL_WIDTH**2) + depths / _WELL_DEPTH


def _potential(z: np.ndarray, centers: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """``U(z) = -depth * log sum_i exp(-|z - m_i|^2 / (2 width^2) + d_i / depth)``."""
    log_w = _well_log_weights(z, centers, depths)
    top = log_w.max(axis=-1)
    return -_WELL_DEPTH * (top + np.log(np.exp(log_w - top[..., None]).sum(-1)))


def _potential_gradient(z: np.ndarray, centers: np.ndarray,
                        depths: np.ndarray) -> np.ndarray:
    """Gradient of :func:`_potential` at the rows of ``z``."""
    diff = z[:, None, :] - centers[None, :, :]
    log_weights = _well_log_weights(z, centers, depths)
    log_weights -= log_weights.max(axis=1, keepdims=True)
    weights = np.exp(log_weights)
    weights /= weights.sum(axis=1, keepdims=True)
    return _WELL_DEPTH / _WELL_WIDTH**2 * np.einsum("nk,nkd->nd", weights, diff)


def _nearest_well(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the well center nearest to each point of ``z``."""
    sq_dist = np.sum((z[..., None, :] - centers) ** 2, axis=-1)
    return np.argmin(sq_dist, axis=-1).astype(np.int64)


def _well_occupancy(centers: np.ndarray, depths: np.ndarray, beta: float) -> np.ndarray:
    """Mass of ``exp(-beta U)`` in each well's labelling cell, by quadrature.

    The cell of a well is the set of points nearer to its center than to any
    other (the labelling rule); the integral runs on a 600 x 600 grid
    covering every center and eight well widths around it.
    """
    lo = centers.min(0) - 8.0 * _WELL_WIDTH
    hi = centers.max(0) + 8.0 * _WELL_WIDTH
    axes = [np.linspace(lo[i], hi[i], 600) for i in range(2)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    log_p = -beta * _potential(grid, centers, depths)
    weight = np.exp(log_p - log_p.max())
    mass = np.bincount(_nearest_well(grid, centers), weights=weight,
                       minlength=len(centers))
    return mass / mass.sum()


def make_langevin_sequences(
    n_sequences: int = 100,
    n_timesteps: int = 200,
    *,
    n_wells: int = 3,
    n_features: int = 10,
    beta: float = 4.0,
    dt: float = 0.05,
    substeps: int = 20,
    noise: float = 0.1,
    well_depths: ArrayLike | None = None,
    random_state: int | np.random.RandomState | None = None,
    emission_random_state: int | np.random.RandomState | None = None,
    return_params: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate sequences from Langevin dynamics in a multi-well potential.

    A hidden 2-D state ``z`` follows the overdamped Langevin dynamics
    ``dz = -grad U(z) dt + sqrt(2 / beta) dW`` in a smooth potential ``U``
    with `n_wells` minima placed on a circle, and hops between wells at random.
    It is observed through a fixed random nonlinear map
    ``x = tanh(z W1 + b1) W2 + noise * N(0, I)``. The label of a time step is
    the index of the well nearest to ``z``.

    Parameters
    ----------
    n_sequences : int, default=100
        Number of sequences.

    n_timesteps : int, default=200
        Number of observations in every sequence.

    n_wells : int, default=3
        Number of wells of the potential, i.e. of hidden states. Must be at
        least 2.

    n_features : int, default=10
        Dimension of the observations.

    beta : float, default=4.0
        Inverse temperature. Larger values make wells stickier: the mean dwell
        time grows roughly like ``exp(0.8 * beta)``.

    dt : float, default=0.05
        Step size of the Euler-Maruyama integrator.

    substeps : int, default=20
        Number of integrator steps between two consecutive observations, which
        are therefore ``dt * substeps`` time units apart.

    noise : float, default=0.1
        Standard deviation of the Gaussian observation noise.

    well_depths : array-like of shape (n_wells,), default=None
        Extra depth of each well (in units of ``U``); ``None`` makes all wells
        alike. A well ``d`` deeper than another holds roughly
        ``exp(beta * d)`` times its share of time, so that unequal occupancies
        such as (0.74, 0.20, 0.05, 0.01) can be generated; the exact shares
        are returned as ``params["stationary_distribution"]``.

    random_state : int, RandomState instance or None, default=None
        Seed of the hidden dynamics and of the observation noise, and of the
        emission parameters when `emission_random_state` is None. Pass an int
        for reproducible output across multiple function calls.

    emission_random_state : int, RandomState instance or None, default=None
        Seed of the emission parameters ``W1``, ``b1`` and ``W2``. If None, they
        are drawn from `random_state`. Use the same `emission_random_state` and
        different `random_state` for train and test sets.

    return_params : bool, default=False
        If True, also return the parameters of the generative model.

    Returns
    -------
    X : ndarray of shape (n_sequences, n_timesteps, n_features)
        Observations, as float64.

    y : ndarray of shape (n_sequences, n_timesteps)
        Index of the well nearest to the hidden state, in
        ``0, ..., n_wells - 1``, as int64.

    params : dict
        Only returned if `return_params` is True, with keys:

        - ``"well_centers"``: ndarray of shape (n_wells, 2);
        - ``"hidden_weights"``: ndarray of shape (2, n_hidden), ``W1``;
        - ``"hidden_bias"``: ndarray of shape (n_hidden,), ``b1``;
        - ``"output_weights"``: ndarray of shape (n_hidden, n_features),
          ``W2``;
        - ``"latents"``: ndarray of shape (n_sequences, n_timesteps, 2), the
          hidden states ``z`` at the observation times;
        - ``"well_depths"``: ndarray of shape (n_wells,);
        - ``"stationary_distribution"``: ndarray of shape (n_wells,), the
          long-run time share of each label: the mass of ``exp(-beta U)`` in
          the points nearest to each well, by quadrature (the Euler
          discretisation of the simulation shifts the empirical shares by
          about 0.01).

        Here ``n_hidden = 32``.

    See Also
    --------
    make_markov_chain_sequences : Sequences from a discrete Markov chain.

    Notes
    -----
    The potential is a smoothed minimum of quadratic wells,
    ``U(z) = -log sum_i exp(-|z - m_i|^2 / 2)``, whose centers ``m_i`` lie on a
    circle with adjacent centers ``2 sqrt(3)`` apart (radius 2 for three
    wells), so the barrier between adjacent wells, about 0.8, is the same for
    any `n_wells`. By symmetry the basin of attraction of a well is the set of
    points nearest to its center. Each sequence starts in a uniformly drawn
    well, at its center plus Gaussian noise of the width of the well at
    equilibrium.

    With the default parameters the label changes on average every 39
    observations (measured over 100 sequences of 2,000 observations), and the
    mean run of a label is 38 observations. About a fifth of the runs last a
    single observation: the nearest-well label flickers when the hidden state
    recrosses a basin boundary during a transition. With ``n_wells=2`` each
    well has one neighbour instead of two and the label changes about every
    90 observations; with 4 or 5 wells, about every 45.

    ``W1`` is standard normal divided by the circle radius, ``b1`` has standard
    deviation 0.5 and ``W2`` is standard normal divided by ``sqrt(n_hidden)``,
    so the noise-free observations have entries of order 0.5. They are drawn
    before any trajectory: for a given seed they do not depend on
    `n_sequences` or `n_timesteps`.

    Examples
    --------
    >>> from nldseg.datasets import make_langevin_sequences
    >>> X, y = make_langevin_sequences(n_sequences=4, n_timesteps=100,
    ...                                random_state=0)
    >>> X.shape, y.shape
    ((4, 100, 10), (4, 100))
    >>> X, y, params = make_langevin_sequences(n_sequences=2, n_timesteps=10,
    ...                                        random_state=0, return_params=True)
    >>> params["well_centers"].shape
    (3, 2)
    """
    n_sequences = _check_int(n_sequences, "n_sequences", 1)
    n_timesteps = _check_int(n_timesteps, "n_timesteps", 1)
    n_wells = _check_int(n_wells, "n_wells", 2)
    n_features = _check_int(n_features, "n_features", 1)
    beta = _check_real(beta, "beta", low=0.0, low_inclusive=False)
    dt = _check_real(dt, "dt", low=0.0, low_inclusive=False)
    substeps = _check_int(substeps, "substeps", 1)
    noise = _check_real(noise, "noise", low=0.0)
    if well_depths is None:
        depths = np.zeros(n_wells)
    else:
        depths = np.asarray(well_depths, dtype=np.float64)
        if depths.shape != (n_wells,) or not np.all(np.isfinite(depths)):
            raise ValueError(
                f"well_depths must hold {n_wells} finite numbers (one per well); "
                f"got {np.asarray(well_depths).tolist()!r}."
            )

    rng = check_random_state(random_state)
    centers = _well_centers(n_wells)
    occupancy = _well_occupancy(centers, depths, beta)
    radius = float(np.linalg.norm(centers[0]))
    emission_rng = _emission_rng(rng, emission_random_state)
    hidden_weights = emission_rng.standard_normal((2, _N_HIDDEN)) / radius
    hidden_bias = 0.5 * emission_rng.standard_normal(_N_HIDDEN)
    output_weights = emission_rng.standard_normal((_N_HIDDEN, n_features)) / np.sqrt(
        _N_HIDDEN
    )

    if np.all(depths == depths[0]):
        initial_wells = rng.randint(n_wells, size=n_sequences)
    else:  # Start in proportion to the time shares.
        initial_wells = rng.choice(n_wells, size=n_sequences, p=occupancy)
    well_std = _WELL_WIDTH / np.sqrt(beta * _WELL_DEPTH)
    z = centers[initial_wells] + well_std * rng.standard_normal((n_sequences, 2))
    latents = np.empty((n_sequences, n_timesteps, 2))
    latents[:, 0] = z
    diffusion = np.sqrt(2.0 * dt / beta)
    for t in range(1, n_timesteps):
        increments = rng.standard_normal((substeps, n_sequences, 2))
        for increment in increments:
            z = z - dt * _potential_gradient(z, centers, depths) + diffusion * increment
        latents[:, t] = z

    y = _nearest_well(latents, centers)
    X = np.tanh(latents @ hidden_weights + hidden_bias) @ output_weights
    X += noise * rng.standard_normal((n_sequences, n_timesteps, n_features))

    if not return_params:
        return X, y
    params = {
        "well_centers": centers,
        "hidden_weights": hidden_weights,
        "hidden_bias": hidden_bias,
        "output_weights": output_weights,
        "latents": latents,
        "well_depths": depths,
        "stationary_distribution": occupancy,
    }
    return X, y, params
