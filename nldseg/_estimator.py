"""The :class:`LangevinSegmenter` estimator."""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import TransformerTags, check_random_state
from sklearn.utils.validation import check_is_fitted

from nldseg import _landscape, _persistence
from nldseg._dynamics import DYNAMICS
from nldseg._fused import release_buffers
from nldseg._model import NeuralLangevinVAE
from nldseg._streaming import SegmentationStream
from nldseg._validation import (
    Sequences,
    check_sequences,
    format_output,
    unchanged_on_error,
)
from nldseg._version import __version__

SOLVERS = frozenset({"euler", "torchsde"})
INITIAL_PRIORS = frozenset({"stationary", "gaussian"})
LEARNING_RATES = frozenset({"cosine", "constant"})
_LR_FLOOR = 0.01  # The cosine schedule ends at this fraction of learning_rate_init.
_N_PARTITION = 4096  # Importance draws of log Z per training step.
_N_OCCUPANCY_DRAWS = 40000  # Importance draws of the sampled occupancy (+-0.005).
_MAX_BAD_STEPS = 8
_CLIP_NORM = 10.0  # Gradient norm clipping of every training step.


def _stepwise_noise(gen: torch.Generator, t_max: int, n_sub: int, rows: int,
                    dim: int) -> torch.Tensor:
    """Standard normal increments (t_max - 1, n_sub, rows, dim), one draw per step.

    Drawing step by step keeps the increments of step ``k`` independent of the
    sequence length: a single large ``torch.randn`` fills its tensor in a
    size-dependent order, which would make labels of a prefix differ from the
    labels of the whole sequence.
    """
    if t_max < 2:
        return torch.empty((0, n_sub, rows, dim))
    return torch.stack([torch.randn((n_sub, rows, dim), generator=gen)
                        for _ in range(t_max - 1)])


def _inference_noise(gen: torch.Generator, t_max: int, n_sub: int, n_samples: int,
                     state_dim: int, latent_dim: int) -> tuple:
    """The draws shared by every sequence at inference.

    Returns ``eps0`` (n_samples, state_dim) for the initial states, then the
    Brownian increments (t_max - 1, n_sub, n_samples, latent_dim), drawn in
    that order; :class:`~nldseg._streaming.SegmentationStream` draws the same
    numbers one step at a time.
    """
    eps0 = torch.randn((n_samples, state_dim), generator=gen)
    return eps0, _stepwise_noise(gen, t_max, n_sub, n_samples, latent_dim)


class _ProgressBar:
    """An in-place progress line on stderr for epochs slower than one second.

    Shown when ``verbose >= 2``, or when ``verbose == 1`` and stderr is a
    terminal; redrawn at most five times a second.
    """

    def __init__(self, verbose: int) -> None:
        self.enabled = bool(verbose) and (verbose >= 2 or sys.stderr.isatty())
        self._last = 0.0
        self._width = 0

    def show(self, epoch: int, n_epochs: int, done: int, total: int, loss: float,
             elapsed: float) -> None:
        now = time.perf_counter()
        if not self.enabled or elapsed < 1.0 or now - self._last < 0.2:
            return
        self._last = now
        filled = int(30 * done / max(total, 1))
        line = (f"\rEpoch {epoch + 1}/{n_epochs} [{'#' * filled}{'.' * (30 - filled)}] "
                f"{done}/{total} batches, loss {loss:.4f}, {elapsed:.0f}s")
        self._width = max(self._width, len(line))
        sys.stderr.write(line)
        sys.stderr.flush()

    def clear(self) -> None:
        if self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
            self._width = 0


