"""Shared pieces of the training benchmarks (not a benchmark itself).

One training step is built here twice, on the same model and the same batch:

* ``fused``: the library's own training step, :func:`nldseg._training.gradient_step`
  (noise, ELBO, loss, backward, gradient clipping, finiteness check) and the
  Adam step, as :func:`nldseg._training.train` takes it (the GRU encoder and
  the Euler loop on the hand-differentiated kernels of ``nldseg._fused``).
* ``reference``: the generic path of torchsde's latent-SDE example (encoder
  through ``torch.nn.GRU``, everything recorded by autograd), i.e.
  ``torchsde.sdeint(sde, z0, ts, method="euler", dt=dt, logqp=True)`` on
  :class:`nldseg._dynamics.PosteriorLangevinSDE` with torchsde's *default*
  Brownian motion (no ``bm`` argument, so a ``BrownianInterval`` is built and
  queried at every solver step). The rest of the ELBO (encoder, initial KL,
  decoder log-likelihood, mask, KL warm-up weight) is the library's.
"""

from __future__ import annotations

import math
import os
import platform

import numpy as np
import torch
import torchsde

from nldseg import LangevinSegmenter
from nldseg._dynamics import PosteriorLangevinSDE
from nldseg._model import NeuralLangevinVAE, _GridBrownian, build_model
from nldseg._training import (
    CLIP_NORM,
    BatchShare,
    TrainingSettings,
    draw_step_noise,
    gradient_step,
    kl_weight,
)
from nldseg._training import training_loss as library_loss
from nldseg.datasets import make_markov_chain_sequences

PATHS = ("fused", "reference")
N_FEATURES = 15


def paper_params(**overrides) -> dict:
    """Library defaults (``LangevinSegmenter().get_params()``) with overrides."""
    params = LangevinSegmenter().get_params()
    params.update(overrides)
    return params


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when present, as the estimator does."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} was requested but CUDA is not available.")
    return torch.device(name)


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads`` from ``--threads`` (default: every core)."""
    n = threads if threads else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (Linux), else ``platform``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    """One line describing the machine, for the benchmark's output."""
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    return (f"# machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()}; "
            f"python {platform.python_version()}, torch {torch.__version__}, "
            f"torchsde {torchsde.__version__}; torch threads "
            f"{torch.get_num_threads()} (OMP_NUM_THREADS={omp}); device {dev}")


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_module(params: dict, dynamics: str, device: torch.device,
                 seed: int = 0) -> NeuralLangevinVAE:
    """The VAE exactly as ``LangevinSegmenter.fit`` builds it, on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # n_lags="auto" trains without lags first (and again with one lag
        # only if that finds a single well): time the first.
        lags = 0 if params["n_lags"] == "auto" else params["n_lags"]
        module = build_model(N_FEATURES, dict(params, dynamics=dynamics, n_lags=lags))
    return module.to(device)


def make_batch(batch: int, length: int, device: torch.device,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch ``(x, mask)`` of paper-setting sequences (all full length).

    Sequences come from the paper's Markov chain (15 features, 3 states,
    switch probability 0.025), standardised per feature as ``fit`` does.
    """
    X, _ = make_markov_chain_sequences(batch, length, n_features=N_FEATURES,
                                       switch_prob=0.025, random_state=1000 + seed,
                                       emission_random_state=seed)
    flat = X.reshape(-1, N_FEATURES)
    X = (X - flat.mean(0)) / flat.std(0)
    x = torch.as_tensor(np.array(X, dtype=np.float32), device=device)
    mask = torch.ones(x.shape[:2], dtype=x.dtype, device=device)
    return x, mask


def draw_noise(module: NeuralLangevinVAE, x: torch.Tensor, dt: float,
               gen: torch.Generator) -> tuple:
    """``(noise, eps0, probe)`` drawn as the library's training step draws them."""
    return draw_step_noise(module, x.shape[:2], int(round(1.0 / dt)), gen, x.device)


def grid_brownian(module: NeuralLangevinVAE, noise: torch.Tensor,
                  dt: float) -> _GridBrownian:
    """The library's grid Brownian motion for ``noise`` (as ``_simulate_torchsde``)."""
    increments = noise.reshape(-1, *noise.shape[2:]) * math.sqrt(dt)
    if module.dynamics == "overdamped":
        increments = torch.nn.functional.pad(increments, (0, 1))
    path = torch.cat([torch.zeros_like(increments[:1]), increments.cumsum(0)])
    grid = torch.arange(path.shape[0], dtype=path.dtype, device=path.device) * dt
    return _GridBrownian(grid, path)


