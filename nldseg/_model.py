"""Torch modules of the Neural Langevin Dynamics VAE (no numpy, no sklearn).

Each network is written here once as plain formulas, which autograd
differentiates and which are the reference for the folded kernels of
:mod:`nldseg._fused` (training kernels, inference stepper, gradient flows);
each module exposes its tensors as a named tuple (``weights()``) for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nldseg._dynamics import PosteriorLangevinSDE, euler_step, step_coefficients
from nldseg._fused import (
    DriftWeights,
    EnergyWeights,
    GRUWeights,
    InferenceStepper,
    LinearWeights,
    euler_path,
    gru_sequence,
)

_LOG_2PI = math.log(2.0 * math.pi)
_EXP_FLOOR = -80.0  # exp(-80) ~ 2e-35: a term this far below the largest is dropped.
#: Features of the latent state that move the decoder noise with
#: ``decoder_covariance="latent"``: up to NOISE_RANK + 1 wells can have any
#: noise covariances of their own.
NOISE_RANK = 8
#: Squared projections the ``"quadratic"`` encoder adds to each frame.
QUADRATIC_FEATURES = 32
#: Degrees of freedom a Student-t decoder noise (``decoder_noise="student"``)
#: starts at, per feature; learned from there.
STUDENT_DF_INIT = 10.0
#: Bounds of the learned degrees of freedom. Above 2 the noise has a
#: variance (its scale stays a scale); at 200 its density is a Gaussian's to
#: within 1 % out to 2 scales (8 % at 3).
STUDENT_DF_BOUNDS = (2.1, 200.0)
#: Learning rate of the degrees of freedom, a multiple of the other
#: parameters' (:meth:`NeuralLangevinVAE.learning_rate_factors`). Adam moves
#: a parameter by about its learning rate per step, whatever its gradient:
#: at the common rate ``log(df - 2)`` would need about 1,000 steps to travel
#: from its start to a bound, and would drift through the whole budget,
#: each move a small held-out gain that holds off early stopping.
STUDENT_DF_LR_FACTOR = 10.0


def _normal_log_pdf(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor | None = None,
                    *, log_std: torch.Tensor | None = None) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over the last axis.

    Given by its ``scale``, or by ``log_std`` (then ``scale`` is not used).
    """
    if log_std is None:
        eps, log_scale = (x - loc) / scale, torch.log(scale)
    else:
        eps, log_scale = (x - loc) * torch.exp(-log_std), log_std
    return (-0.5 * eps * eps - log_scale - 0.5 * _LOG_2PI).sum(-1)


def _noise_log_norm(df: torch.Tensor | None, n: int) -> torch.Tensor | float:
    """Log normalising constant of ``n`` standard whitened noise features.

    Gaussian for ``df=None``: ``-n/2 log(2 pi)``; else the product of
    Student-t densities with ``df`` (n,) degrees of freedom, without their
    scales: ``sum_i log Gamma((df_i + 1) / 2) - log Gamma(df_i / 2) - log(pi
    df_i) / 2``.
    """
    if df is None:
        return -0.5 * n * _LOG_2PI
    return (torch.lgamma(0.5 * (df + 1.0)) - torch.lgamma(0.5 * df)
            - 0.5 * torch.log(math.pi * df)).sum(-1)


