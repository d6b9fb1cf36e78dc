"""The training loop: windows, learning-rate schedule, KL weight, rollback, progress.

:func:`train` fits a :class:`nldseg._model.NeuralLangevinVAE` by Adam on the
negative ELBO per observed step. Each epoch cuts every training sequence into
random non-overlapping windows (:func:`sample_windows`), shuffles them and
takes one gradient step per batch of windows (:func:`gradient_step`). The
learning rate follows :func:`lr_multiplier`, the KL term is warmed up by
:func:`kl_weight`, gradients are clipped, and a non-finite loss or gradient
rolls back the last update, halves the learning rate and retries the batch.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from nldseg._validation import pad_windows

LEARNING_RATES = frozenset({"cosine", "constant"})
LR_FLOOR = 0.01  # The cosine schedule ends at this fraction of learning_rate_init.
N_PARTITION_DRAWS = 4096  # Importance draws of log Z per training step.
CLIP_NORM = 10.0  # Gradient norm clipping of every training step.
MAX_BAD_STEPS = 8  # Non-finite steps in a row before training gives up.


@dataclass(frozen=True)
class TrainingSettings:
    """The estimator's parameters that drive :func:`train`."""

    max_iter: int
    batch_size: int
    window_length: int | None
    learning_rate: str
    learning_rate_init: float
    kl_warmup: int
    tol: float
    n_iter_no_change: int
    dt: float
    solver: str
    verbose: int

    @classmethod
    def from_params(cls, params: dict) -> TrainingSettings:
        """Pick the training settings out of ``get_params()``."""
        return cls(**{name: params[name] for name in cls.__dataclass_fields__})

    @property
    def n_sub(self) -> int:
        """Euler steps between consecutive observations."""
        return int(round(1.0 / self.dt))


@dataclass
class TrainingResult:
    """What :func:`train` reports: one mean loss per epoch, epochs run, convergence."""

    loss_curve: list
    n_iter: int
    converged: bool


def sample_windows(lengths: np.ndarray, window_length: int | None,
                   rng: np.random.Generator) -> list:
    """Random non-overlapping windows ``(start, length)`` covering every sequence.

    Each sequence longer than ``window_length`` is cut at a random offset and
    then every ``window_length`` steps; pieces shorter than 2 steps (no
    transition) are dropped. The windows of all sequences are shuffled.
    ``None`` keeps whole sequences.
    """
    w = window_length
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


