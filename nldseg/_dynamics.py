"""Overdamped and underdamped Langevin dynamics.

The drift and diffusion of the prior and posterior SDEs live here as small pure
functions, used both by the fused Euler-Maruyama loop in :mod:`nldseg._model` and
by :class:`PosteriorLangevinSDE`, which exposes the same dynamics in torchsde's
protocol (``sde_type``, ``noise_type``, ``f``, ``g``, ``h``) so that
``torchsde.sdeint(..., logqp=True)`` can integrate them as a reference solver.

Time grid: observation ``k`` sits at time ``t_k = k`` (one time unit between
observations). On the interval ``(t_{k-1}, t_k]`` the posterior drift reads the
encoder context ``c_k``, which depends on ``x_0, ..., x_k`` only, so the latent
state at ``t_k`` (and hence the label of step ``k``) never sees later data.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DYNAMICS = frozenset({"overdamped", "underdamped"})


def overdamped_diffusion(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Scalar diffusion ``sqrt(2 / (beta gamma))`` of overdamped Langevin dynamics."""
    return torch.sqrt(2.0 / (beta * gamma))


def underdamped_diffusion(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Scalar diffusion ``sqrt(2 gamma / beta)`` acting on the momentum only."""
    return torch.sqrt(2.0 * gamma / beta)


def overdamped_prior_drift(grad_e: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Prior drift ``-grad E(z) / gamma`` of overdamped Langevin dynamics."""
    return -grad_e / gamma


def underdamped_prior_drift(
    p: torch.Tensor, grad_e: torch.Tensor, gamma: torch.Tensor, mass: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior drifts ``(M^-1 p, -grad E(q) - gamma M^-1 p)`` of position and momentum."""
    velocity = p / mass
    return velocity, -grad_e - gamma * velocity


def step_coefficients(
    dynamics: str, beta: torch.Tensor, gamma: torch.Tensor, mass: torch.Tensor,
    dt: float,
) -> dict[str, torch.Tensor]:
    """Constants of one Euler-Maruyama step, computed once per simulation.

    Returns a dict with ``noise_scale`` (``sigma sqrt(dt)``), ``kl_scale``
    (``dt / (2 sigma^2)``, so that the KL increment is ``kl_scale |f_phi|^2``),
    ``grad_scale`` (``dt / gamma`` overdamped, ``dt`` underdamped) and, for
    underdamped dynamics, ``inv_mass`` and ``friction`` (``gamma / M``).
    """
    if dynamics == "overdamped":
        sigma = overdamped_diffusion(beta, gamma)
        coef = {"grad_scale": dt / gamma}
    else:
        sigma = underdamped_diffusion(beta, gamma)
        coef = {"grad_scale": torch.as_tensor(dt, dtype=beta.dtype,
                                              device=beta.device),
                "inv_mass": 1.0 / mass, "friction": gamma / mass}
    coef["noise_scale"] = sigma * math.sqrt(dt)
    coef["kl_scale"] = 0.5 * dt / (sigma * sigma)
    return coef


def euler_step(
    state: torch.Tensor,
    control: torch.Tensor,
    grad_e: torch.Tensor,
    scaled_noise: torch.Tensor,
    dt: float,
    coef: dict[str, torch.Tensor],
) -> torch.Tensor:
    """One Euler-Maruyama step of the posterior SDE.

    Parameters
    ----------
    state : Tensor of shape (batch, state_dim)
        ``z`` (overdamped) or ``concat(q, p)`` (underdamped).
    control : Tensor of shape (batch, latent_dim)
        Posterior drift correction ``f_phi``; added to ``dz`` (overdamped) or to
        ``dp`` only (underdamped). Its KL increment is
        ``coef["kl_scale"] * |control|^2``.
    grad_e : Tensor of shape (batch, latent_dim)
        ``grad E`` at ``z`` (overdamped) or at ``q`` (underdamped).
    scaled_noise : Tensor of shape (batch, latent_dim)
        Brownian increment times sigma: ``coef["noise_scale"] * N(0, I)``.
    dt : float
        Step size.
    coef : dict
        From :func:`step_coefficients`.

    Returns
    -------
    new_state : Tensor of shape (batch, state_dim)
    """
    if "inv_mass" not in coef:
        return state + control * dt - grad_e * coef["grad_scale"] + scaled_noise
    d = grad_e.shape[-1]
    q, p = state[..., :d], state[..., d:]
    new_q = q + p * (coef["inv_mass"] * dt)
    new_p = (p - p * (coef["friction"] * dt) + (control - grad_e) * dt
             + scaled_noise)
    return torch.cat([new_q, new_p], dim=-1)


class PosteriorLangevinSDE(nn.Module):
    """The posterior and prior Langevin SDEs in torchsde's protocol.

    ``f`` is the posterior drift, ``h`` the prior drift and ``g`` the shared
    diffusion, so ``torchsde.sdeint(sde, z0, ts, logqp=True)`` returns the path
    KL accrued on each interval alongside the latent path. Overdamped noise is
    diagonal. Underdamped noise acts on the momentum only, so it is declared
    ``"general"`` with ``g = [0; sigma I]`` of shape (batch, 2d, d): torchsde
    then solves ``g u = f - h`` by pseudo-inverse, whereas its diagonal-noise
    division by the zero position noise would give NaN.

    Parameters
    ----------
    model : NeuralLangevinVAE
        Supplies the energy, the posterior drift network and beta/gamma/mass.
    drift_context : Tensor of shape (batch, n_timesteps, hidden)
        Pre-projected encoder context, one row per observation.
    """

    sde_type = "ito"

    def __init__(self, model: nn.Module, drift_context: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.drift_context = drift_context
        self.noise_type = "diagonal" if model.dynamics == "overdamped" else "general"

    def _context(self, t: torch.Tensor | float) -> torch.Tensor:
        # The interval [t_{k-1}, t_k) reads c_k (see the module docstring).
        k = int(math.floor(float(t) + 1e-6)) + 1
        k = min(max(k, 1), self.drift_context.shape[1] - 1)
        return self.drift_context[:, k]

    def _split_grad(self, y: torch.Tensor) -> torch.Tensor:
        d = self.model.latent_dim
        return self.model.energy.grad(y[..., :d])

    def h(self, t, y):  # noqa: D102 - torchsde protocol
        m = self.model
        beta, gamma, mass = m.langevin_params()
        grad_e = self._split_grad(y)
        if m.dynamics == "overdamped":
            return overdamped_prior_drift(grad_e, gamma)
        d = m.latent_dim
        dq, dp = underdamped_prior_drift(y[..., d:], grad_e, gamma, mass)
        return torch.cat([dq, dp], dim=-1)

    def f(self, t, y):  # noqa: D102 - torchsde protocol
        m = self.model
        control = m.drift_net(y, self._context(t))
        prior = self.h(t, y)
        if m.dynamics == "overdamped":
            return prior + control
        return prior + torch.cat([torch.zeros_like(control), control], dim=-1)

    def g(self, t, y):  # noqa: D102 - torchsde protocol
        m = self.model
        beta, gamma, _ = m.langevin_params()
        if m.dynamics == "overdamped":
            return overdamped_diffusion(beta, gamma).expand_as(y)
        d = m.latent_dim
        eye = torch.eye(d, dtype=y.dtype, device=y.device)
        block = torch.cat([torch.zeros_like(eye), underdamped_diffusion(beta, gamma) * eye])
        return block.expand(y.shape[0], 2 * d, d)