def _noise_log_kernel(white: torch.Tensor, df: torch.Tensor | None) -> torch.Tensor:
    """The part of :func:`_noise_log_norm`'s density that depends on ``white`` (..., D).

    Summed over the last axis: ``-|w|^2 / 2`` for a Gaussian (``df=None``),
    ``-sum_i (df_i + 1) / 2 log(1 + w_i^2 / df_i)`` for a Student-t, where
    each feature's outlier costs the log of its size, not its square.
    """
    if df is None:
        return -0.5 * (white * white).sum(-1)
    return (-0.5 * (df + 1.0) * torch.log1p(white * white / df)).sum(-1)


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logsumexp(x, dim)``, less the terms below ``exp(-80)`` times the largest.

    On CPU, ``exp`` of an argument below about -88 (a float32 denormal or
    zero) takes tens of times longer than of a normal one; the ``log Z``
    proposal's mixture densities of draws far from most components are
    thousands of nats down, which made its ``logsumexp`` about 3 % of a
    training step. Clamping the shifted terms at -80 keeps every ``exp``
    normal; a dropped term changes the sum by under ``2e-35`` relative (and
    gets no gradient, where its true one is as small). A slice whose largest
    term is infinite or NaN gives that term, as ``torch.logsumexp`` does.
    """
    top = x.detach().amax(dim, keepdim=True)
    finite = torch.isfinite(top)
    shift = torch.where(finite, top, torch.zeros_like(top))
    out = (x - shift).clamp_min(_EXP_FLOOR).exp().sum(dim).log() + shift.squeeze(dim)
    return torch.where(finite.squeeze(dim), out, top.squeeze(dim))


def _mixture_log_pdfs(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                      log_weight: torch.Tensor) -> torch.Tensor:
    """``log w_b + log N(x_n; loc_b, diag(scale_b^2))`` for every pair, (N, B).

    Expands the square, so that all pairs are one matrix product of
    ``[x^2, x, 1]`` (N, 2d + 1) with per-component coefficients instead of an
    (N, B, d) tensor: ``-0.5 sum_i w_i (x_i - m_i)^2 = -0.5 x^2 . w + x . (m w)
    - 0.5 m^2 . w`` with ``w = 1 / scale^2``. Computed in float64, where
    the expansion's cancellation costs nothing that matters; centre ``x`` and
    ``loc`` first (e.g. on the components' mean) all the same.
    """
    dtype = x.dtype
    x, loc, scale = x.double(), loc.double(), scale.double()  # Cancellation.
    w = scale.pow(-2)
    const = (log_weight.double() - 0.5 * (loc * loc * w).sum(1)
             - torch.log(scale).sum(1) - 0.5 * x.shape[1] * _LOG_2PI)
    feats = torch.cat([x * x, x], 1)
    coefs = torch.cat([-0.5 * w, loc * w], 1).t()
    return torch.addmm(const, feats, coefs).to(dtype)


def _inv_softplus(y: float) -> float:
    """Inverse of ``softplus`` for a positive float."""
    return y + math.log(-math.expm1(-y))


def _latent_precision_times(r: torch.Tensor, diag: torch.Tensor, u: torch.Tensor,
                            lower: torch.Tensor, against_points: bool = False
                            ) -> torch.Tensor:
    """``P(z) r`` with ``P(z) = diag(d(z)) + S_0 + sum_k u_k(z) S_k``.

    The one home of the latent decoder's precision factor
    (``decoder_covariance="latent"``, see
    :meth:`NeuralLangevinVAE._latent_precision`). ``diag`` (..., D) and ``u``
    (..., R) are ``d(z)`` and ``u(z)``; ``lower`` (R + 1, D, D) holds
    ``S_0..S_R``.

    ``against_points=False``: ``r`` (..., D) is aligned with ``diag`` and
    ``u``; the products ``S_k r`` are matrix products (training's path).
    ``True``: frames ``r`` (T, D) against points ``diag`` (P, D), ``u`` (P, R),
    giving (T, P, D); ``S_k r`` once per frame, as elementwise products summed
    over the last axis, so that a frame's value does not depend on the frames
    that come with it.
    """
    if against_points:
        products = (lower * r[:, None, None, :]).sum(-1)[:, None]  # (T, 1, R + 1, D)
        first, rest, r = products[..., 0, :], products[..., 1:, :], r[:, None, :]
    else:
        n_feat, rank = r.shape[-1], u.shape[-1]
        first = r @ lower[0].T
        rest = (r @ lower[1:].permute(2, 0, 1).reshape(n_feat, rank * n_feat)
                ).unflatten(-1, (rank, n_feat))
    return diag * r + first + (u.unsqueeze(-1) * rest).sum(-2)


class EnergyMLP(nn.Module):
    """``E(z) = w . tanh(W2 tanh(W1 z + b1) + b2) + c |z|^2`` with ``c > 0``.

    The gradient is written out analytically (two matrix products back through
    the network) instead of using ``autograd.grad(create_graph=True)``: it is
    the hot path of every Euler step, and the explicit form is a plain
    differentiable expression that costs one ordinary backward. Without
    autograd (flows, inference) the same gradient runs on the folded weights
    of :func:`nldseg._fused.folded_energy_grad`.
    ``c = softplus(raw) + c_min`` keeps ``exp(-beta E)`` normalisable.
    """

    def __init__(self, latent_dim: int, hidden: int, c_init: float = 0.1,
                 c_min: float = 1e-3) -> None:
        super().__init__()
        self.lin1 = nn.Linear(latent_dim, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        self.c_min = c_min
        self.raw_c = nn.Parameter(torch.tensor(_inv_softplus(c_init - c_min)))

    @property
    def c(self) -> torch.Tensor:
        """Positive weight of the confining quadratic term."""
        return F.softplus(self.raw_c) + self.c_min

    def weights(self) -> EnergyWeights:
        """The tensors the kernels of :mod:`nldseg._fused` read."""
        return EnergyWeights(self.lin1.weight, self.lin1.bias, self.lin2.weight,
                             self.lin2.bias, self.out.weight, self.c)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Energy of ``z`` (..., latent_dim) -> (...)."""
        h2 = torch.tanh(self.lin2(torch.tanh(self.lin1(z))))
        return self.out(h2).squeeze(-1) + self.c * (z * z).sum(-1)

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        """Analytic ``grad E(z)``, same shape as ``z``."""
        w1, w2 = self.lin1.weight, self.lin2.weight
        h1 = torch.tanh(F.linear(z, w1, self.lin1.bias))
        h2 = torch.tanh(F.linear(h1, w2, self.lin2.bias))
        d2 = (1.0 - h2 * h2) * self.out.weight[0]
        d1 = (1.0 - h1 * h1) * (d2 @ w2)
        return torch.addmm(2.0 * self.c * z, d1, w1) if z.dim() == 2 else (
            d1 @ w1 + 2.0 * self.c * z)


class PosteriorDrift(nn.Module):
    """Posterior drift correction ``f_phi(z, c_t) = W_o tanh(W_s z + P(c_t)) + b_o``.

    The context enters the first layer linearly, so its projection ``P`` for
    every observation is computed once per sequence (:meth:`project_context`)
    and the Euler loop only adds it.
    """

    def __init__(self, state_dim: int, context_size: int, hidden: int,
                 out_dim: int) -> None:
        super().__init__()
        self.state_in = nn.Linear(state_dim, hidden, bias=False)
        self.context_in = nn.Linear(context_size, hidden)
        self.out = nn.Linear(hidden, out_dim)
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    def weights(self) -> DriftWeights:
        """The tensors the kernels of :mod:`nldseg._fused` read."""
        return DriftWeights(self.state_in.weight, self.out.weight, self.out.bias,
                            self.context_in.weight, self.context_in.bias)

    def project_context(self, context: torch.Tensor) -> torch.Tensor:
        """First-layer contribution of the context, (..., context) -> (..., hidden)."""
        return self.context_in(context)

    def forward(self, state: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """Drift correction at ``state`` given a projected context."""
        return self.out(torch.tanh(self.state_in(state) + projected))


@dataclass
class LatentPaths:
    """Result of simulating the posterior SDE over padded sequences."""

    z: torch.Tensor  # (n_timesteps, batch, state_dim), latent state at observations
    kl_path: torch.Tensor | None  # (n_timesteps, batch), KL on (t_{k-1}, t_k]
    kl0: torch.Tensor | None  # (batch,), KL(q(z_0|x_0) || p(z_0))
    log_z: torch.Tensor | None = None  # log Z of the stationary law used by kl0


class NeuralLangevinVAE(nn.Module):
    """Latent-SDE VAE whose prior is Langevin dynamics in a learned energy.

    Parameters
    ----------
    n_features : int
        Observation dimension ``D``.
    latent_dim : int
        Dimension ``d`` of the energy's domain (positions).
    dynamics : {"overdamped", "underdamped"}
        The latent state is ``z`` (``d``) or ``(q, p)`` (``2 d``).
    hidden_size : int
        Width of the GRU, the posterior drift, the energy and the decoder.
    context_size : int
        Size of the context ``c_t`` fed to the posterior drift.
    beta, gamma, mass : float
        Initial (or fixed) inverse temperature, friction and mass.
    learn_langevin_params : bool
        Whether beta, gamma and mass are trained.
    initial_prior : {"stationary", "gaussian"}
        ``p(z_0)``: the prior's stationary law ``exp(-beta E) / Z`` (times
        ``N(p; 0, M / beta)`` underdamped), or a learned diagonal Gaussian.
    decoder_covariance : {"full", "diag", "latent"}
        Noise of ``p(x_t | z_t) = N(decoder(z_t), Sigma)``: a learned full
        covariance ``Sigma = L L^T`` (``L`` lower triangular with a positive
        diagonal), a learned diagonal, or a full covariance that depends on
        ``z_t`` through :data:`NOISE_RANK` features of the decoder's hidden
        layer (:meth:`_latent_precision`).
    encoder_input : {"linear", "quadratic"}
        What the GRU reads at each step: the frame ``x_t``, or ``x_t`` beside
        :data:`QUADRATIC_FEATURES` learned squared projections
        ``(W x_t + b)^2`` (:meth:`encoder_frames`), so that a change of the
        frames' covariance is as plain to the gates as a change of their mean.
    decoder_noise : {"gaussian", "student"}
        The law of the whitened residuals ``w = L^-1 (x - g(z))``: standard
        normal, or independent Student-t with learned degrees of freedom per
        feature (:meth:`decoder_df`), so that a rare large value costs the
        log of its size rather than its square.
    """

    def __init__(self, n_features: int, latent_dim: int, dynamics: str,
                 hidden_size: int, context_size: int, beta: float, gamma: float,
                 mass: float, learn_langevin_params: bool,
                 initial_prior: str = "stationary",
                 decoder_covariance: str = "diag",
                 encoder_input: str = "linear",
                 decoder_noise: str = "gaussian") -> None:
        super().__init__()
        self.decoder_noise = decoder_noise
        self.latent_dim = latent_dim
        self.dynamics = dynamics
        self.initial_prior = initial_prior
        self.decoder_covariance = decoder_covariance
        self.state_dim = latent_dim if dynamics == "overdamped" else 2 * latent_dim
        self.encoder_input = encoder_input
        gru_in = n_features
        if encoder_input == "quadratic":
            self.enc_quad = nn.Linear(n_features, QUADRATIC_FEATURES)
            gru_in += QUADRATIC_FEATURES
        self.gru = nn.GRU(gru_in, hidden_size, batch_first=True)
        self.context = nn.Linear(hidden_size, context_size)
        self.q0 = nn.Linear(hidden_size, 2 * self.state_dim)
        if initial_prior == "gaussian":
            self.p0_mean = nn.Parameter(torch.zeros(self.state_dim))
            self.p0_log_std = nn.Parameter(torch.zeros(self.state_dim))
        self.energy = EnergyMLP(latent_dim, hidden_size)
        self.drift_net = PosteriorDrift(self.state_dim, context_size, hidden_size,
                                        latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_size), nn.Tanh(),
            nn.Linear(hidden_size, n_features),
        )
        self.dec_log_std = nn.Parameter(torch.full((n_features,), math.log(0.5)))
        if decoder_noise == "student":  # log(df - 2), per feature.
            self.dec_log_df = nn.Parameter(
                torch.full((n_features,), math.log(STUDENT_DF_INIT - 2.0)))
        if decoder_covariance == "full":  # Below the diagonal of L; starts diagonal.
            self.dec_cov_lower = nn.Parameter(torch.zeros((n_features, n_features)))
        if decoder_covariance == "latent":
            # L(z)^-1 from the decoder's hidden layer (_latent_precision); the
            # parts that move it start at zero, so training starts as "full".
            self.dec_noise_in = nn.Linear(hidden_size, NOISE_RANK)
            self.dec_noise_diag = nn.Linear(NOISE_RANK, n_features)
            nn.init.zeros_(self.dec_noise_diag.weight)
            nn.init.zeros_(self.dec_noise_diag.bias)
            self.dec_prec_lower = nn.Parameter(torch.zeros((n_features, n_features)))
            self.dec_noise_lower = nn.Parameter(
                torch.zeros((NOISE_RANK, n_features, n_features)))
        learn = bool(learn_langevin_params)
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta)), requires_grad=learn)
        self.log_gamma = nn.Parameter(torch.tensor(math.log(gamma)),
                                      requires_grad=learn)
        self.log_mass = nn.Parameter(torch.full((latent_dim,), math.log(mass)),
                                     requires_grad=learn)

    #: Leading features of each frame the decoder conditions on rather than
    #: explains (see :meth:`decode_log_prob`): the previous observations of
    #: a delay embedding, set by :func:`build_model`; 0 otherwise.
    given_features = 0

    @property
    def decoded_features(self) -> int:
        """Features of each frame the likelihood explains: all but ``given_features``."""
        return self.dec_log_std.shape[0] - self.given_features

    def __setstate__(self, state: dict) -> None:
        state.setdefault("decoder_covariance", "diag")  # Pickled by an older version.
        state.setdefault("encoder_input", "linear")
        state.setdefault("decoder_noise", "gaussian")
        super().__setstate__(state)

    def langevin_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(beta, gamma, mass)`` as positive tensors."""
        return self.log_beta.exp(), self.log_gamma.exp(), self.log_mass.exp()

    def encode(self, x: torch.Tensor):
        """Run the causal encoder once over padded sequences ``x`` (B, T, D).

        Returns the projected drift context (B, T, hidden) and the mean and log
        std of ``q(z_0 | x_0)``, which read the GRU output at step 0 only.
        """
        h, mean, log_std = self._encode_hidden(x)
        return self.project_context(h), mean, log_std

    def gru_weights(self) -> GRUWeights:
        """The encoder GRU's tensors, for the kernels of :mod:`nldseg._fused`."""
        gru = self.gru
        return GRUWeights(gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0,
                          gru.bias_hh_l0)

    def inference_stepper(self, dt: float) -> InferenceStepper:
        """The folded posterior stepper of this model (no autograd)."""
        return InferenceStepper(self.drift_net.weights(), self.energy.weights(),
                                LinearWeights(self.context.weight, self.context.bias),
                                self.step_coefficients(dt), dt)

    def encoder_frames(self, x: torch.Tensor) -> torch.Tensor:
        """What the GRU reads for frames ``x`` (..., D): ``x``, or ``[x, (W x + b)^2]``."""
        if self.encoder_input == "linear":
            return x
        return torch.cat([x, self.enc_quad(x).square()], -1)

    def _encode_hidden(self, x: torch.Tensor, h_init: torch.Tensor | None = None):
        """GRU outputs (B, T, hidden) and ``q(z_0 | x_0)``'s mean and log std.

        ``h_init`` (B, hidden): the GRU state before ``x[:, 0]`` (see
        :meth:`encoder_state`); ``None``, the zero state of a sequence start.
        """
        x = self.encoder_frames(x)
        if torch.is_grad_enabled() and x.device.type == "cpu":
            h, h0 = gru_sequence(self.gru_weights(), x, h_init)  # Hand-written backward.
        else:  # Inference, or CUDA, where torch's GRU is cuDNN's fused kernel.
            h, _ = self.gru(x, None if h_init is None else h_init[None])
            h0 = h[:, 0]
        return (h, *self.initial_posterior(h0))

    @torch.no_grad()
    def encoder_state(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """GRU state after reading ``frames`` (B, L, D), without autograd.

        Row ``b`` reads its first ``lengths[b]`` frames from the zero state (a
        row of none keeps it). Training reads the observations before a
        window with it, so that the window's ``q(z_0)`` starts from what the
        encoder knew there.
        """
        h = frames.new_zeros((frames.shape[0], self.gru.hidden_size))
        rows = torch.nonzero(lengths > 0).flatten()
        if len(rows):
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                self.encoder_frames(frames[rows]), lengths[rows].cpu(),
                batch_first=True, enforce_sorted=False)
            h[rows] = self.gru(packed)[1][0]
        return h

    def project_context(self, h: torch.Tensor) -> torch.Tensor:
        """Projected drift context from GRU outputs ``h`` (..., hidden)."""
        return self.drift_net.project_context(self.context(h))

    def initial_posterior(self, h0: torch.Tensor):
        """Mean and (clamped) log std of ``q(z_0 | x_0)`` from the first GRU output."""
        mean, log_std = self.q0(h0).chunk(2, dim=-1)
        return mean, log_std.clamp(-8.0, 4.0)

    def initial_codes(self, x0: torch.Tensor, h: torch.Tensor | None = None):
        """:meth:`initial_posterior` of first frames ``x0`` (rows, D).

        Read from the GRU state ``h`` (rows, hidden) before them, or alone
        (``None``).
        """
        return self.initial_posterior(self.gru_step(x0, h))

    def simulate(self, x: torch.Tensor, noise: torch.Tensor, dt: float,
                 n_paths: int = 1, *, eps0: torch.Tensor | None = None,
                 solver: str = "euler",
                 partition_noise: torch.Tensor | None = None,
                 proposal: tuple | None = None,
                 with_kl: bool = True,
                 h_init: torch.Tensor | None = None,
                 fixed_prior_rows: torch.Tensor | None = None) -> LatentPaths:
        """Sample posterior latent paths for padded sequences ``x`` (B, T, D).

        Parameters
        ----------
        x : Tensor of shape (B, T, D)
        noise : Tensor of shape (T - 1, n_sub, B * n_paths, latent_dim)
            Standard normal Brownian increments (divided by ``sqrt(dt)``).
        dt : float
            Euler step, ``1 / n_sub``.
        n_paths : int
            Posterior paths per sequence; batch rows are sequence-major
            (``row = sequence * n_paths + path``).
        eps0 : Tensor of shape (B * n_paths, state_dim) or None
            Standard normal draws for ``z_0``; ``None`` uses the mean.
        solver : {"euler", "torchsde"}
            The fused loop, or torchsde's generic ``sdeint`` on the same grid
            and the same Brownian increments.
        partition_noise : Tensor of shape (N, latent_dim) or None
            Standard normal draws for the ``log Z`` estimate of
            :meth:`log_partition` (proposal centred on the batch's encoded
            initial states); without them a stationary initial prior leaves
            ``kl0`` as None.
        proposal : tuple of two Tensors of shape (N0, state_dim), or None
            Means and log stds of ``q(z_0 | x_0)`` on which the ``log Z``
            proposal is centred instead of this batch's (data-parallel
            training passes the whole batch's, so that every share of it
            gets the same estimate).
        with_kl : bool
            Whether the path KL is needed; without autograd ``False`` skips it
            and leaves ``kl_path`` as None.
        h_init : Tensor of shape (B, hidden) or None
            The encoder's state before ``x[:, 0]`` (:meth:`encoder_state` of
            the observations before a training window); ``None``: the zero
            state of a sequence start.
        fixed_prior_rows : Tensor of shape (B,) of bool, or None
            Rows whose ``KL(q(z_0) || p(z_0))`` trains ``q`` but not the
            stationary prior (see :meth:`initial_state`).

        Without autograd (inference) the fused loop runs on
        :class:`nldseg._fused.InferenceStepper`; with autograd (training) on
        :func:`nldseg._fused.euler_path`, whose backward is hand-written.
        """
        inference = solver == "euler" and not torch.is_grad_enabled()
        if inference and x.device.type == "cpu":
            # The GRU runs step by step inside the Euler loop (see
            # _simulate_inference); here only its first step, for q(z_0 | x_0).
            h, h0 = None, self.gru_step(x[:, 0], h_init)
            mean, log_std = self.initial_posterior(h0)
        else:
            (h, mean, log_std), h0 = self._encode_hidden(x, h_init), None
        z, kl0, log_z = self.initial_state(mean, log_std, eps0, n_paths, partition_noise,
                                            proposal, fixed_prior_rows)
        if inference:
            paths = self._simulate_inference(x, h, h0, z, noise, dt, kl0, with_kl)
            return replace(paths, log_z=log_z)
        projected = self.project_context(h)
        if n_paths > 1:
            projected = projected.repeat_interleave(n_paths, dim=0)
        if solver == "torchsde":
            paths = self._simulate_torchsde(z, projected, noise, dt, kl0)
            return replace(paths, log_z=log_z)
        coef = self.step_coefficients(dt)
        zs, sq = euler_path(z, projected, noise * coef["noise_scale"],
                            self.drift_net.weights(), self.energy.weights(), coef, dt)
        return LatentPaths(zs, sq * coef["kl_scale"], kl0, log_z)

    def initial_state(self, mean: torch.Tensor, log_std: torch.Tensor,
                      eps0: torch.Tensor | None, n_paths: int = 1,
                      partition_noise: torch.Tensor | None = None,
                      proposal: tuple | None = None,
                      fixed_prior_rows: torch.Tensor | None = None) -> tuple:
        """``(z_0, KL(q(z_0 | x_0) || p(z_0)), log Z)``, ``z_0`` drawn from ``q``.

        ``mean`` and ``log_std`` (B, state_dim) come from
        :meth:`initial_posterior`; each row is repeated ``n_paths`` times
        before ``eps0`` (B * n_paths, state_dim) is added (``None``: the mean).
        A stationary initial prior needs ``partition_noise`` for ``log Z``;
        without it the KL is None (latent paths alone). ``proposal``: see
        :meth:`simulate`. ``log Z``: the stationary law's estimate the KL
        used (None without one).

        ``fixed_prior_rows`` (B,) marks rows whose stationary ``log p(z_0)``
        is taken with the energy, ``beta``, the mass and ``log Z`` held fixed:
        the same value, but its gradient reaches ``q`` (through ``z_0``) and
        not the prior. Training marks the windows that begin a sequence when
        others have observations before them: their ``z_0`` is encoded from
        ``x_0`` alone, and where one frame says little about the state the
        encoder puts every such start in one well, which the density fit of
        ``exp(-beta E)`` would then deepen (on the suite's ``regimes`` case
        every sequence start went to one well, whose share of the stationary
        law was 0.41 against a true 0.33).
        """
        log_z = None
        if self.initial_prior == "stationary" and partition_noise is not None:
            log_z = self._log_z_from_codes(*(proposal or (mean, log_std)),
                                           partition_noise)
        if n_paths > 1:
            mean = mean.repeat_interleave(n_paths, dim=0)
            log_std = log_std.repeat_interleave(n_paths, dim=0)
        z = mean if eps0 is None else mean + log_std.exp() * eps0
        if self.initial_prior == "gaussian":
            kl0 = _gaussian_kl(mean, log_std, self.p0_mean, self.p0_log_std)
        elif log_z is not None:
            kl0 = self._stationary_kl0(z, mean, log_std, log_z)
            if fixed_prior_rows is not None and bool(fixed_prior_rows.any()):
                fixed = self._stationary_kl0(z, mean, log_std, log_z, frozen=True)
                kl0 = torch.where(fixed_prior_rows.repeat_interleave(n_paths), fixed, kl0)
        else:
            kl0 = None
        return z, kl0, log_z

    def gru_step(self, x_t: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One encoder step at inference: ``x_t`` (rows, D) from ``h`` (rows, hidden).

        ``torch.gru_cell``, which gives ``self.gru``'s outputs; ``h=None`` is
        the zero initial state. Shared by :meth:`simulate` and the stream, so
        that both step the encoder alike.
        """
        gru = self.gru
        if h is None:
            h = x_t.new_zeros((x_t.shape[0], gru.hidden_size))
        return torch.gru_cell(self.encoder_frames(x_t), h, gru.weight_ih_l0,
                              gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)

    def _simulate_inference(self, x, h, h0, z0, noise, dt, kl0,
                            with_kl) -> LatentPaths:
        """:meth:`simulate` without autograd: ``z0``, then :meth:`continue_paths`."""
        zs, _, sq = self.continue_paths(x[:, 1:], h0, z0, noise, dt, with_kl,
                                        None if h is None else h[:, 1:])
        zs = torch.cat([z0[None], zs])
        if sq is not None:
            sq = torch.cat([sq.new_zeros((1, sq.shape[1])), sq])
        return LatentPaths(zs, sq, kl0)

    def continue_paths(self, x: torch.Tensor, h: torch.Tensor, z: torch.Tensor,
                       noise: torch.Tensor, dt: float, with_kl: bool = False,
                       h_seq: torch.Tensor | None = None) -> tuple:
        """Carry posterior paths on over the next observations ``x``, without autograd.

        The inference form of the posterior SDE, on
        :class:`~nldseg._fused.InferenceStepper`. By default the encoder is
        stepped (:meth:`gru_step`) inside the loop: it equals ``torch.nn.GRU``
        on the whole sequence, without its (B, T, 3 hidden) input projections
        and (B, T, hidden) outputs, whose fresh memory costs more than the
        arithmetic. So a sequence may be simulated in pieces of time, each
        from the GRU state and latent state that the last one ended with, with
        the same result as in one piece.

        Parameters
        ----------
        x : Tensor of shape (B, T, D)
            The next ``T`` observations (``T`` may be 0).
        h : Tensor of shape (B, hidden)
            GRU output at the observation before ``x[:, 0]``.
        z : Tensor of shape (B * n_paths, state_dim)
            Latent states at that observation (rows sequence-major).
        noise : Tensor of shape (T, n_sub, B * n_paths, latent_dim)
            Standard normal increments of the ``T`` intervals.
        dt : float
            Euler step.
        with_kl : bool, default=False
            Whether to sum the squared controls of each interval.
        h_seq : Tensor of shape (B, T, hidden) or None
            GRU outputs computed beforehand (e.g. cuDNN's ``torch.nn.GRU``);
            ``None`` steps the GRU here.

        Returns
        -------
        zs : Tensor of shape (T, B * n_paths, state_dim)
        h : Tensor of shape (B, hidden)
            GRU output at the last observation (``h`` itself for ``T = 0``).
        sq : Tensor of shape (T, B * n_paths) or None
            Squared controls summed over each interval times ``kl_scale`` (the
            path KL accrued on it); None unless ``with_kl``.
        """
        stepper = self.inference_stepper(dt)
        n_obs, rows = x.shape[1], z.shape[0]
        drives = stepper.drive(noise).unbind(0)
        zs = z.new_empty((n_obs, rows, z.shape[1]))
        sq = z.new_zeros((n_obs, rows)) if with_kl else None
        work = stepper.workspace(rows, z)
        bias = z.new_empty((x.shape[0], 2 * stepper.hidden))
        for k in range(n_obs):
            h = self.gru_step(x[:, k], h) if h_seq is None else h_seq[:, k]
            z = stepper.advance(z, stepper.bias(h, out=bias), drives[k], work,
                                None if sq is None else sq[k], out=zs[k])
        return zs, h, None if sq is None else sq * stepper.kl_scale

    def step_coefficients(self, dt: float) -> dict:
        """Euler-Maruyama coefficients of the current Langevin parameters."""
        return step_coefficients(self.dynamics, *self.langevin_params(), dt)

    def advance(self, z: torch.Tensor, projected_context: torch.Tensor,
                scaled_noise: torch.Tensor, dt: float, coef: dict):
        """Euler-Maruyama steps of the posterior SDE from one observation to the next.

        The plain formulas, differentiable by autograd. Training and inference
        run the same steps on the kernels of :mod:`nldseg._fused`, which the
        tests check against this method.

        Parameters
        ----------
        z : Tensor of shape (rows, state_dim)
            Latent state at the previous observation.
        projected_context : Tensor of shape (rows, hidden)
            Projected encoder context of the next observation.
        scaled_noise : Tensor of shape (n_sub, rows, latent_dim)
            Brownian increments times ``coef["noise_scale"]``.
        dt : float
            Euler step.
        coef : dict
            From :meth:`step_coefficients`.

        Returns
        -------
        z : Tensor of shape (rows, state_dim)
            Latent state at the next observation.
        sq : Tensor of shape (rows,)
            Sum over the steps of ``|f_phi|^2`` (times ``coef["kl_scale"]``
            this is the path KL accrued on the interval).
        """
        d = self.latent_dim
        sq = z.new_zeros(z.shape[0])
        for j in range(scaled_noise.shape[0]):
            control = self.drift_net(z, projected_context)
            grad_e = self.energy.grad(z[..., :d])
            z = euler_step(z, control, grad_e, scaled_noise[j], dt, coef)
            sq = sq + (control * control).sum(-1)
        return z, sq

    def _simulate_torchsde(self, z0, projected, noise, dt, kl0) -> LatentPaths:
        import torchsde

        n_obs = noise.shape[0] + 1
        sde = PosteriorLangevinSDE(self, projected)
        ts = torch.arange(n_obs, dtype=z0.dtype, device=z0.device)
        increments = noise.reshape(-1, *noise.shape[2:]) * math.sqrt(dt)
        if self.dynamics == "overdamped":
            # Diagonal noise: one extra (zero) column for torchsde's logqp state.
            increments = F.pad(increments, (0, 1))
        path = torch.cat([torch.zeros_like(increments[:1]),
                          increments.cumsum(0)])
        grid = torch.arange(path.shape[0], dtype=z0.dtype, device=z0.device) * dt
        bm = _GridBrownian(grid, path)
        zs, logqp = torchsde.sdeint(sde, z0, ts, bm=bm, method="euler", dt=dt,
                                    logqp=True)
        kl_path = torch.cat([logqp.new_zeros(1, logqp.shape[1]), logqp])
        return LatentPaths(zs, kl_path, kl0)

    def log_partition(self, std_normal: torch.Tensor, loc: torch.Tensor,
                      scale: torch.Tensor) -> torch.Tensor:
        """Importance-sampling estimate of ``log Z = log int exp(-beta E(q)) dq``.

        Draws ``loc + scale * std_normal`` from a Gaussian proposal (treated as
        fixed) and returns ``logsumexp(-beta E - log proposal) - log N``. Its
        gradient is the self-normalised estimate of ``-beta E_p[grad E]``.
        """
        loc, scale = loc.detach(), scale.detach()
        s = loc + scale * std_normal
        return self._log_mean_weight(s, _normal_log_pdf(s, loc, scale))

    def _log_mean_weight(self, s: torch.Tensor, log_prop: torch.Tensor) -> torch.Tensor:
        """``log mean(exp(-beta E(s)) / proposal(s))`` over the draws ``s``."""
        beta = self.langevin_params()[0]
        log_w = -beta * self.energy(s) - log_prop
        return _logsumexp(log_w, 0) - math.log(s.shape[0])

    def _log_z_from_codes(self, mean: torch.Tensor, log_std: torch.Tensor,
                          std_normal: torch.Tensor) -> torch.Tensor:
        """``log Z`` by importance sampling from the batch's aggregate posterior.

        The proposal (treated as fixed) is a defensive mixture: a fifth of the
        draws from a broad Gaussian around the encoded ``z_0`` (for the tails),
        the rest from the aggregate posterior ``(1/B) sum_b q(z_0 | x^b)`` of
        the batch, which is the law ``exp(-beta E) / Z`` is fitted to, so most
        draws land where the weight is. Draws are allotted to the components
        in turn (stratified) and weighted by the mixture density with those
        proportions, so the estimate is consistent. Its effective sample size
        is about 70% of the draws on a trained model, against about 4% for the
        broad Gaussian alone.
        """
        d = self.latent_dim
        q = mean[..., :d].detach()
        sd = torch.exp(log_std[..., :d].detach())
        n, b = std_normal.shape[0], q.shape[0]
        var = q.var(0, unbiased=False) if b > 1 else torch.ones_like(q[0])
        centre = q.mean(0)
        broad = 4.0 * torch.sqrt(var + (sd * sd).mean(0)).clamp_min(0.1)
        n_broad = max(1, n // 5)
        comp = torch.arange(n - n_broad, device=q.device) % b
        loc = torch.cat([centre.expand(n_broad, d), q[comp]])
        scale = torch.cat([broad.expand(n_broad, d), sd[comp]])
        s = loc + scale * std_normal
        counts = torch.bincount(comp, minlength=b).to(s.dtype)
        log_mix = torch.cat([
            (_normal_log_pdf(s, centre, broad) + math.log(n_broad / n))[:, None],
            _mixture_log_pdfs(s - centre, q - centre, sd, torch.log(counts / n))],
            dim=1)
        return self._log_mean_weight(s, _logsumexp(log_mix, 1))

    def stationary_nll(self, q: torch.Tensor, centres: torch.Tensor,
                       log_scale: torch.Tensor, std_normal: torch.Tensor) -> torch.Tensor:
        """Mean ``-log p_inf(q) = beta E(q) + log Z`` over latent positions ``q`` (n, d).

        ``log Z`` by importance sampling from Gaussians of log std
        ``log_scale`` at ``centres`` (B, d), the estimator of the training
        step (with its broad defensive component), from ``std_normal``
        (N, d) draws. The gradient reaches the energy and ``beta``: a
        maximum-likelihood fit of the stationary law to the positions.
        """
        log_z = self._log_z_from_codes(centres, log_scale, std_normal)
        return -self._log_stationary_position(q, log_z).mean()

    def _stationary_kl0(self, z0, mean, log_std, log_z, frozen: bool = False
                        ) -> torch.Tensor:
        """One-sample estimate of ``KL(q(z_0 | x_0) || p_inf)`` per row."""
        return (_normal_log_pdf(z0, mean, log_std=log_std)
                - self._log_stationary(z0, log_z, frozen))

    def _log_stationary(self, z0: torch.Tensor, log_z, frozen: bool = False
                        ) -> torch.Tensor:
        """``log p_inf(z_0)``: ``-beta E(q) - log Z`` (times ``N(p; 0, M / beta)``).

        ``frozen``: the prior's parameters and ``log Z`` enter detached, so
        that the gradient reaches ``z0`` only.
        """
        d = self.latent_dim
        log_p = self._log_stationary_position(z0[..., :d], log_z, frozen)
        if self.dynamics == "underdamped":
            beta, _, mass = self.langevin_params()
            if frozen:
                beta, mass = beta.detach(), mass.detach()
            var = mass / beta
            p = z0[..., d:]
            log_p = log_p + (-0.5 * p * p / var - 0.5 * torch.log(var)
                             - 0.5 * _LOG_2PI).sum(-1)
        return log_p

    def _log_stationary_position(self, q: torch.Tensor, log_z, frozen: bool = False
                                 ) -> torch.Tensor:
        """``-beta E(q) - log Z``: the stationary law's log density of positions ``q``.

        ``frozen``: as in :meth:`_log_stationary`.
        """
        beta = self.langevin_params()[0]
        if not frozen:
            return -beta * self.energy(q) - log_z
        log_z = log_z.detach() if torch.is_tensor(log_z) else log_z
        fixed = {k: v.detach() for k, v in self.energy.named_parameters()}
        return -beta.detach() * torch.func.functional_call(self.energy, fixed, (q,)) - log_z

    def path_density_fit(self, paths: LatentPaths,
                         mask: torch.Tensor) -> torch.Tensor | None:
        """Mean ``-log p_inf(q_t)`` over each path's observed steps after the first.

        ``paths`` from :meth:`simulate` (with a stationary initial prior),
        ``mask`` (T, rows) its observed steps. The positions enter detached:
        the gradient reaches the energy, ``beta`` and ``log Z`` only, as a
        maximum-likelihood fit of ``exp(-beta E) / Z`` to the points the
        posterior path visits. Returns one value per row, or None without a
        ``log Z`` (Gaussian initial prior, or no partition draws).

        Why: under the prior's overdamped dynamics the path term of the ELBO,
        ``(1/2) int |u|^2 dt``, is (by Ito's formula) ``1 / (2 beta gamma)``
        times Hyvarinen's score-matching objective of ``exp(-beta E)`` on the
        path's points, plus ``beta / 2`` times the energy at the window's two
        ends, plus terms free of ``E``. Score matching fits the wells' shapes
        but is blind to the relative weights of separated wells (Wenliang and
        Kanagawa, 2020); those come only from the density fit at ``z_0``, one
        point per window against the whole path's score matching.
        """
        if paths.log_z is None or mask.shape[0] < 2:
            return None
        q = paths.z[1:, :, :self.latent_dim].detach()
        m = mask[1:]
        nll = -self._log_stationary_position(q, paths.log_z) * m
        return nll.sum(0) / m.sum(0).clamp_min(1.0)

    def initial_log_weight(self, z0: torch.Tensor, mean: torch.Tensor,
                           log_std: torch.Tensor) -> torch.Tensor:
        """``log p(z_0) - log q(z_0 | x_0)`` per row, up to one constant for all rows.

        The importance weight of initial states drawn from ``q(z_0 | x_0)``
        (``mean``, ``log_std`` from :meth:`initial_posterior`, repeated per
        row) for the initial prior; the stationary prior's ``log Z`` is left
        out, as it cancels when weights are normalised.
        """
        if self.initial_prior == "gaussian":
            log_p = _normal_log_pdf(z0, self.p0_mean, log_std=self.p0_log_std)
        else:
            log_p = self._log_stationary(z0, 0.0)
        return log_p - _normal_log_pdf(z0, mean, log_std=log_std)

    def decoder_log_std(self) -> torch.Tensor:
        """Log of the decoder noise's per-feature scale (the diagonal of ``L``), bounded."""
        return self.dec_log_std.clamp(-7.0, 5.0)

    def decoder_df(self) -> torch.Tensor | None:
        """Degrees of freedom (D,) of a Student-t decoder noise; ``None`` if Gaussian.

        Learned per feature, within :data:`STUDENT_DF_BOUNDS`.
        """
        if self.decoder_noise != "student":
            return None
        low, high = STUDENT_DF_BOUNDS
        return 2.0 + torch.exp(self.dec_log_df.clamp(math.log(low - 2.0),
                                                     math.log(high - 2.0)))

    def learning_rate_factors(self) -> list:
        """``[(parameter, factor)]``: parameters trained at ``factor`` times the rate.

        The Student-t degrees of freedom (:data:`STUDENT_DF_LR_FACTOR`);
        every parameter not listed trains at the common rate.
        """
        if self.decoder_noise != "student":
            return []
        return [(self.dec_log_df, STUDENT_DF_LR_FACTOR)]

    def decoder_noise_draws(self, shape: tuple, generator: torch.Generator,
                            given: int = 0) -> torch.Tensor:
        """Draws of the whitened residuals ``w``, ``shape`` (..., D - given).

        For the features from ``given`` on. Standard normal for a Gaussian
        noise; for a Student-t, the same normal draws divided by ``sqrt(chi2_df
        / df)`` (the chi-square draws from a numpy generator seeded from
        ``generator``, as torch's gamma sampler takes none).
        """
        eps = torch.randn(shape, generator=generator)
        df = self._decoded_df(given)
        if df is None:
            return eps
        df = df.detach().double().numpy()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        chi2 = np.random.default_rng(seed).chisquare(df, size=tuple(shape))
        return eps / torch.from_numpy(np.sqrt(chi2 / df)).to(eps.dtype)

    def _whitened_log_prob(self, white: torch.Tensor, log_diag: torch.Tensor,
                           given: int) -> torch.Tensor:
        """``log p`` of residuals whitened by ``L^-1``, from feature ``given`` on.

        ``white``, ``log_diag`` (..., D): the whitened residuals and ``log
        diag L^-1``; the density factors over the whitened features, each
        standard normal or Student-t (:meth:`decoder_df`).
        """
        white, log_diag = white[..., given:], log_diag[..., given:]
        df = self._decoded_df(given)
        return (_noise_log_kernel(white, df) + log_diag.sum(-1)
                + _noise_log_norm(df, white.shape[-1]))

    def _decoded_df(self, given: int) -> torch.Tensor | None:
        """:meth:`decoder_df` of the features from ``given`` on (``None`` if Gaussian)."""
        df = self.decoder_df()
        return None if df is None else df[given:]

    def decoder_scale_tril(self) -> torch.Tensor:
        """``L`` (D, D) of the decoder noise ``Sigma = L L^T`` (diagonal for "diag")."""
        std = torch.exp(self.decoder_log_std())
        if self.decoder_covariance != "full":
            return torch.diag(std)
        return torch.tril(self.dec_cov_lower, -1) + torch.diag(std)

    def _shared_precision_tril(self) -> torch.Tensor:
        """``L^-1`` (D, D) of the shared decoder noise ("full" or "diag")."""
        scale = self.decoder_scale_tril()
        eye = torch.eye(scale.shape[0], dtype=scale.dtype, device=scale.device)
        return torch.linalg.solve_triangular(scale, eye, upper=False)

    def latent_noise_parameters(self) -> list:
        """The parameters through which the decoder noise follows the latent state.

        Empty unless ``decoder_covariance="latent"``; all zero at the start
        but ``dec_noise_in``, so that while they are held there the noise is
        one full covariance shared by all states (parametrised by its inverse
        factor, ``dec_log_std`` and ``dec_prec_lower``).
        """
        if self.decoder_covariance != "latent":
            return []
        return [*self.dec_noise_in.parameters(), *self.dec_noise_diag.parameters(),
                self.dec_noise_lower]

    def _latent_precision(self, hidden: torch.Tensor) -> tuple:
        """``log diag P(z)`` (..., D) and the features ``u(z)`` (..., R) of ``P(z)``.

        ``P(z) = L(z)^-1 = diag(exp(a(z))) + S_0 + sum_k u_k(z) S_k``: ``u`` a
        linear map of the decoder's hidden layer, ``a = -dec_log_std`` plus a
        linear map of ``u`` (bounded as the other decoders' log stds are), and
        ``S_0`` (``dec_prec_lower``), ``S_1..S_R`` (``dec_noise_lower``)
        strictly lower triangular. All but ``u`` zero at the start, so that
        training starts from the same diagonal noise as ``"full"``. Linear in
        ``u``, so ``P r`` is one matrix product (:meth:`_precision_times`),
        with no ``D x D`` matrix per step and no triangular solve.
        """
        u = self.dec_noise_in(hidden)
        log_diag = (self.dec_noise_diag(u) - self.dec_log_std).clamp(-5.0, 7.0)
        return log_diag, u

    def _noise_lower(self) -> torch.Tensor:
        """``S_0..S_R`` (R + 1, D, D), strictly lower triangular."""
        return torch.tril(torch.cat([self.dec_prec_lower[None], self.dec_noise_lower]),
                          -1)

    def _precision_times(self, resid: torch.Tensor, log_diag: torch.Tensor,
                         u: torch.Tensor) -> torch.Tensor:
        """``P(z) r`` for residuals ``r`` (..., D), from :meth:`_latent_precision`."""
        return _latent_precision_times(resid, torch.exp(log_diag), u, self._noise_lower())

    def _latent_precision_tril(self, hidden: torch.Tensor) -> torch.Tensor:
        """``P(z)`` (..., D, D) of :meth:`_latent_precision`, lower triangular."""
        log_diag, u = self._latent_precision(hidden)
        lower = self._noise_lower()
        return (torch.diag_embed(torch.exp(log_diag)) + lower[0]
                + torch.einsum("...k,kij->...ij", u, lower[1:]))

    def _latent_scale_tril(self, hidden: torch.Tensor) -> torch.Tensor:
        """``L(z) = P(z)^-1`` (..., D, D) of :meth:`_latent_precision`."""
        prec = self._latent_precision_tril(hidden)
        eye = torch.eye(prec.shape[-1], dtype=prec.dtype, device=prec.device)
        return torch.linalg.solve_triangular(prec, eye.expand_as(prec), upper=False)

    def decoder_mean_and_scale(self, z: torch.Tensor) -> tuple:
        """``g(z)`` (..., D) and the noise's ``L``: (..., D, D), or (D, D) when shared.

        Observations drawn from the decoder are ``g(z) + L eps``.
        """
        if self.decoder_covariance == "latent":
            hidden = self._decoder_hidden(z)
            return self.decoder[2](hidden), self._latent_scale_tril(hidden)
        return self.decoder(z[..., : self.latent_dim]), self.decoder_scale_tril()

    def decode_given(self, z: torch.Tensor, past: torch.Tensor,
                     eps: torch.Tensor) -> torch.Tensor:
        """A draw of a frame's last features given its first, at positions ``z``.

        ``past`` (..., G) are the first ``G`` features, ``eps`` (..., D - G)
        draws of the whitened residuals (:meth:`decoder_noise_draws`);
        returns the last ``D - G`` features drawn from ``p(x[G:] | x[:G] =
        past, z)``, the conditional of the decoder's noise. With
        the precision factor ``P = L^-1`` (lower triangular) and residuals
        ``r = x - g(z)``, the whitened ``P r`` has independent features, so ``r[G:] =
        P[G:, G:]^-1 (eps - P[G:, :G] r[:G])``.
        """
        if self.decoder_covariance == "latent":
            hidden = self._decoder_hidden(z)
            mean, prec = self.decoder[2](hidden), self._latent_precision_tril(hidden)
        else:
            mean = self.decoder(z[..., : self.latent_dim])
            prec = self._shared_precision_tril().expand(*mean.shape[:-1], -1, -1)
        g = past.shape[-1]
        rhs = eps - (prec[..., g:, :g] @ (past - mean[..., :g]).unsqueeze(-1)).squeeze(-1)
        resid = torch.linalg.solve_triangular(prec[..., g:, g:], rhs.unsqueeze(-1),
                                              upper=False).squeeze(-1)
        return mean[..., g:] + resid

    def _decoder_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's hidden layer at the positions of ``z``; ``g`` is its last layer."""
        return self.decoder[1](self.decoder[0](z[..., : self.latent_dim]))

    def decode_log_prob(self, x: torch.Tensor, z: torch.Tensor,
                        n_paths: int = 1, given: int | None = None) -> torch.Tensor:
        """``log p(x_t | z_t)`` for every observation, shape (T, B * n_paths).

        With a full covariance, the residuals are whitened by ``L^-1`` (one
        triangular inverse per call, then one matrix product).

        ``given > 0``: the density of the features after the first ``given``
        conditional on those, ``log p(x_t[given:] | x_t[:given], z_t)``. Every
        decoder whitens by a lower triangular ``L^-1``, so this is the
        whitened residual's last entries and the matching diagonal: the
        density factors in feature order, ``p(x) = p(x[:given]) p(x[given:] |
        x[:given])``. ``None``: the model's :attr:`given_features`.
        """
        if given is None:
            given = self.given_features
        target = x.transpose(0, 1)
        if n_paths > 1:
            target = target.repeat_interleave(n_paths, dim=1)
        if self.decoder_covariance == "latent":
            hidden = self._decoder_hidden(z)
            log_diag, u = self._latent_precision(hidden)
            white = self._precision_times(target - self.decoder[2](hidden), log_diag, u)
        else:
            mean = self.decoder(z[..., : self.latent_dim])
            log_diag = -self.decoder_log_std()
            if self.decoder_covariance == "full":
                white = (target - mean) @ self._shared_precision_tril().t()
            else:
                white = (target - mean) * torch.exp(log_diag)
        return self._whitened_log_prob(white, log_diag, given)

    def point_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x_t | z_m)`` for every frame and every latent point, (T, P).

        The density of :meth:`decode_log_prob` (the features after
        :attr:`given_features` given those), for frames ``x`` (T, D) against
        fixed points ``z`` (P, >= latent_dim): :meth:`decoder_points` once,
        then :meth:`points_log_prob`.
        """
        return self.points_log_prob(x, self.decoder_points(z))

    def decoder_points(self, z: torch.Tensor) -> dict:
        """What :meth:`points_log_prob` needs of fixed latent points ``z`` (P, ...).

        The precision factor ``P(z) = L(z)^-1`` is kept in its parts, so that
        the cost per frame does not grow with ``P * D^2``: with
        ``decoder_covariance="latent"``, ``P(z) = diag(exp(a(z))) + S_0 +
        sum_k u_k(z) S_k`` (:meth:`_latent_precision`), ``P(z) x`` needs the
        ``R + 1`` products ``S_k x`` once per frame and ``D (R + 1)`` more
        per point; a shared noise needs one product per frame. Also the
        whitened means ``P(z) g(z)`` (P, D) and the log normalising
        constants of the explained features (P,).
        """
        given = self.given_features
        if self.decoder_covariance == "latent":
            hidden = self._decoder_hidden(z)
            mean = self.decoder[2](hidden)
            log_diag, u = self._latent_precision(hidden)
            parts = {"diag": torch.exp(log_diag), "u": u, "lower": self._noise_lower()}
            shift = _latent_precision_times(mean, parts["diag"], u, parts["lower"])
        else:
            mean = self.decoder(z[..., : self.latent_dim])
            prec = self._shared_precision_tril()
            log_diag = torch.log(torch.diagonal(prec)).expand_as(mean)
            parts = {"shared": prec}
            shift = mean @ prec.T
        parts["shift"] = shift
        parts["df"] = self._decoded_df(given)
        parts["const"] = (log_diag[:, given:].sum(-1)
                          + _noise_log_norm(parts["df"], mean.shape[-1] - given))
        parts["given"] = given
        return parts

    @staticmethod
    def _points_times(x: torch.Tensor, parts: dict) -> torch.Tensor:
        """``P(z_m) x_t`` (T, P, D) of frames ``x`` (T, D) at :meth:`decoder_points`.

        Elementwise products summed over the last axis, so that a frame's
        value does not depend on the frames that come with it.
        """
        if "shared" in parts:
            return (parts["shared"] * x[..., None, :]).sum(-1)
        return _latent_precision_times(x, parts["diag"], parts["u"], parts["lower"],
                                       against_points=True)

    @classmethod
    def points_log_prob(cls, x: torch.Tensor, parts: dict,
                        chunk_elements: int = 1 << 22) -> torch.Tensor:
        """``log p(x_t | z_m)`` (T, P) of frames ``x`` (T, D) at :meth:`decoder_points`.

        Each frame's value is the same whatever frames come with it (see
        :meth:`_points_times`): a stream of one frame at a time reproduces a
        batch bit for bit. Frames are taken so that about ``chunk_elements``
        products are held.
        """
        given, shift = parts["given"], parts["shift"]
        per_frame = shift.numel() * (1 + (parts["u"].shape[-1] if "u" in parts else 0))
        chunk = max(1, chunk_elements // max(1, per_frame))
        out = []
        for a in range(0, x.shape[0], chunk):
            block = x[a:a + chunk]
            px = cls._points_times(block, parts)
            if px.dim() == 2:  # A shared noise: the same for every point.
                px = px[:, None, :]
            white = (px - shift)[..., given:]
            out.append(_noise_log_kernel(white, parts["df"]) + parts["const"])
        return torch.cat(out) if out else x.new_zeros((0, shift.shape[0]))

    def elbo_terms(self, x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
                   eps0: torch.Tensor, dt: float, n_paths: int = 1,
                   solver: str = "euler", partition_noise: torch.Tensor | None = None,
                   proposal: tuple | None = None, h_init: torch.Tensor | None = None,
                   fixed_prior_rows: torch.Tensor | None = None,
                   density_weight: float = 0.0):
        """Per-path log-likelihood and KL sums over the observed steps.

        Returns ``(log_lik, kl)``, each of shape (B * n_paths,); the ELBO of a
        path is ``log_lik - kl``. ``mask`` (B, T) marks real (unpadded) steps.
        ``partition_noise`` (N, latent_dim) standard normal draws feed
        :meth:`log_partition` when ``initial_prior="stationary"``; the proposal
        is centred on the batch's encoded initial states (or on ``proposal``,
        see :meth:`simulate`). ``h_init``, ``fixed_prior_rows``: see
        :meth:`simulate`.

        ``density_weight`` > 0 (training) adds to each row's KL a term of
        value zero whose gradient is ``density_weight`` times that of
        :meth:`path_density_fit`: the ELBO keeps its value, and its gradient
        gains a fit of the wells' relative depths to the whole path.
        """
        paths = self.simulate(x, noise, dt, n_paths, eps0=eps0, solver=solver,
                              partition_noise=partition_noise, proposal=proposal,
                              h_init=h_init, fixed_prior_rows=fixed_prior_rows)
        m = mask.transpose(0, 1)
        if n_paths > 1:
            m = m.repeat_interleave(n_paths, dim=1)
        log_lik = (self.decode_log_prob(x, paths.z, n_paths) * m).sum(0)
        kl = (paths.kl_path * m).sum(0) + paths.kl0
        fit = self.path_density_fit(paths, m) if density_weight else None
        if fit is not None:
            kl = kl + density_weight * (fit - fit.detach())
        return log_lik, kl


class _GridBrownian:
    """Brownian motion known on a fixed grid, queried by torchsde's Euler solver."""

    def __init__(self, grid: torch.Tensor, path: torch.Tensor) -> None:
        self._grid = grid
        self._path = path
        self._dt = float(grid[1] - grid[0]) if len(grid) > 1 else 1.0
        self.shape = path.shape[1:]
        self.dtype = path.dtype
        self.device = path.device
        self.levy_area_approximation = "none"

    def _index(self, t) -> int:
        return int(round(float(t) / self._dt))

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None:
            return self._path[self._index(ta)]
        return self._path[self._index(tb)] - self._path[self._index(ta)]


