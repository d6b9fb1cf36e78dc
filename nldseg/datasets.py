"""Synthetic benchmark data sets for time-series segmentation.

Both generators return a batch of sequences ``X`` of shape
(n_sequences, n_timesteps, n_features) together with the hidden state labels
``y`` of shape (n_sequences, n_timesteps), so that a segmentation can be scored
with :func:`nldseg.metrics.segmentation_accuracy`.

The emission parameters (how hidden states are turned into observations) can
be drawn from their own seed, ``emission_random_state``. Use the same
``emission_random_state`` and a different ``random_state`` to build train and
test sets that share the observation model but contain different sequences.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["make_langevin_sequences", "make_markov_chain_sequences"]

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


def make_markov_chain_sequences(
    n_sequences: int = 100,
    n_timesteps: int = 200,
    *,
    n_states: int = 3,
    n_features: int = 15,
    switch_prob: float = 0.025,
    mean_scale: float = 1.0,
    random_state: int | np.random.RandomState | None = None,
    emission_random_state: int | np.random.RandomState | None = None,
    return_params: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate sequences from a Markov chain with Gaussian emissions.

    A discrete Markov chain on `n_states` states moves at every time step to
    each other state with probability `switch_prob` and stays put otherwise.
    Each time step emits a Gaussian vector whose mean and covariance depend on
    the current state.

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
        Standard deviation of the entries of the state means.

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
          uniform law from which the initial states are drawn.

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
    """
    n_sequences = _check_int(n_sequences, "n_sequences", 1)
    n_timesteps = _check_int(n_timesteps, "n_timesteps", 1)
    n_states = _check_int(n_states, "n_states", 2)
    n_features = _check_int(n_features, "n_features", 1)
    switch_prob = _check_real(switch_prob, "switch_prob", low=0.0, high=1.0)
    if (n_states - 1) * switch_prob > 1.0:
        raise ValueError(
            "The probability of staying in a state, 1 - (n_states - 1) * "
            f"switch_prob = {1.0 - (n_states - 1) * switch_prob:.4g}, is negative; "
            f"switch_prob must be <= 1 / (n_states - 1) = {1.0 / (n_states - 1):.4g}."
        )
    mean_scale = _check_real(mean_scale, "mean_scale", low=0.0)

    rng = check_random_state(random_state)
    means, covariances = _markov_emission_params(
        _emission_rng(rng, emission_random_state), n_states, n_features, mean_scale
    )
    y = _sample_markov_chain(rng, n_sequences, n_timesteps, n_states, switch_prob)

    noise = rng.standard_normal((n_sequences, n_timesteps, n_features))
    cholesky = np.linalg.cholesky(covariances)
    X = np.empty_like(noise)
    for state in range(n_states):
        mask = y == state
        X[mask] = means[state] + noise[mask] @ cholesky[state].T

    if not return_params:
        return X, y
    transition_matrix = np.full((n_states, n_states), switch_prob)
    np.fill_diagonal(transition_matrix, 1.0 - (n_states - 1) * switch_prob)
    params = {
        "means": means,
        "covariances": covariances,
        "transition_matrix": transition_matrix,
        "stationary_distribution": np.full(n_states, 1.0 / n_states),
    }
    return X, y, params


def _well_centers(n_wells: int) -> np.ndarray:
    """Well centers on a circle, adjacent wells ``_WELL_SPACING`` apart."""
    radius = _WELL_SPACING / (2.0 * np.sin(np.pi / n_wells))
    angles = 2.0 * np.pi * np.arange(n_wells) / n_wells
    return radius * np.column_stack([np.cos(angles), np.sin(angles)])


def _potential_gradient(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Gradient of ``U(z) = -depth * log sum_i exp(-|z - m_i|^2 / (2 width^2))``."""
    diff = z[:, None, :] - centers[None, :, :]
    log_weights = -np.sum(diff**2, axis=-1) / (2.0 * _WELL_WIDTH**2)
    log_weights -= log_weights.max(axis=1, keepdims=True)
    weights = np.exp(log_weights)
    weights /= weights.sum(axis=1, keepdims=True)
    return _WELL_DEPTH / _WELL_WIDTH**2 * np.einsum("nk,nkd->nd", weights, diff)


def _nearest_well(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the well center nearest to each point of ``z``."""
    sq_dist = np.sum((z[..., None, :] - centers) ** 2, axis=-1)
    return np.argmin(sq_dist, axis=-1).astype(np.int64)


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
          hidden states ``z`` at the observation times.

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

    rng = check_random_state(random_state)
    centers = _well_centers(n_wells)
    radius = float(np.linalg.norm(centers[0]))
    emission_rng = _emission_rng(rng, emission_random_state)
    hidden_weights = emission_rng.standard_normal((2, _N_HIDDEN)) / radius
    hidden_bias = 0.5 * emission_rng.standard_normal(_N_HIDDEN)
    output_weights = emission_rng.standard_normal((_N_HIDDEN, n_features)) / np.sqrt(
        _N_HIDDEN
    )

    initial_wells = rng.randint(n_wells, size=n_sequences)
    well_std = _WELL_WIDTH / np.sqrt(beta * _WELL_DEPTH)
    z = centers[initial_wells] + well_std * rng.standard_normal((n_sequences, 2))
    latents = np.empty((n_sequences, n_timesteps, 2))
    latents[:, 0] = z
    diffusion = np.sqrt(2.0 * dt / beta)
    for t in range(1, n_timesteps):
        increments = rng.standard_normal((substeps, n_sequences, 2))
        for increment in increments:
            z = z - dt * _potential_gradient(z, centers) + diffusion * increment
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
    }
    return X, y, params