def lr_multiplier(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at ``progress``, the fraction of training done.

    ``"cosine"``: from 1 down to :data:`LR_FLOOR` along half a cosine;
    ``"constant"``: 1.
    """
    if schedule == "constant":
        return 1.0
    return LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))


def kl_weight(step: int, kl_warmup: int) -> float:
    """Weight of the KL term at gradient step ``step`` (0-based): linear up to 1."""
    return min(1.0, (step + 1) / kl_warmup) if kl_warmup else 1.0


def draw_step_noise(module, x: torch.Tensor, n_sub: int, gen: torch.Generator) -> tuple:
    """``(noise, eps0, probe)`` for one batch ``x`` (B, T, D), in the order drawn.

    The Brownian increments (T - 1, n_sub, B, latent_dim), the initial states'
    draws (B, state_dim) and the ``log Z`` importance draws
    (:data:`N_PARTITION_DRAWS`, latent_dim).
    """
    n_rows, t_max = x.shape[0], x.shape[1]
    d, device = module.latent_dim, x.device
    noise = torch.randn((max(t_max - 1, 0), n_sub, n_rows, d), generator=gen,
                        device=device)
    eps0 = torch.randn((n_rows, module.state_dim), generator=gen, device=device)
    probe = torch.randn((N_PARTITION_DRAWS, d), generator=gen, device=device)
    return noise, eps0, probe


def training_loss(module, x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
                  eps0: torch.Tensor, probe: torch.Tensor, dt: float, weight: float,
                  solver: str = "euler") -> tuple:
    """``(loss, kl)``: the negative ELBO per observed step, KL weighted by ``weight``.

    ``loss = -(sum log p(x | z) - weight * sum KL) / n_observed``; ``kl`` is
    the per-path KL (B,).
    """
    log_lik, kl = module.elbo_terms(x, mask, noise, eps0, dt, solver=solver,
                                    partition_noise=probe)
    return -(log_lik.sum() - weight * kl.sum()) / mask.sum(), kl


def gradient_step(module, params: list, opt: torch.optim.Optimizer, x: torch.Tensor,
                  mask: torch.Tensor, gen: torch.Generator, settings: TrainingSettings,
                  weight: float) -> tuple:
    """Noise, loss, backward and clipping of one batch; returns ``(loss, kl, finite)``.

    The caller decides what to do with a non-finite step and takes the
    optimiser step (``opt.step()``) itself.
    """
    noise, eps0, probe = draw_step_noise(module, x, settings.n_sub, gen)
    loss, kl = training_loss(module, x, mask, noise, eps0, probe, settings.dt, weight,
                             settings.solver)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
    return loss, kl, bool(torch.isfinite(loss) and torch.isfinite(grad_norm))


class RollbackSnapshot:
    """The parameters and Adam's state before the last update, copied in place.

    Cheaper than deep copies of the two state dicts at every step; restoring
    gives the same values.
    """

    def __init__(self, module, opt: torch.optim.Optimizer) -> None:
        self._params = [p.detach().clone() for p in module.parameters()]
        self._state: dict = {}
        self._empty = True

    def take(self, module, opt: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for buf, p in zip(self._params, module.parameters()):
                buf.copy_(p)
            for p, state in opt.state.items():
                saved = self._state.setdefault(p, {})
                for key, value in state.items():
                    if key in saved:
                        saved[key].copy_(value)
                    else:
                        saved[key] = value.clone()
        self._empty = not opt.state

    def restore(self, module, opt: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for buf, p in zip(self._params, module.parameters()):
                p.copy_(buf)
            if self._empty:
                opt.state.clear()
                return
            for p, state in opt.state.items():
                for key, value in state.items():
                    value.copy_(self._state[p][key])

    def parameters(self) -> list:
        """The saved parameter tensors, in ``module.parameters()`` order."""
        return self._params


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


def _load_parameters(module, tensors: list) -> None:
    with torch.no_grad():
        for p, value in zip(module.parameters(), tensors):
            p.copy_(value)


def train(module, data: torch.Tensor, lengths: np.ndarray, settings: TrainingSettings,
          device: torch.device, seed: int) -> TrainingResult:
    """Adam on the negative ELBO; returns the loss curve, epochs run and convergence.

    ``data`` (n_total, n_features) holds the standardised training sequences
    end to end on ``device``, ``lengths`` their lengths. A non-finite loss or
    gradient rolls back to the parameters before the last update, halves the
    learning rate (for the rest of the schedule), retries the batch with fresh
    noise and warns. Ctrl-C keeps the model of the best full-KL epoch so far
    (else the last good step) and warns. Training stops after ``max_iter``
    epochs, or once the epoch loss has not improved by ``tol`` for
    ``n_iter_no_change`` epochs after the KL warm-up.
    """
    s = settings
    rng = np.random.default_rng(int(seed))
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    params = [p for p in module.parameters() if p.requires_grad]
    lr_init = float(s.learning_rate_init)
    lr_scale = 1.0  # Halved by every rollback; multiplies the schedule.
    lr = lr_init
    opt = torch.optim.Adam(params, lr=lr)
    step = 0
    bad_in_a_row = 0
    loss_curve: list[float] = []
    best, no_change, converged = np.inf, 0, False
    best_state = None
    snapshot = RollbackSnapshot(module, opt)
    bar = _ProgressBar(s.verbose)
    try:
        for epoch in range(s.max_iter):
            t0 = time.perf_counter()
            windows = sample_windows(lengths, s.window_length, rng)
            n_batches = -(-len(windows) // s.batch_size)
            tot_loss, tot_kl, tot_obs = 0.0, 0.0, 0.0
            for i_batch, b in enumerate(range(0, len(windows), s.batch_size)):
                x, mask = pad_windows(data, windows[b:b + s.batch_size], device)
                n_obs = mask.sum()
                while True:  # A non-finite step is rolled back and retried.
                    lr = lr_init * lr_scale * lr_multiplier(
                        s.learning_rate, (epoch + i_batch / n_batches) / s.max_iter)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    loss, kl, finite = gradient_step(module, params, opt, x, mask, gen,
                                                     s, kl_weight(step, s.kl_warmup))
                    if finite:
                        break
                    bad_in_a_row += 1
                    if bad_in_a_row > MAX_BAD_STEPS:
                        raise RuntimeError(
                            f"Training diverged: {bad_in_a_row} non-finite losses "
                            f"or gradients in a row even after lowering the "
                            f"learning rate to {lr:.2e}. Try a smaller "
                            f"learning_rate_init or dt, or standardise X.")
                    lr_scale *= 0.5
                    snapshot.restore(module, opt)
                    warnings.warn(
                        f"Non-finite loss or gradient at step {step}; rolled back "
                        f"to the previous parameters and halved the learning "
                        f"rate (now {0.5 * lr:.2e}).", RuntimeWarning, stacklevel=4)
                bad_in_a_row = 0
                snapshot.take(module, opt)
                opt.step()
                step += 1
                n = float(n_obs)
                tot_loss += float(loss.detach()) * n
                tot_kl += float(kl.detach().sum())
                tot_obs += n
                bar.show(epoch, s.max_iter, i_batch + 1, n_batches,
                         tot_loss / max(tot_obs, 1.0), time.perf_counter() - t0)
            bar.clear()
            epoch_loss = tot_loss / max(tot_obs, 1.0)
            loss_curve.append(epoch_loss)
            if s.verbose:
                print(f"Epoch {epoch + 1}/{s.max_iter}: loss {epoch_loss:.4f}, "
                      f"KL/step {tot_kl / max(tot_obs, 1.0):.4f}, "
                      f"lr {lr:.1e}, {time.perf_counter() - t0:.1f}s", flush=True)
            if step < s.kl_warmup:
                continue
            if epoch_loss < best - s.tol:
                best, no_change = epoch_loss, 0
                best_state = [p.detach().clone() for p in module.parameters()]
            else:
                no_change += 1
                if no_change >= s.n_iter_no_change:
                    converged = True
                    break
    except KeyboardInterrupt:
        bar.clear()
        if step == 0:
            raise
        if best_state is not None:
            _load_parameters(module, best_state)
            kept = f"the model of the best epoch so far (loss {best:.4f})"
        else:
            _load_parameters(module, snapshot.parameters())
            kept = "the parameters of the last completed step"
        warnings.warn(f"Training interrupted by the user after {len(loss_curve)} "
                      f"epoch(s) and {step} step(s); keeping {kept}.",
                      UserWarning, stacklevel=4)
        return TrainingResult(loss_curve, len(loss_curve), False)
    if step == 0:
        raise RuntimeError("Training failed: no training step gave a finite loss "
                           "and gradient. Try a smaller learning_rate_init or dt, "
                           "or check X.")
    if not converged and s.learning_rate == "constant":
        warnings.warn(f"Stopped after max_iter={s.max_iter} epochs without "
                      f"converging; increase max_iter.", ConvergenceWarning,
                      stacklevel=4)
    return TrainingResult(loss_curve, len(loss_curve), converged)