def _gaussian_kl(mean_q: torch.Tensor, log_std_q: torch.Tensor,
                 mean_p: torch.Tensor, log_std_p: torch.Tensor) -> torch.Tensor:
    """KL between diagonal Gaussians, summed over the last dimension."""
    var_ratio = torch.exp(2.0 * (log_std_q - log_std_p))
    diff = (mean_q - mean_p) * torch.exp(-log_std_p)
    return 0.5 * (var_ratio + diff * diff - 1.0 - 2.0 * (log_std_q - log_std_p)).sum(-1)


def freeze(module: nn.Module) -> nn.Module:
    """``module`` on CPU, in eval mode, with no parameter needing a gradient.

    What a fitted model is kept as: after ``fit``, and when loaded.
    """
    module.cpu().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def build_model(n_features: int, params: dict, *,
                conditional_lags: bool = True) -> NeuralLangevinVAE:
    """A freshly initialised VAE (on CPU) for an estimator's parameters.

    ``params`` is :meth:`LangevinSegmenter.get_params`'s dict; the one
    builder shared by fitting and loading, so that a saved model is rebuilt
    with exactly the modules it was trained with. ``n_features`` is the
    data's; the model reads and decodes frames delay-embedded with
    ``params["n_lags"]`` previous frames, ``n_features * (n_lags + 1)``,
    oldest first. With ``conditional_lags`` (every fit since the embedding
    put the newest observation last) the decoder's likelihood is that of the
    newest observation given the previous ones (``given_features``);
    without, of the whole frame, as older versions trained it.
    """
    # int(): numpy integers (e.g. from a grid built with np.arange) pass the
    # parameter checks, but torch's layers take Python ints only.
    module = NeuralLangevinVAE(
        n_features=int(n_features) * (int(params["n_lags"]) + 1),
        latent_dim=int(params["latent_dim"]),
        dynamics=params["dynamics"], hidden_size=int(params["hidden_size"]),
        context_size=int(params["context_size"]), beta=float(params["beta"]),
        gamma=float(params["gamma"]), mass=float(params["mass"]),
        learn_langevin_params=params["learn_langevin_params"],
        initial_prior=params["initial_prior"],
        decoder_covariance=params["decoder_covariance"],
        encoder_input=params["encoder_input"],
        decoder_noise=params["decoder_noise"])
    if conditional_lags:
        module.given_features = int(n_features) * int(params["n_lags"])
    return module
