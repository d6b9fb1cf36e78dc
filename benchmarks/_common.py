"""Shared pieces of the training benchmarks (not a benchmark itself).

One training step is built here twice, on the same model and the same batch:

* ``fused``: the library's own path, ``module.elbo_terms(..., solver="euler")``
  followed by the loss, backward, gradient clipping, finiteness check and Adam
  step exactly as ``LangevinSegmenter._train`` does them (the GRU encoder and
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
from nldseg._estimator import _CLIP_NORM as CLIP_NORM
from nldseg._estimator import _N_PARTITION as N_PARTITION
from nldseg._model import NeuralLangevinVAE, _gaussian_kl, _GridBrownian
from nldseg.datasets import make_markov_chain_sequences

# N_PARTITION (log Z draws per step) and CLIP_NORM (gradient clipping) are the
# estimator's own, so that a benchmarked step is the step ``fit`` takes.
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
    """The VAE exactly as ``LangevinSegmenter._fit`` builds it, on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = NeuralLangevinVAE(
            n_features=N_FEATURES, latent_dim=params["latent_dim"], dynamics=dynamics,
            hidden_size=params["hidden_size"], context_size=params["context_size"],
            beta=float(params["beta"]), gamma=float(params["gamma"]),
            mass=float(params["mass"]),
            learn_langevin_params=params["learn_langevin_params"],
            initial_prior=params["initial_prior"])
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
    """``(noise, eps0, probe)`` drawn as ``_train`` draws them for one batch."""
    n_rows, t_max = x.shape[0], x.shape[1]
    n_sub = int(round(1.0 / dt))
    d = module.latent_dim
    noise = torch.randn((max(t_max - 1, 0), n_sub, n_rows, d), generator=gen,
                        device=x.device)
    eps0 = torch.randn((n_rows, module.state_dim), generator=gen, device=x.device)
    probe = torch.randn((N_PARTITION, d), generator=gen, device=x.device)
    return noise, eps0, probe


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

    Mirrors ``NeuralLangevinVAE.elbo_terms`` with ``n_samples=1`` (encoder,
    initial state ``z_0 = mean + std * eps0``, initial KL, decoder) but runs
    the encoder through ``torch.nn.GRU`` and solves the posterior SDE with
    torchsde's generic Euler solver, both recorded by autograd. ``bm=None`` lets
    torchsde build its default ``BrownianInterval``; pass
    :func:`grid_brownian` to reproduce the fused path's increments.
    """
    h, _ = module.gru(x)  # torch's own GRU: the generic path has no fused encoder.
    projected = module.project_context(h)
    mean, log_std = module.initial_posterior(h[:, 0])
    z0 = mean + log_std.exp() * eps0
    if module.initial_prior == "gaussian":
        kl0 = _gaussian_kl(mean, log_std, module.p0_mean, module.p0_log_std)
    else:
        log_z = module._log_z_from_codes(mean, log_std, probe)
        kl0 = module._stationary_kl0(z0, mean, log_std, log_z)
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
    """``(loss, kl)`` of one batch: ``_train``'s formula on either path.

    ``loss = -(sum log_lik - weight * sum kl) / n_obs``. The reference path
    ignores ``noise`` (torchsde draws its own Brownian motion) unless ``bm``
    is given.
    """
    if path == "fused":
        log_lik, kl = module.elbo_terms(x, mask, noise, eps0, dt, solver="euler",
                                        partition_noise=probe)
    else:
        log_lik, kl = reference_elbo_terms(module, x, mask, eps0, dt, probe, bm=bm)
    n_obs = mask.sum()
    return -(log_lik.sum() - weight * kl.sum()) / n_obs, kl


def kl_weight(step: int, kl_warmup: int) -> float:
    """KL warm-up weight of gradient step ``step`` (as in ``_train``)."""
    return min(1.0, (step + 1) / kl_warmup) if kl_warmup else 1.0


def train_step(path: str, module: NeuralLangevinVAE, opt: torch.optim.Optimizer,
               params: list, x: torch.Tensor, mask: torch.Tensor, dt: float,
               gen: torch.Generator, step: int, kl_warmup: int) -> float:
    """One full training step as in ``_train``; returns the loss.

    Noise draws, ELBO, loss, ``zero_grad``, backward, ``clip_grad_norm_``, the
    finiteness check (a host sync on CUDA, as in ``_train``) and ``opt.step``.
    ``_train`` also deep-copies the model and optimiser state after every good
    step (its rollback snapshot); that is timed separately by the throughput
    benchmark, not here.
    """
    noise, eps0, probe = draw_noise(module, x, dt, gen)
    loss, _ = training_loss(path, module, x, mask, noise, eps0, probe, dt,
                            kl_weight(step, kl_warmup))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        raise RuntimeError(f"non-finite loss or gradient on the {path} path at "
                           f"step {step}")
    opt.step()
    return float(loss.detach())


def make_optimizer(module: NeuralLangevinVAE, lr: float) -> tuple:
    """``(params, Adam)`` over the trainable parameters, as in ``_train``."""
    params = [p for p in module.parameters() if p.requires_grad]
    return params, torch.optim.Adam(params, lr=lr)