class LangevinSegmenter(DensityMixin, BaseEstimator):
    r"""Unsupervised, online segmentation of sequences by Neural Langevin Dynamics.

    A variational autoencoder with a latent SDE (Li et al., 2020) is fitted to
    the sequences. Its prior is Langevin dynamics in a learned energy
    ``E(z) = MLP(z) + c |z|^2``; after training, the wells of ``E`` are the
    discrete states. A time step is labelled by the well that the posterior
    latent state at that step flows into under ``dz/ds = -grad E(z)``. The
    encoder is causal, so the label of step ``t`` uses ``x[:t+1]`` only.

    Parameters
    ----------
    n_states : int or None, default=None
        Number of states. ``None`` keeps every well found (after merging wells
        holding less than ``min_state_fraction`` of the data). An integer merges
        the least-populated wells into the neighbour behind the lowest barrier
        until that many remain, and warns if fewer were found.
    dynamics : {"overdamped", "underdamped"}, default="overdamped"
        Langevin dynamics of the prior (see Notes).
    latent_dim : int, default=3
        Dimension ``d`` of the latent positions (the domain of ``E``).
    beta : float, default=1.0
        Inverse temperature. Fixed unless ``learn_langevin_params=True``, in
        which case it is only the starting value.
    gamma : float, default=1.0
        Friction. Fixed unless ``learn_langevin_params=True``.
    mass : float, default=1.0
        Diagonal mass of underdamped dynamics (ignored when overdamped).
    learn_langevin_params : bool, default=False
        Train beta, gamma and mass along with the networks (as the paper's
        reference code does). With the default ``False`` they are plain
        hyperparameters that can be grid-searched.
    dt : float, default=0.5
        Euler-Maruyama step. Observations are one time unit apart, so ``1/dt``
        must be an integer: the number of solver steps between observations.
    hidden_size : int, default=64
        Width of the GRU encoder, the posterior drift, the energy MLP and the
        decoder.
    context_size : int, default=32
        Size of the encoder context ``c_t`` fed to the posterior drift.
    window_length : int or None, default=50
        Training reads random windows of this many consecutive steps from the
        training sequences (each window starts its own posterior); ``None``
        trains on whole sequences. Short windows make each update cheap; the
        fitted model labels sequences of any length.
    batch_size : int, default=128
        Windows per gradient step.
    max_iter : int, default=40
        Maximum number of epochs (passes over all training time steps).
    learning_rate : {"cosine", "constant"}, default="cosine"
        Schedule of the Adam learning rate. ``"cosine"`` anneals it from
        ``learning_rate_init`` to 1% of it over ``max_iter`` epochs; the
        low-rate end averages out the minibatch noise in the relative depths of
        the wells, which is what ``state_occupancy_`` reads (see Notes).
        Reaching ``max_iter`` is then the planned end of training, not a
        convergence failure. ``"constant"`` keeps ``learning_rate_init``
        throughout and warns if ``max_iter`` is reached before ``tol`` stops
        training.
    learning_rate_init : float, default=3e-3
        Initial Adam learning rate.
    kl_warmup : int, default=200
        Gradient steps over which the KL weight rises linearly from 0 to 1.
    tol : float, default=1e-4
        Minimum improvement of the epoch loss that counts as progress.
    n_iter_no_change : int, default=10
        Epochs without progress (after warm-up) before training stops.
    n_samples : int, default=8
        Posterior paths per sequence used by :meth:`predict_proba`,
        :meth:`predict`, :meth:`transform` and :meth:`score`.
    min_state_fraction : float, default=0.02
        Wells into which less than this fraction of the encoded training data
        flows are merged into a neighbour.
    initial_prior : {"stationary", "gaussian"}, default="stationary"
        Prior of the initial latent state. ``"stationary"``: the prior SDE's
        own stationary law ``exp(-beta E) / Z`` (``log Z`` by importance
        sampling), so that every training window also fits ``exp(-beta E)`` to
        where the data sit; this is what makes the well occupancies reliable.
        ``"gaussian"``: a learned Gaussian, as in the paper.
    solver : {"euler", "torchsde"}, default="euler"
        ``"euler"``: a fused Euler-Maruyama loop with the path KL accumulated
        in place and, in training, a hand-written backward pass.
        ``"torchsde"``: ``torchsde.sdeint(..., logqp=True)`` on the same grid
        (slower; kept as a reference).
    device : str, default="auto"
        ``"auto"`` trains on CUDA when available, else on CPU; or ``"cpu"``,
        ``"cuda"``, ``"cuda:N"``. The fitted ``module_`` is kept on CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, training noise and Monte-Carlo inference.
        Pass an int for reproducible fits and deterministic inference.
    verbose : int, default=0
        0 is silent. 1 prints one line per epoch (loss, KL per step, learning
        rate, time) and, when stderr is a terminal, an in-place progress bar
        during epochs longer than a second. 2 shows the bar on any stderr.

    Attributes
    ----------
    n_states_ : int
        Number of states (wells) kept.
    state_occupancy_ : ndarray of shape (n_states_,)
        Stationary fraction of time in each state under the learned prior, by
        the *sampled* estimate: draws of ``exp(-beta E)`` (importance sampling)
        flowed to their wells. The other two estimates are in
        ``energy_.occupancies``.
    energy_ : EnergyLandscape
        The learned energy: callable on latent points, with ``gradient``,
        ``hessian``, ``minima``, ``minima_energies``, ``predict`` (basin
        labels) and ``occupancy(method)``.
    module_ : torch.nn.Module
        The trained VAE, on CPU.
    beta_, gamma_, mass_ : float
        Fitted Langevin parameters (equal to the hyperparameters unless
        learned).
    n_features_in_ : int
        Number of features seen during :term:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during :term:`fit`, when ``X`` has string
        column names.
    scaler_mean_, scaler_scale_ : ndarray of shape (n_features_in_,)
        Per-feature standardisation fitted on all training time steps.
    loss_curve_ : list of float
        Mean training loss (negative ELBO per step, KL warm-up weight applied)
        of each epoch.
    n_iter_ : int
        Epochs run.
    converged_ : bool
        Whether training stopped on ``tol``/``n_iter_no_change`` before
        ``max_iter``. With ``learning_rate="cosine"`` a run that completes its
        schedule ends at ``max_iter`` by design and has ``converged_=False``
        without a warning.

    See Also
    --------
    nldseg.metrics.segmentation_accuracy : Accuracy after Hungarian matching.
    sklearn.mixture.GaussianMixture : States without dynamics.

    Notes
    -----
    Overdamped prior and posterior (``f_\phi`` is the learned drift correction,
    ``c_t`` the causal GRU context):

    .. math::

        dz = -\gamma^{-1}\nabla E(z)\,dt + \sqrt{2/(\beta\gamma)}\,dW, \qquad
        dz = [-\gamma^{-1}\nabla E(z) + f_\phi(z, c_t)]\,dt
             + \sqrt{2/(\beta\gamma)}\,dW.

    Underdamped, with ``z = (q, p)`` and diagonal mass ``M`` (``f_\phi`` acts on
    ``dp`` only; only ``q`` is decoded):

    .. math::

        dq = M^{-1}p\,dt, \qquad
        dp = [-\nabla E(q) - \gamma M^{-1}p + f_\phi]\,dt
             + \sqrt{2\gamma/\beta}\,dW.

    The ELBO of a sequence, with ``g u = f_\phi`` and a Gaussian decoder:

    .. math::

        \mathbb{E}_q\Big[\sum_t \log p(x_t \mid z_t)
        - \tfrac12 \int_0^T |u_t|^2\,dt\Big]
        - \mathrm{KL}(q(z_0 \mid x_0)\,\|\,p(z_0)).

    Observation ``k`` is at time ``k``; on ``(k-1, k]`` the posterior reads
    ``c_k``, which depends on ``x_0..x_k``. The stationary law of the prior is
    ``exp(-beta E)`` (times ``N(p; 0, M)`` underdamped). Inputs are
    standardised per feature before training.

    Minimum sequence length: :meth:`fit` needs at least 2 time steps in every
    sequence (one transition); :meth:`predict`, :meth:`predict_proba`,
    :meth:`transform` and :meth:`score` accept sequences of 1 step or more.
    Input values must be finite and at most ``1e15`` in magnitude.

    The occupancy of a well is fixed by its depth relative to the others, and
    the only term of the ELBO that sets relative depths is the density fit of
    ``exp(-beta E) / Z`` to the encoded window starts: a weak signal that
    minibatch noise at a constant learning rate leaves visibly off. Hence the
    default cosine schedule: in the paper's experiment (10 seeds) it cut the
    mean l1 error of ``state_occupancy_`` from 0.13 to 0.04.

    Monte-Carlo inference uses the same ``n_samples`` noise draws for every
    sequence, so the output for one sequence does not depend on the other
    sequences passed with it, and :meth:`stream` reproduces it step by step.

    References
    ----------
    S. Koop, M. Peletier, J. Portegies, V. Menkovski. "Neural Langevin
    Dynamics: Towards Interpretable Neural Stochastic Differential Equations",
    NLDL 2024.

    Examples
    --------
    >>> from nldseg import LangevinSegmenter
    >>> from nldseg.datasets import make_markov_chain_sequences
    >>> X, y = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
    >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0)
    >>> labels = seg.fit(X).predict(X)
    >>> labels.shape
    (20, 60)
    >>> seg.state_occupancy_.shape == (seg.n_states_,)
    True
    """

    def __init__(self, n_states=None, *, dynamics="overdamped", latent_dim=3,
                 beta=1.0, gamma=1.0, mass=1.0, learn_langevin_params=False,
                 dt=0.5, hidden_size=64, context_size=32, window_length=50,
                 batch_size=128, max_iter=40, learning_rate="cosine",
                 learning_rate_init=3e-3,
                 kl_warmup=200, tol=1e-4, n_iter_no_change=10, n_samples=8,
                 min_state_fraction=0.02, initial_prior="stationary",
                 solver="euler", device="auto",
                 random_state=None, verbose=0):
        self.n_states = n_states
        self.dynamics = dynamics
        self.latent_dim = latent_dim
        self.beta = beta
        self.gamma = gamma
        self.mass = mass
        self.learn_langevin_params = learn_langevin_params
        self.dt = dt
        self.hidden_size = hidden_size
        self.context_size = context_size
        self.window_length = window_length
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.kl_warmup = kl_warmup
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.n_samples = n_samples
        self.min_state_fraction = min_state_fraction
        self.initial_prior = initial_prior
        self.solver = solver
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        def positive_int(name, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not isinstance(v, Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer"
                                 f"{' or None' if allow_none else ''}, got {v!r}.")

        def positive_real(name):
            v = getattr(self, name)
            if (not isinstance(v, Real) or isinstance(v, bool) or not np.isfinite(v)
                    or v <= 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}.")

        for name in ("latent_dim", "hidden_size", "context_size", "batch_size",
                     "max_iter", "n_iter_no_change", "n_samples"):
            positive_int(name)
        positive_int("n_states", allow_none=True)
        positive_int("window_length", allow_none=True)
        for name in ("beta", "gamma", "mass", "dt", "learning_rate_init"):
            positive_real(name)
        if not isinstance(self.kl_warmup, Integral) or self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be a non-negative integer, got "
                             f"{self.kl_warmup!r}.")
        if not isinstance(self.tol, Real) or self.tol < 0:
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}.")
        if not (isinstance(self.min_state_fraction, Real)
                and 0 <= self.min_state_fraction < 1):
            raise ValueError(f"min_state_fraction must be in [0, 1), got "
                             f"{self.min_state_fraction!r}.")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {sorted(DYNAMICS)}, got "
                             f"{self.dynamics!r}.")
        if self.initial_prior not in INITIAL_PRIORS:
            raise ValueError(f"initial_prior must be one of {sorted(INITIAL_PRIORS)}, "
                             f"got {self.initial_prior!r}.")
        if self.learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of {sorted(LEARNING_RATES)}, "
                             f"got {self.learning_rate!r}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got "
                             f"{self.solver!r}.")
        n_sub = 1.0 / self.dt
        if self.dt > 1 or abs(n_sub - round(n_sub)) > 1e-6:
            raise ValueError(f"dt must be 1/n for a positive integer n (observations "
                             f"are one time unit apart), got {self.dt!r}.")

    def _resolve_device(self) -> torch.device:
        dev = self.device
        if dev == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if not isinstance(dev, str) or not (dev == "cpu" or dev.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {dev!r}.")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={dev!r} was requested but CUDA is not available.")
        return torch.device(dev)

    @property
    def _n_sub(self) -> int:
        return int(round(1.0 / self.dt))

    # --------------------------------------------------------------- training
    def fit(self, X, y=None, *, lengths=None) -> LangevinSegmenter:
        """Fit the Neural Langevin Dynamics VAE and find the states.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Training sequences: one 2-D array (one sequence, or several with
            ``lengths``), a 3-D array, or a list of 2-D arrays of any lengths.
        y : None
            Ignored; present for API consistency.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``; must sum to
            ``n_samples``.

        Returns
        -------
        self : LangevinSegmenter
            The fitted estimator.
        """
        # Any failure (bad input, divergence, Ctrl-C before the first step)
        # restores the estimator exactly as it was, fitted or not.
        with unchanged_on_error(self):
            return self._fit(X, lengths)

    def _fit(self, X, lengths) -> LangevinSegmenter:
        self._check_params()
        device = self._resolve_device()
        seqs = check_sequences(self, X, lengths=lengths, reset=True, min_length=2)
        rs = check_random_state(self.random_state)
        seeds = rs.randint(0, 2**31 - 1, size=4)
        data = seqs.data.astype(np.float64)
        mean = data.mean(0)
        scale = data.std(0)
        scale[~(scale > 1e-12 * np.maximum(1.0, np.abs(mean)))] = 1.0
        z_data = ((data - mean) / scale).astype(np.float32)
        fork = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(int(seeds[0]))
            module = self._build_module(data.shape[1])
        module.to(device)
        try:
            history = self._train(module, torch.as_tensor(z_data, device=device),
                                  seqs.lengths, device, seeds[1])
        finally:
            release_buffers()  # The training kernels' reused work space.
        module.cpu().eval()
        for p in module.parameters():
            p.requires_grad_(False)
        # Everything below only reads the trained module; assign at the end so a
        # failure leaves no half-fitted estimator.
        landscape = self._build_landscape(module, z_data, seqs, seeds[2:])
        self.scaler_mean_ = mean
        self.scaler_scale_ = scale
        self.module_ = module
        beta, gamma, mass = (t.detach() for t in module.langevin_params())
        self.beta_, self.gamma_ = float(beta), float(gamma)
        self.mass_ = float(mass.mean())
        self.energy_ = landscape
        self.n_states_ = landscape.n_states
        self.state_occupancy_ = landscape.occupancy("sampled")
        self.loss_curve_, self.n_iter_, self.converged_ = history
        return self

    def _build_module(self, n_features: int) -> NeuralLangevinVAE:
        """A freshly initialised VAE for these parameters (on CPU)."""
        return NeuralLangevinVAE(
            n_features=n_features, latent_dim=self.latent_dim,
            dynamics=self.dynamics, hidden_size=self.hidden_size,
            context_size=self.context_size, beta=float(self.beta),
            gamma=float(self.gamma), mass=float(self.mass),
            learn_langevin_params=self.learn_langevin_params,
            initial_prior=self.initial_prior)

    def _windows(self, lengths: np.ndarray, rng: np.random.Generator) -> list:
        """Random non-overlapping windows ``(start, length)`` covering every sequence."""
        w = self.window_length
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out = []
        for s0, n in zip(starts, lengths):
            if w is None or n <= w:
                out.append((s0, n))
                continue
            cut = int(rng.integers(0, w))
            edges = [0] + list(range(cut, n, w)) + [n]
            out.extend((s0 + a, b - a) for a, b in zip(edges[:-1], edges[1:])
                       if b - a >= 2)
        return [out[i] for i in rng.permutation(len(out))]

    def _schedule(self, progress: float) -> float:
        """Learning-rate multiplier at ``progress`` (fraction of ``max_iter`` done)."""
        if self.learning_rate == "constant":
            return 1.0
        return _LR_FLOOR + (1.0 - _LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @staticmethod
    def _gather(data: torch.Tensor, windows: list, device) -> tuple:
        """Pad a batch of windows into ``(x, mask)`` of shape (B, T, D), (B, T)."""
        starts = torch.tensor([s for s, _ in windows], device=device)
        lens = torch.tensor([n for _, n in windows], device=device)
        t_max = int(lens.max())
        offs = torch.arange(t_max, device=device)
        mask = offs[None, :] < lens[:, None]
        idx = starts[:, None] + torch.minimum(offs[None, :], lens[:, None] - 1)
        return data[idx], mask.to(data.dtype)

    def _train(self, module, data, lengths, device, seed) -> tuple:
        """Adam on the negative ELBO; returns ``(loss_curve, n_iter, converged)``.

        A non-finite loss or gradient rolls back to the parameters before the
        last step, halves the learning rate (for the rest of the schedule),
        retries the batch with fresh noise and warns. Ctrl-C keeps the model
        of the best full-KL epoch so far (else the last good step) and warns.
        """
        rng = np.random.default_rng(int(seed))
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        params = [p for p in module.parameters() if p.requires_grad]
        lr_init = float(self.learning_rate_init)
        lr_scale = 1.0  # Halved by every rollback; multiplies the schedule.
        lr = lr_init
        opt = torch.optim.Adam(params, lr=lr)
        d, state_dim, n_sub = module.latent_dim, module.state_dim, self._n_sub
        step = 0
        bad_in_a_row = 0
        loss_curve: list[float] = []
        best, no_change, converged = np.inf, 0, False
        best_state = None
        snapshot = (copy.deepcopy(module.state_dict()), copy.deepcopy(opt.state_dict()))
        bar = _ProgressBar(self.verbose)
        try:
            for epoch in range(self.max_iter):
                t0 = time.perf_counter()
                windows = self._windows(lengths, rng)
                n_batches = -(-len(windows) // self.batch_size)
                tot_loss, tot_kl, tot_obs = 0.0, 0.0, 0.0
                for i_batch, b in enumerate(range(0, len(windows), self.batch_size)):
                    x, mask = self._gather(data, windows[b:b + self.batch_size], device)
                    n_rows, t_max = x.shape[0], x.shape[1]
                    n_obs = mask.sum()
                    while True:  # A non-finite step is rolled back and retried.
                        lr = lr_init * lr_scale * self._schedule(
                            (epoch + i_batch / n_batches) / self.max_iter)
                        for group in opt.param_groups:
                            group["lr"] = lr
                        noise = torch.randn((max(t_max - 1, 0), n_sub, n_rows, d),
                                            generator=gen, device=device)
                        eps0 = torch.randn((n_rows, state_dim), generator=gen,
                                           device=device)
                        weight = (min(1.0, (step + 1) / self.kl_warmup)
                                  if self.kl_warmup else 1.0)
                        probe = torch.randn((_N_PARTITION, d), generator=gen,
                                            device=device)
                        log_lik, kl = module.elbo_terms(x, mask, noise, eps0, self.dt,
                                                        solver=self.solver,
                                                        partition_noise=probe)
                        loss = -(log_lik.sum() - weight * kl.sum()) / n_obs
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, _CLIP_NORM)
                        if torch.isfinite(loss) and torch.isfinite(grad_norm):
                            break
                        bad_in_a_row += 1
                        if bad_in_a_row > _MAX_BAD_STEPS:
                            raise RuntimeError(
                                f"Training diverged: {bad_in_a_row} non-finite losses "
                                f"or gradients in a row even after lowering the "
                                f"learning rate to {lr:.2e}. Try a smaller "
                                f"learning_rate_init or dt, or standardise X.")
                        lr_scale *= 0.5
                        module.load_state_dict(snapshot[0])
                        opt.load_state_dict(snapshot[1])
                        warnings.warn(
                            f"Non-finite loss or gradient at step {step}; rolled back "
                            f"to the previous parameters and halved the learning "
                            f"rate (now {0.5 * lr:.2e}).", RuntimeWarning, stacklevel=4)
                    bad_in_a_row = 0
                    snapshot = (copy.deepcopy(module.state_dict()),
                                copy.deepcopy(opt.state_dict()))
                    opt.step()
                    step += 1
                    n = float(n_obs)
                    tot_loss += float(loss.detach()) * n
                    tot_kl += float(kl.detach().sum())
                    tot_obs += n
                    bar.show(epoch, self.max_iter, i_batch + 1, n_batches,
                             tot_loss / max(tot_obs, 1.0), time.perf_counter() - t0)
                bar.clear()
                epoch_loss = tot_loss / max(tot_obs, 1.0)
                loss_curve.append(epoch_loss)
                if self.verbose:
                    print(f"Epoch {epoch + 1}/{self.max_iter}: loss {epoch_loss:.4f}, "
                          f"KL/step {tot_kl / max(tot_obs, 1.0):.4f}, "
                          f"lr {lr:.1e}, {time.perf_counter() - t0:.1f}s", flush=True)
                if step < self.kl_warmup:
                    continue
                if epoch_loss < best - self.tol:
                    best, no_change = epoch_loss, 0
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    no_change += 1
                    if no_change >= self.n_iter_no_change:
                        converged = True
                        break
        except KeyboardInterrupt:
            bar.clear()
            if step == 0:
                raise
            if best_state is not None:
                module.load_state_dict(best_state)
                kept = f"the model of the best epoch so far (loss {best:.4f})"
            else:
                module.load_state_dict(snapshot[0])
                kept = "the parameters of the last completed step"
            warnings.warn(f"Training interrupted by the user after {len(loss_curve)} "
                          f"epoch(s) and {step} step(s); keeping {kept}.",
                          UserWarning, stacklevel=3)
            return loss_curve, len(loss_curve), False
        if step == 0:
            raise RuntimeError("Training failed: no training step gave a finite loss "
                               "and gradient. Try a smaller learning_rate_init or dt, "
                               "or check X.")
        if not converged and self.learning_rate == "constant":
            warnings.warn(f"Stopped after max_iter={self.max_iter} epochs without "
                          f"converging; increase max_iter.", ConvergenceWarning,
                          stacklevel=3)
        return loss_curve, len(loss_curve), converged

    def _build_landscape(self, module, z_data, seqs, seeds):
        """Find wells from encoded training data and estimate occupancies."""
        rng = np.random.default_rng(int(seeds[0]))
        order = rng.permutation(len(seqs.lengths))
        budget, chosen = 20000, []
        for i in order:
            chosen.append(i)
            budget -= int(seqs.lengths[i])
            if budget <= 0:
                break
        offs = seqs.offsets
        sub = Sequences(np.concatenate([z_data[offs[i]:offs[i] + seqs.lengths[i]]
                                        for i in sorted(chosen)]),
                        seqs.lengths[sorted(chosen)], "list")
        z = self._latent_samples(module, sub, n_samples=1, seed=int(seeds[1]))
        codes = z[:, 0, : module.latent_dim].astype(np.float64)
        if len(codes) > 3000:
            codes = codes[rng.choice(len(codes), 3000, replace=False)]
        found = _landscape.find_minima(module.energy, codes)
        minima, code_min = found["minima"], found["code_minimum"]
        counts = np.bincount(code_min[code_min >= 0], minlength=len(minima))
        state_of = _landscape.merge_minima(
            found["energy64"], minima, counts,
            min_fraction=self.min_state_fraction, n_states=self.n_states)
        if self.n_states is not None and state_of.max() + 1 < self.n_states:
            warnings.warn(f"n_states={self.n_states} was requested but the energy has "
                          f"only {state_of.max() + 1} well(s); keeping those.",
                          UserWarning, stacklevel=3)
        beta = float(module.langevin_params()[0])
        landscape = _landscape.EnergyLandscape(
            module.energy, beta, minima, state_of, found["capture_radius"],
            found["step_size"], found["max_step"])
        landscape.build_lookup(codes)
        _landscape.compute_occupancies(landscape, codes, _N_OCCUPANCY_DRAWS, rng)
        occ = landscape.occupancies["sampled"]
        # Largest occupancy first; ties broken by the minimum's coordinates.
        order = np.lexsort((*landscape.minima.T[::-1], -np.round(occ, 12)))
        _landscape.relabel_states(landscape, order)
        return landscape

    # -------------------------------------------------------------- inference
    def _posterior_batches(self, module, seqs: Sequences, n_samples: int,
                           gen: torch.Generator, chunk_rows: int = 4096):
        """Yield ``(ids, x, mask, eps0, noise)`` for padded chunks of sequences.

        Every sequence gets the same ``n_samples`` draws (common random
        numbers): ``eps0`` first, then the increments of each step in turn
        (see :func:`_inference_noise`). So the labels of a sequence do not
        depend on the other sequences in ``X`` nor on the chunking, and equal
        those of :meth:`stream`.
        """
        data = torch.as_tensor(seqs.data)
        offs, n_seq = seqs.offsets, len(seqs.lengths)
        eps0_s, noise_s = _inference_noise(gen, int(seqs.lengths.max()), self._n_sub,
                                           n_samples, module.state_dim,
                                           module.latent_dim)
        per_chunk = max(1, chunk_rows // n_samples)
        for c0 in range(0, n_seq, per_chunk):
            ids = np.arange(c0, min(n_seq, c0 + per_chunk))
            windows = [(int(offs[i]), int(seqs.lengths[i])) for i in ids]
            x, mask = self._gather(data, windows, "cpu")
            # Rows are sequence-major (row = sequence * n_samples + sample).
            eps0 = eps0_s.repeat(len(ids), 1)
            noise = noise_s[: x.shape[1] - 1].repeat(1, 1, len(ids), 1)
            yield ids, x, mask, eps0, noise

    def _latent_samples(self, module, seqs: Sequences, n_samples: int,
                        seed: int) -> np.ndarray:
        """Posterior latent states at every observation, (n_total, S, state_dim)."""
        gen = torch.Generator().manual_seed(int(seed))
        out = np.empty((seqs.data.shape[0], n_samples, module.state_dim),
                       dtype=np.float32)
        offs = seqs.offsets
        with torch.no_grad():
            for ids, x, _, eps0, noise in self._posterior_batches(module, seqs,
                                                                  n_samples, gen):
                paths = module.simulate(x, noise, self.dt, n_samples, eps0=eps0,
                                        solver=self.solver, with_kl=False)
                z = paths.z.reshape(x.shape[1], len(ids), n_samples, -1).numpy()
                for j, i in enumerate(ids):
                    out[offs[i]:offs[i] + seqs.lengths[i]] = z[:seqs.lengths[i], j]
        return out

    def _prepare(self, X, lengths) -> Sequences:
        check_is_fitted(self)
        seqs = check_sequences(self, X, lengths=lengths, reset=False)
        data = (seqs.data.astype(np.float64) - self.scaler_mean_) / self.scaler_scale_
        return Sequences(np.array(data, dtype=np.float32), seqs.lengths, seqs.form)

    def _inference_seed(self) -> int:
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def predict_proba(self, X, *, lengths=None):
        """Probability of each state at every time step (online).

        The posterior SDE is sampled ``n_samples`` times per sequence; the
        probability of state ``k`` at step ``t`` is the fraction of samples
        whose latent state at ``t`` lies in the basin of well ``k``. Step ``t``
        uses ``x[:t+1]`` only. Deterministic for an integer ``random_state``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Sequences, in any form accepted by :meth:`fit`.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_states_), \
                (n_sequences, n_timesteps, n_states_) or list of arrays
            Mirrors the form of ``X``.
        """
        seqs = self._prepare(X, lengths)
        return format_output(seqs, self._proba(seqs))

    def _proba(self, seqs: Sequences) -> np.ndarray:
        z = self._latent_samples(self.module_, seqs, self.n_samples,
                                 self._inference_seed())
        d = self.module_.latent_dim
        return self.energy_._state_fractions(torch.as_tensor(z[..., :d]))

    def predict(self, X, *, lengths=None):
        """State label of every time step (online): the argmax of ``predict_proba``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Sequences, in any form accepted by :meth:`fit`.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``.

        Returns
        -------
        labels : ndarray of shape (n_samples,), (n_sequences, n_timesteps) \
                or list of arrays
            Integer states in ``0..n_states_-1``; mirrors the form of ``X``.
        """
        seqs = self._prepare(X, lengths)
        return format_output(seqs, self._proba(seqs).argmax(1))

    def fit_predict(self, X, y=None, *, lengths=None):
        """Fit, then label the training sequences; same as ``fit(X).predict(X)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Training sequences.
        y : None
            Ignored.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``.

        Returns
        -------
        labels : ndarray or list of ndarray
            As :meth:`predict`.
        """
        return self.fit(X, lengths=lengths).predict(X, lengths=lengths)

    def transform(self, X, *, lengths=None):
        """Posterior-mean latent path (positions), averaged over ``n_samples`` paths.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Sequences, in any form accepted by :meth:`fit`.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``.

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim), \
                (n_sequences, n_timesteps, latent_dim) or list of arrays
            Mirrors the form of ``X``; underdamped models return the positions
            ``q`` only.
        """
        seqs = self._prepare(X, lengths)
        z = self._latent_samples(self.module_, seqs, self.n_samples,
                                 self._inference_seed())
        mean = z[..., : self.module_.latent_dim].mean(1).astype(np.float64)
        return format_output(seqs, mean)

    def fit_transform(self, X, y=None, *, lengths=None):
        """Fit, then return the posterior-mean latent path of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Training sequences.
        y : None
            Ignored.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``.

        Returns
        -------
        Z : ndarray or list of ndarray
            As :meth:`transform`.
        """
        return self.fit(X, lengths=lengths).transform(X, lengths=lengths)

    def score(self, X, y=None, *, lengths=None, sample_weight=None) -> float:
        """Mean ELBO per time step (higher is better).

        The ELBO is estimated with ``n_samples`` posterior paths per sequence
        and expressed in the units of ``X`` (the standardisation's Jacobian is
        included), so scores of different models on the same data compare.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Sequences, in any form accepted by :meth:`fit`.
        y : None
            Ignored.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``.
        sample_weight : None
            Not supported; present because scikit-learn's ``Pipeline.score``
            passes ``sample_weight=None`` when metadata routing is enabled.

        Returns
        -------
        score : float
            Evidence lower bound divided by the number of time steps.
        """
        if sample_weight is not None:
            raise ValueError("LangevinSegmenter.score does not support "
                             "sample_weight.")
        seqs = self._prepare(X, lengths)
        module = self.module_
        gen = torch.Generator().manual_seed(self._inference_seed())
        probe = torch.randn((2 * _N_PARTITION, module.latent_dim), generator=gen)
        s = self.n_samples
        total = 0.0
        with torch.no_grad():
            for _, x, mask, eps0, noise in self._posterior_batches(module, seqs, s, gen):
                log_lik, kl = module.elbo_terms(x, mask, noise, eps0, self.dt, s,
                                                solver=self.solver,
                                                partition_noise=probe)
                total += float((log_lik - kl).sum()) / s
        n_total = seqs.data.shape[0]
        return float(total / n_total - np.log(self.scaler_scale_).sum())

    # ------------------------------------------------------- serving and I/O
    def stream(self) -> SegmentationStream:
        """Open a stateful online labeller for one new sequence.

        ``stream().update(x_t)`` consumes one observation and returns its label
        and state probabilities, carrying the encoder and latent state between
        calls; after ``t + 1`` updates they equal ``predict(x[:t + 1])[t]`` and
        ``predict_proba(x[:t + 1])[t]``. Open one stream per sequence; streams
        are independent of each other and of later refits.

        Returns
        -------
        stream : SegmentationStream
            A stream at the start of a sequence.

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> stream = seg.stream()
        >>> online = [stream.update(x_t)[0] for x_t in X[0]]
        >>> bool((online == seg.predict(X[0])).all())
        True
        """
        check_is_fitted(self)
        return SegmentationStream(self)

    def save(self, path) -> None:
        """Write the fitted model to ``path`` in a safe, pickle-free format.

        Parameters and fitted scalars are stored as JSON text and weights and
        fitted arrays as tensors, in one file that :meth:`load` reads with
        ``torch.load(weights_only=True)``: loading a file from an untrusted
        place cannot execute code, unlike pickle or joblib.

        Parameters
        ----------
        path : str or path-like
            File to write (conventionally ``*.nldseg``).

        Raises
        ------
        TypeError
            If a parameter is not a JSON value (e.g. ``random_state`` is a
            ``RandomState`` instance; pass an int instead).

        See Also
        --------
        load : Read a model written by this method.
        """
        _persistence.save_estimator(self, path)

    @classmethod
    def load(cls, path) -> LangevinSegmenter:
        """Read a model written by :meth:`save`, without executing code.

        Warns with :class:`~nldseg.InconsistentVersionWarning` when the file
        was written by another nldseg version.

        Parameters
        ----------
        path : str or path-like
            File written by :meth:`save`.

        Returns
        -------
        estimator : LangevinSegmenter
            The fitted model, on CPU; ``predict`` gives the same output as the
            model that was saved.

        Raises
        ------
        ValueError
            If the file is not an nldseg model, is damaged, or would need
            arbitrary Python objects to load.

        Examples
        --------
        >>> import os, tempfile
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.nldseg")
        >>> seg.save(path)
        >>> bool((LangevinSegmenter.load(path).predict(X) == seg.predict(X)).all())
        True
        """
        return _persistence.load_estimator(cls, path)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_nldseg_version"] = __version__
        return state

    def __setstate__(self, state):
        state = dict(state)
        _persistence.warn_if_other_version(state.pop("_nldseg_version", None))
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags
