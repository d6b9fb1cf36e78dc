"""The training loop: windows, learning-rate schedule, KL weight, rollback, early stop.

:func:`train` fits a :class:`nldseg._model.NeuralLangevinVAE` by Adam on the
negative ELBO per observed step, for a budget of ``max_iter`` gradient steps
(not epochs: one 5,000-step recording and 500 sequences of 200 steps are
trained for the same number of updates). Each step takes a batch of random
windows of the training sequences (:func:`sample_windows`), cut afresh at every
pass over them. The KL term is warmed up (:func:`kl_weight`), gradients are
clipped, and a non-finite loss or gradient rolls back the last update, halves
the learning rate and retries the batch.

Schedule and stopping. A part of the data is held out
(:func:`split_validation`); every ``validation_interval`` steps its ELBO per
step is measured with the same noise draws each time. The learning rate stays
at ``learning_rate_init`` until the held-out ELBO has not improved by ``tol``
for ``n_iter_no_change`` checks (after the KL warm-up), or until the last
quarter of the budget; then it is annealed along half a cosine to 1% of
itself over a quarter of ``max_iter`` steps (``"cosine"``), and training ends.
With ``"constant"`` training ends at the plateau instead.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from nldseg._validation import pad_windows

LEARNING_RATES = frozenset({"cosine", "constant"})
LR_FLOOR = 0.01  # The annealing ends at this fraction of learning_rate_init.
ANNEAL_FRACTION = 0.25  # The annealing lasts this fraction of max_iter steps.
N_PARTITION_DRAWS = 4096  # Importance draws of log Z per training step.
CLIP_NORM = 10.0  # Gradient norm clipping of every training step.
MAX_BAD_STEPS = 8  # Non-finite steps in a row before training gives up.
MAX_VALIDATION_WINDOWS = 256  # Held-out windows whose ELBO is checked.


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
    early_stopping: bool
    validation_fraction: float
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

    @property
    def validation_interval(self) -> int:
        """Gradient steps between two checks of the held-out ELBO."""
        return int(min(100, max(10, self.max_iter // 20)))

    @property
    def anneal_steps(self) -> int:
        """Length of the final annealing of the learning rate, in steps."""
        if self.learning_rate == "constant":
            return 0
        return max(1, int(round(ANNEAL_FRACTION * self.max_iter)))


@dataclass
class TrainingResult:
    """What :func:`train` reports.

    ``loss_curve``: the training loss of every step; ``validation_scores``:
    the held-out ELBO per step at every check; ``n_iter``: gradient steps
    taken; ``converged``: whether the held-out ELBO stopped improving before
    the budget ran out.
    """

    loss_curve: list
    n_iter: int
    converged: bool
    validation_scores: list = field(default_factory=list)


def split_validation(lengths: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> tuple[list, list]:
    """Training and held-out segments ``(start, length)`` of the sequences.

    With 10 sequences or more, ``fraction`` of the sequences (at least one)
    are held out whole; with fewer, the last ``fraction`` of each sequence of
    20 steps or more (at least 2 steps), so that a single long recording is
    split in time. ``fraction=0`` holds out nothing.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    everything = [(int(a), int(n)) for a, n in zip(starts, lengths)]
    if fraction <= 0:
        return everything, []
    if len(lengths) >= 10:
        n_val = max(1, int(round(fraction * len(lengths))))
        held = set(rng.choice(len(lengths), n_val, replace=False).tolist())
        return ([w for i, w in enumerate(everything) if i not in held],
                [w for i, w in enumerate(everything) if i in held])
    train, val = [], []
    for a, n in everything:
        n_val = max(2, int(round(fraction * n))) if n >= 20 else 0
        train.append((a, n - n_val))
        if n_val:
            val.append((a + n - n_val, n_val))
    return train, val


def sample_windows(segments: list, window_length: int | None,
                   rng: np.random.Generator) -> list:
    """Random non-overlapping windows ``(start, length)`` covering every segment.

    ``segments`` are ``(start, length)`` pairs of rows (whole sequences, or
    their training parts). Each segment longer than ``window_length`` is cut at
    a random offset and then every ``window_length`` steps; pieces shorter
    than 2 steps (no transition) are dropped. The windows of all segments are
    shuffled. ``None`` keeps whole segments.
    """
    w = window_length
    out = []
    for s0, n in segments:
        if w is None or n <= w:
            if n >= 2:
                out.append((s0, n))
            continue
        cut = int(rng.integers(0, w))
        edges = [0] + list(range(cut, n, w)) + [n]
        out.extend((s0 + a, b - a) for a, b in zip(edges[:-1], edges[1:])
                   if b - a >= 2)
    return [out[i] for i in rng.permutation(len(out))]


def lr_multiplier(step: int, anneal_begin: int, anneal_steps: int) -> float:
    """Learning-rate multiplier at gradient step ``step``.

    1 before ``anneal_begin``, then half a cosine down to :data:`LR_FLOOR`,
    reached at step ``anneal_begin + anneal_steps - 1``, the last one taken
    (``anneal_steps=0``: always 1).
    """
    if anneal_steps <= 0 or step < anneal_begin:
        return 1.0
    progress = min(1.0, (step + 1 - anneal_begin) / anneal_steps)
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


class _HeldOut:
    """Held-out windows whose ELBO per step is measured with the same draws each time."""

    def __init__(self, module, data: torch.Tensor, segments: list,
                 settings: TrainingSettings, device, seed: int) -> None:
        rng = np.random.default_rng(seed)
        windows = sample_windows(segments, settings.window_length, rng)
        windows = windows[:MAX_VALIDATION_WINDOWS]
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        self.batches = []
        for b in range(0, len(windows), settings.batch_size):
            x, mask = pad_windows(data, windows[b:b + settings.batch_size], device)
            self.batches.append((x, mask, *draw_step_noise(module, x, settings.n_sub,
                                                           gen)))
        self.dt, self.solver = settings.dt, settings.solver

    def __bool__(self) -> bool:
        return bool(self.batches)

    def elbo(self, module) -> float:
        """Held-out ELBO per observed step (full KL weight)."""
        total, n_obs = 0.0, 0.0
        with torch.no_grad():
            for x, mask, noise, eps0, probe in self.batches:
                log_lik, kl = module.elbo_terms(x, mask, noise, eps0, self.dt,
                                                solver=self.solver,
                                                partition_noise=probe)
                total += float((log_lik - kl).sum())
                n_obs += float(mask.sum())
        return total / n_obs


class _ProgressBar:
    """An in-place progress line on stderr while a fit runs longer than a second.

    Shown when ``verbose >= 2``, or when ``verbose == 1`` and stderr is a
    terminal; redrawn at most five times a second.
    """

    def __init__(self, verbose: int) -> None:
        self.enabled = bool(verbose) and (verbose >= 2 or sys.stderr.isatty())
        self._last = 0.0
        self._width = 0

    def show(self, step: int, max_iter: int, loss: float, elapsed: float) -> None:
        now = time.perf_counter()
        if not self.enabled or elapsed < 1.0 or now - self._last < 0.2:
            return
        self._last = now
        filled = int(30 * step / max(max_iter, 1))
        line = (f"\rStep {step}/{max_iter} [{'#' * filled}{'.' * (30 - filled)}] "
                f"loss {loss:.4f}, {elapsed:.0f}s")
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
    """Adam on the negative ELBO for at most ``max_iter`` steps (module docstring).

    ``data`` (n_total, n_features) holds the standardised training sequences
    end to end on ``device``, ``lengths`` their lengths. A non-finite loss or
    gradient rolls back to the parameters before the last update, halves the
    learning rate (for the rest of training), retries the batch with fresh
    noise and warns. Ctrl-C keeps the model with the best held-out ELBO so far
    (else the last good step) and warns. Warns when ``max_iter`` ends before
    the KL warm-up, and when the held-out ELBO was still improving when the
    budget ran out.
    """
    s = settings
    rng = np.random.default_rng(int(seed))
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    if s.kl_warmup > s.max_iter:
        warnings.warn(
            f"max_iter={s.max_iter} gradient steps end before the KL warm-up of "
            f"kl_warmup={s.kl_warmup} steps does: the model would be trained "
            f"without its full KL term. Increase max_iter or lower kl_warmup.",
            UserWarning, stacklevel=4)
    fraction = s.validation_fraction if s.early_stopping else 0.0
    train_segments, val_segments = split_validation(lengths, fraction, rng)
    held_out = _HeldOut(module, data, val_segments, s, device, int(seed) + 1)
    params = [p for p in module.parameters() if p.requires_grad]
    lr_init = float(s.learning_rate_init)
    lr_scale = 1.0  # Halved by every rollback.
    lr = lr_init
    opt = torch.optim.Adam(params, lr=lr)
    anneal_steps = s.anneal_steps
    anneal_begin = s.max_iter - anneal_steps
    interval = s.validation_interval
    loss_curve: list[float] = []
    scores: list[float] = []
    best, bad_checks, converged, best_state = -np.inf, 0, False, None
    bad_in_a_row, step = 0, 0
    snapshot = RollbackSnapshot(module, opt)
    bar = _ProgressBar(s.verbose)
    windows: list = []
    t_start = t_check = time.perf_counter()
    try:
        while step < min(s.max_iter, anneal_begin + anneal_steps):
            if len(windows) < 1:
                windows = sample_windows(train_segments, s.window_length, rng)
                if not windows:
                    raise ValueError("No training window of 2 steps or more is "
                                     "left after holding out validation data.")
            batch, windows = windows[:s.batch_size], windows[s.batch_size:]
            x, mask = pad_windows(data, batch, device)
            while True:  # A non-finite step is rolled back and retried.
                lr = lr_init * lr_scale * lr_multiplier(step, anneal_begin, anneal_steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss, kl, finite = gradient_step(module, params, opt, x, mask, gen, s,
                                                 kl_weight(step, s.kl_warmup))
                if finite:
                    break
                bad_in_a_row += 1
                if bad_in_a_row > MAX_BAD_STEPS:
                    raise RuntimeError(
                        f"Training diverged: {bad_in_a_row} non-finite losses or "
                        f"gradients in a row even after lowering the learning rate "
                        f"to {lr:.2e}. Try a smaller learning_rate_init or dt, or "
                        f"standardise X.")
                lr_scale *= 0.5
                snapshot.restore(module, opt)
                warnings.warn(
                    f"Non-finite loss or gradient at step {step}; rolled back to the "
                    f"previous parameters and halved the learning rate (now "
                    f"{0.5 * lr:.2e}).", RuntimeWarning, stacklevel=4)
            bad_in_a_row = 0
            snapshot.take(module, opt)
            opt.step()
            step += 1
            loss_curve.append(float(loss.detach()))
            bar.show(step, s.max_iter, loss_curve[-1], time.perf_counter() - t_start)
            if step % interval:
                continue
            recent = float(np.mean(loss_curve[-interval:]))
            checking = held_out and step < anneal_begin
            if checking:
                scores.append(held_out.elbo(module))
                if step >= s.kl_warmup:
                    if scores[-1] > best + s.tol:
                        best, bad_checks = scores[-1], 0
                        best_state = [p.detach().clone() for p in module.parameters()]
                    else:
                        bad_checks += 1
                    if bad_checks >= s.n_iter_no_change:  # The plateau: anneal now.
                        converged, anneal_begin = True, step
            if s.verbose:
                bar.clear()
                held = f", held-out ELBO {scores[-1]:.4f}" if checking else ""
                print(f"Step {step}/{s.max_iter}: loss {recent:.4f}{held}, lr {lr:.1e}, "
                      f"{time.perf_counter() - t_check:.1f}s", flush=True)
                t_check = time.perf_counter()
    except KeyboardInterrupt:
        bar.clear()
        if step == 0:
            raise
        if best_state is not None:
            _load_parameters(module, best_state)
            kept = f"the model of the best held-out ELBO so far ({best:.4f})"
        else:
            _load_parameters(module, snapshot.parameters())
            kept = "the parameters before the last update"
        warnings.warn(f"Training interrupted by the user after {step} step(s); keeping "
                      f"{kept}.", UserWarning, stacklevel=4)
        return TrainingResult(loss_curve, step, False, scores)
    bar.clear()
    if step == 0:
        raise RuntimeError("Training failed: no training step gave a finite loss "
                           "and gradient. Try a smaller learning_rate_init or dt, "
                           "or check X.")
    if scores and not converged:
        warnings.warn(
            f"The held-out ELBO was still improving (by more than tol={s.tol:g} within "
            f"n_iter_no_change={s.n_iter_no_change} checks) when the budget of "
            f"max_iter={s.max_iter} gradient steps ran out; increase max_iter.",
            ConvergenceWarning, stacklevel=4)
    return TrainingResult(loss_curve, step, converged, scores)