def reference_elbo_terms(module: NeuralLangevinVAE, x: torch.Tensor,
                         mask: torch.Tensor, eps0: torch.Tensor, dt: float,
                         probe: torch.Tensor, bm=None) -> tuple:
    """``(log_lik, kl)`` per sequence through ``torchsde.sdeint(..., logqp=True)``.

    Mirrors ``NeuralLangevinVAE.elbo_terms`` with ``n_paths=1`` (encoder,
    initial state ``z_0 = mean + std * eps0``, initial KL, decoder) but runs
    the encoder through ``torch.nn.GRU`` and solves the posterior SDE with
    torchsde's generic Euler solver, both recorded by autograd. ``bm=None`` lets
    torchsde build its default ``BrownianInterval``; pass
    :func:`grid_brownian` to reproduce the fused path's increments.
    """
    # torch's own GRU (the generic path has no fused encoder) on what the
    # library's encoder reads: the frames, with their learned squares by default.
    h, _ = module.gru(module.encoder_frames(x))
    projected = module.project_context(h)
    mean, log_std = module.initial_posterior(h[:, 0])
    z0, kl0, _ = module.initial_state(mean, log_std, eps0, partition_noise=probe)
    sde = PosteriorLangevinSDE(module, projected)
    ts = torch.arange(x.shape[1], dtype=z0.dtype, device=z0.device)
    zs, logqp = torchsde.sdeint(sde, z0, ts, bm=bm, method="euler", dt=dt,
                                logqp=True)
    kl_path = torch.cat([logqp.new_zeros(1, logqp.shape[1]), logqp])
    m = mask.transpose(0, 1)
    log_lik = (module.decode_log_prob(x, zs) * m).sum(0)
    kl = (kl_path * m).sum(0) + kl0
    return log_lik, kl


def training_loss(path: str, module: NeuralLangevinVAE, x: torch.Tensor,
                  mask: torch.Tensor, noise: torch.Tensor, eps0: torch.Tensor,
                  probe: torch.Tensor, dt: float, weight: float,
                  bm=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, kl)`` of one batch: the library's loss on either path.

    ``loss = -(sum log_lik - weight * sum kl) / n_obs``. The reference path
    ignores ``noise`` (torchsde draws its own Brownian motion) unless ``bm``
    is given.
    """
    if path == "fused":
        return library_loss(module, x, mask, noise, eps0, probe, dt, weight)
    log_lik, kl = reference_elbo_terms(module, x, mask, eps0, dt, probe, bm=bm)
    return -(log_lik.sum() - weight * kl.sum()) / mask.sum(), kl


def train_step(path: str, module: NeuralLangevinVAE, opt: torch.optim.Optimizer,
               params: list, x: torch.Tensor, mask: torch.Tensor, dt: float,
               gen: torch.Generator, step: int, kl_warmup: int) -> float:
    """One full training step; returns the loss.

    ``fused``: the library's :func:`nldseg._training.gradient_step` (noise,
    ELBO, loss, backward, clipping, finiteness check: a host sync on CUDA)
    and ``opt.step``. ``reference``: the same on torchsde's generic path.
    :func:`nldseg._training.train` also snapshots the parameters and Adam's
    state before every update (its rollback); that is timed separately by
    the throughput benchmark, not here.
    """
    weight = kl_weight(step, kl_warmup)
    if path == "fused":
        settings = TrainingSettings.from_params(dict(
            LangevinSegmenter().get_params(), dt=dt, solver="euler"))
        loss, _, finite = gradient_step(module, params, opt, BatchShare.whole(x, mask),
                                        gen, settings, weight)
    else:
        noise, eps0, probe = draw_noise(module, x, dt, gen)
        loss, _ = training_loss(path, module, x, mask, noise, eps0, probe, dt, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        finite = bool(torch.isfinite(loss) and torch.isfinite(grad_norm))
    if not finite:
        raise RuntimeError(f"non-finite loss or gradient on the {path} path at "
                           f"step {step}")
    opt.step()
    return float(loss.detach())


def make_optimizer(module: NeuralLangevinVAE, lr: float) -> tuple:
    """``(params, Adam)`` over the trainable parameters, as in ``train``."""
    params = [p for p in module.parameters() if p.requires_grad]
    return params, torch.optim.Adam(params, lr=lr)
