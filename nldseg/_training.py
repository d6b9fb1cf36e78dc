"""The training loop: windows, learning-rate schedule, KL weight, rollback, early stop.

:func:`train` fits a :class:`nldseg._model.NeuralLangevinVAE` by Adam on the
negative ELBO per observed step, for a budget of ``max_iter`` gradient steps
(not epochs: one 5,000-step recording and 500 sequences of 200 steps are
trained for the same number of updates). Each step takes a batch of random
windows of the training sequences (:func:`sample_windows`), cut afresh at every
pass over them. Before each window the encoder reads up to ``window_length``
earlier observations of its sequence (:func:`pad_leads`, no gradient), so that
``q(z_0)`` at a window start knows what the observations before it said, as at
any later step of :meth:`predict`; a window at a sequence start reads none,
and (when other windows read some) its ``z_0`` trains the encoder but not the
stationary prior, whose density fit sets the wells' relative depths.
The KL term is warmed up (:func:`kl_weight`), gradients are
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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from nldseg._distributed import SINGLE, Replicas
from nldseg._fused import release_buffers
from nldseg._parallel import WorkersUnavailable, run_in_workers, worker_count
from nldseg._validation import pad_windows

LEARNING_RATES = frozenset({"cosine", "constant"})
LR_FLOOR = 0.01  # The annealing ends at this fraction of learning_rate_init.
ANNEAL_FRACTION = 0.25  # The annealing lasts this fraction of max_iter steps.
N_PARTITION_DRAWS = 4096  # Importance draws of log Z per training step.
CLIP_NORM = 10.0  # Gradient norm clipping of every training step.
MAX_BAD_STEPS = 8  # Non-finite steps in a row before training gives up.
MAX_VALIDATION_WINDOWS = 256  # Held-out windows whose ELBO is checked.
#: A sequence of fewer than 10 is held out in blocks spread over it, each of at
#: least this many windows and at most ``MAX_HELD_BLOCKS`` of them: on one
#: simulated recording of motion (the suite's ``motion``, seeds 0-7) its last
#: tenth never held all four activities, one or two on 6 of 8 seeds, and on
#: seed 2 it held the only steps of one (see :func:`split_validation`).
HELD_BLOCK_WINDOWS = 2
MAX_HELD_BLOCKS = 10
#: A model of a higher level (reading more lags) is kept over the best one of
#: the lowest level only if its held-out ELBO is higher by more than this many
#: standard errors of the paired per-window differences: a one-sided test at
#: about 2.3 %, so that a tie keeps the simpler model.
LEVEL_Z = 2.0
#: Training KL per observed step below which the latent path carries nothing
#: (posterior collapse). Collapsed fits measured about 1e-4, fits with states
#: 0.2-0.3. Until the KL has risen above it, a decoder noise that follows the
#: latent state is held at its start (see :func:`train`).
KL_COLLAPSED = 0.01


@dataclass(frozen=True)
class TrainingSettings:
    """The estimator's parameters that drive :func:`train`."""

    max_iter: int
    batch_size: int
    window_length: int | None
    learning_rate: str
    learning_rate_init: float
    kl_warmup: int
    density_weight: float
    tol: float
    n_iter_no_change: int
    early_stopping: bool
    validation_fraction: float
    dt: float
    solver: str
    verbose: int
    n_jobs: int | str | None = 1

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
    def lead(self) -> int:
        """Observations the encoder reads before a window (:func:`pad_leads`)."""
        return self.window_length or 0

    @property
    def anneal_steps(self) -> int:
        """Length of the final annealing of the learning rate, in steps."""
        if self.learning_rate == "constant":
            return 0
        return max(1, int(round(ANNEAL_FRACTION * self.max_iter)))


def still_improving_message(scores: list[float], s: TrainingSettings) -> str:
    """The warning of a budget that ran out while the held-out ELBO still improved.

    ``scores``: the held-out ELBO per step at every check, one per
    ``s.validation_interval`` steps from the first. The message says by how
    much the best of the last ``n_iter_no_change`` checks after the KL
    warm-up beat the best before them, so that the user can weigh a larger
    ``max_iter`` (and its time) against that gain.
    """
    n, interval = s.n_iter_no_change, s.validation_interval
    # Check k is taken at step (k + 1) * interval; the plateau is looked for
    # from the first check at or after the end of the KL warm-up.
    after = scores[max(0, -(-s.kl_warmup // interval) - 1):]
    if len(after) > n:
        rise = max(after[-n:]) - max(after[:-n])
        measured = (f"the best of its last {n} checks ({n * interval} steps) was "
                    f"{rise:.3g} nats per step above the best before them")
    else:
        measured = (f"only {len(after)} check(s) of it came after the KL warm-up "
                    f"(kl_warmup={s.kl_warmup}), too few to see a plateau")
    return (f"The held-out ELBO was still improving (by more than tol={s.tol:g} "
            f"within n_iter_no_change={n} checks) when the budget of "
            f"max_iter={s.max_iter} gradient steps ran out: {measured}. To train "
            f"longer, increase max_iter (the time grows with it).")


@dataclass
class TrainingResult:
    """What :func:`train` reports.

    ``loss_curve``: the training loss of every step; ``validation_scores``:
    the held-out ELBO per step at every check; ``n_iter``: gradient steps
    taken; ``converged``: whether the held-out ELBO stopped improving before
    the budget ran out; ``interrupted``: whether the user stopped it (Ctrl-C);
    ``kept``: which of the models given was kept, ``restart_scores``: the
    scores they were compared on; ``level_gain``: the best model of the
    higher level against the best of the lowest, ``(ELBO gain per step,
    its standard error)`` on the same held-out windows, NaN when not
    compared (:func:`train`). ``rival``: with ``finish_rival``, the index of
    the best lowest-level model when a higher level won, also trained to
    the end (None otherwise), and ``rival_result`` its own result;
    ``finish_warnings``: the warnings of each of those two final trainings,
    held back for the caller to give for the model it keeps;
    ``train_segments``, ``held_segments``: the ``(start, length)`` runs of
    data rows trained on and held out (:func:`split_validation`).
    """

    loss_curve: list
    n_iter: int
    converged: bool
    validation_scores: list = field(default_factory=list)
    interrupted: bool = False
    kept: int = 0
    restart_scores: list = field(default_factory=list)
    level_gain: tuple = (float("nan"), float("nan"))
    rival: int | None = None
    rival_result: TrainingResult | None = None
    finish_warnings: list = field(default_factory=list)
    train_segments: list = field(default_factory=list)
    held_segments: list = field(default_factory=list)

    def give_finish_warnings(self, stacklevel: int) -> None:
        """Give the warnings held back in ``finish_warnings``, once.

        For the model the caller keeps. ``stacklevel`` counts from this
        method, as :func:`warnings.warn`'s does from its caller (2: the
        caller's line).
        """
        held, self.finish_warnings = self.finish_warnings, []
        for w in held:
            warnings.warn(w.message, w.category, stacklevel=stacklevel)


def split_validation(lengths: np.ndarray, fraction: float,
                     rng: np.random.Generator,
                     window_length: int | None = None) -> tuple[list, list]:
    """Training and held-out segments ``(start, length)`` of the sequences.

    With 10 sequences or more, ``fraction`` of the sequences (at least one)
    are held out whole. With fewer, ``fraction`` of each sequence of 20 steps
    or more (at least 2 steps) is held out in blocks spread over it
    (:func:`_held_blocks`): the sequence is cut into equal parts and the end
    of each part is held out, so that a single long recording is judged on
    steps from all its length, not on its last part alone, which may hold
    one of its states only (or the only steps of one). ``fraction=0``
    holds out nothing.
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
        if not n_val:
            train.append((a, n))
            continue
        for part_start, n_part, n_held in _held_blocks(n, n_val, window_length):
            train.append((a + part_start, n_part - n_held))
            val.append((a + part_start + n_part - n_held, n_held))
    return train, val


def _held_blocks(n: int, n_val: int, window_length: int | None) -> list:
    """How one sequence of ``n`` steps is held out: ``(part start, part length, held)``.

    The sequence is cut into ``k`` equal parts and the last ``held`` steps of
    each are held out, ``n_val`` in all. ``k`` is as many blocks of at least
    ``HELD_BLOCK_WINDOWS`` training windows as ``n_val`` allows, at most
    ``MAX_HELD_BLOCKS``; one block (the end of the sequence) when
    ``window_length`` is None (whole sequences are trained on) or ``n_val``
    is too short for two.
    """
    k = 1
    if window_length:
        k = min(MAX_HELD_BLOCKS, max(1, n_val // (HELD_BLOCK_WINDOWS * window_length)))
    edges = np.round(np.linspace(0, n, k + 1)).astype(int)
    held = np.diff(np.round(np.linspace(0, n_val, k + 1)).astype(int))
    return [(int(edges[j]), int(edges[j + 1] - edges[j]), int(held[j]))
            for j in range(k)]


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


def segment_first_rows(n_rows: int, segments: list) -> np.ndarray:
    """For each row of the data, the first row of its segment ``(start, length)``."""
    first = np.arange(n_rows)
    for a, n in segments:
        first[a:a + n] = a
    return first


def pad_leads(data: torch.Tensor, windows: list, first_rows: np.ndarray | None,
              lead: int, device) -> tuple | None:
    """The up to ``lead`` rows before each window, within its segment.

    Returns ``(frames, lengths)``: frames (B, L, D), each row's from the first
    column on (``lengths`` (B,) of them, the rest padding), with ``L`` the
    longest; ``None`` when no window has any (``lead=0``, or all at a segment
    start). ``first_rows``: :func:`segment_first_rows`.
    """
    if not lead or first_rows is None or not windows:
        return None
    starts = np.array([a for a, _ in windows], dtype=np.int64)
    before = np.minimum(lead, starts - first_rows[starts])
    width = int(before.max())
    if width == 0:
        return None
    offs = np.arange(width)
    idx = np.where(offs[None, :] < before[:, None],
                   (starts - before)[:, None] + offs[None, :], starts[:, None])
    return (data[torch.as_tensor(idx, device=data.device)],
            torch.as_tensor(before, device=device))


def _state_before(module, lead: tuple | None) -> torch.Tensor | None:
    """The encoder's state after a batch's leads (:func:`pad_leads`); None for none."""
    return None if lead is None else module.encoder_state(*lead)


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


def draw_step_noise(module, shape: tuple, n_sub: int, gen: torch.Generator,
                    device) -> tuple:
    """``(noise, eps0, probe)`` for a batch of ``shape = (B, T)``, in the order drawn.

    The Brownian increments (T - 1, n_sub, B, latent_dim), the initial states'
    draws (B, state_dim) and the ``log Z`` importance draws
    (:data:`N_PARTITION_DRAWS`, latent_dim).
    """
    n_rows, t_max = shape
    d = module.latent_dim
    noise = torch.randn((max(t_max - 1, 0), n_sub, n_rows, d), generator=gen,
                        device=device)
    eps0 = torch.randn((n_rows, module.state_dim), generator=gen, device=device)
    probe = torch.randn((N_PARTITION_DRAWS, d), generator=gen, device=device)
    return noise, eps0, probe


def training_loss(module, x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
                  eps0: torch.Tensor, probe: torch.Tensor, dt: float, weight: float,
                  solver: str = "euler", n_observed: torch.Tensor | None = None,
                  proposal: tuple | None = None,
                  h_init: torch.Tensor | None = None,
                  fixed_prior_rows: torch.Tensor | None = None,
                  density_weight: float = 0.0) -> tuple:
    """``(loss, kl)``: the negative ELBO per observed step, KL weighted by ``weight``.

    ``loss = -(sum log p(x | z) - weight * sum KL) / n_observed``, with
    ``n_observed`` the observed steps of the whole batch (default: of ``x``,
    ``mask.sum()``); ``kl`` is the per-path KL (B,). ``proposal``,
    ``h_init`` and ``fixed_prior_rows``: see
    :meth:`nldseg._model.NeuralLangevinVAE.simulate`; ``density_weight``:
    :meth:`nldseg._model.NeuralLangevinVAE.elbo_terms` (no change to the
    loss's value, only to its gradient).
    """
    log_lik, kl = module.elbo_terms(x, mask, noise, eps0, dt, solver=solver,
                                    partition_noise=probe, proposal=proposal,
                                    h_init=h_init, fixed_prior_rows=fixed_prior_rows,
                                    density_weight=density_weight)
    if n_observed is None:
        n_observed = mask.sum()
    return -(log_lik.sum() - weight * kl.sum()) / n_observed, kl


@dataclass
class BatchShare:
    """One process's rows of a batch of windows, and what the whole batch fixes.

    ``x``, ``mask``: this process's rows, padded (``None`` when it has none);
    ``rows``: their place among the batch's ``n_rows``; ``t_max``: the
    batch's longest window; ``n_observed``: its observed steps;
    ``lead``: the observations before the windows of ``x`` and their counts
    (:func:`pad_leads`, ``None``: none), with one process; ``first_frames``,
    ``first_lead``: the first frames of all the batch's windows and the
    observations before them, when several processes share the batch: the
    ``log Z`` proposal is centred on their codes, and each process takes the
    encoder states of its rows from the same pass (``None``: one process,
    which reads ``lead`` and centres on the codes of ``x``).
    ``sequence_starts`` (``n_rows``,) of bool: the windows that begin their
    segment, whose ``z_0`` trains the encoder but not the stationary prior
    (:meth:`initial_state <nldseg._model.NeuralLangevinVAE.initial_state>`);
    ``None``: every window trains both.
    """

    x: torch.Tensor | None
    mask: torch.Tensor | None
    rows: slice
    n_rows: int
    t_max: int
    n_observed: torch.Tensor
    lead: tuple | None = None
    first_frames: torch.Tensor | None = None
    first_lead: tuple | None = None
    sequence_starts: torch.Tensor | None = None

    @classmethod
    def whole(cls, x: torch.Tensor, mask: torch.Tensor, lead: tuple | None = None,
              sequence_starts: torch.Tensor | None = None) -> BatchShare:
        """A batch ``(x, mask)`` trained by one process."""
        return cls(x, mask, slice(0, x.shape[0]), x.shape[0], x.shape[1], mask.sum(),
                   lead, sequence_starts=sequence_starts)

    @classmethod
    def of(cls, data: torch.Tensor, windows: list, replicas: Replicas = SINGLE,
           first_rows: np.ndarray | None = None, lead: int = 0,
           hold_starts: bool = False) -> BatchShare:
        """This process's share of the batch ``windows`` of the rows of ``data``.

        ``first_rows`` and ``lead``: the observations read before each window
        (:func:`pad_leads`). ``hold_starts``: mark the windows that begin
        their segment (``sequence_starts``).
        """
        device = data.device
        starts = None
        if hold_starts and first_rows is not None:
            a = np.array([w[0] for w in windows], dtype=np.int64)
            starts = torch.as_tensor(first_rows[a] == a, device=device)
        if not replicas.distributed:
            return cls.whole(*pad_windows(data, windows, device),
                             pad_leads(data, windows, first_rows, lead, device), starts)
        rows = replicas.rows(len(windows))
        mine = windows[rows]
        x, mask = pad_windows(data, mine, device) if mine else (None, None)
        n_observed = torch.tensor(float(sum(n for _, n in windows)), dtype=data.dtype,
                                  device=device)
        return cls(x, mask, rows, len(windows), max(n for _, n in windows), n_observed,
                   None, data[[a for a, _ in windows]],
                   pad_leads(data, windows, first_rows, lead, device), starts)


def gradient_step(module, params: list, opt: torch.optim.Optimizer, share: BatchShare,
                  gen: torch.Generator, settings: TrainingSettings, weight: float,
                  replicas: Replicas = SINGLE, held: tuple = ()) -> tuple:
    """Noise, loss, backward and clipping of one batch; ``(loss, kl_per_step, finite)``.

    ``kl_per_step``: the batch's unweighted KL per observed step. The
    parameters in ``held`` get no gradient (the optimiser leaves them).

    Noise is drawn for the whole batch and sliced to this process's rows.
    With several processes every one centres the ``log Z`` proposal on the
    whole batch's first frames (:meth:`initial_codes
    <nldseg._model.NeuralLangevinVAE.initial_codes>`, no gradient), so that
    each share's loss is a term of the one-process loss; the losses and
    gradients are summed over the processes before clipping, so every one
    holds the whole batch's. The caller decides what to do with a non-finite
    step and takes the optimiser step (``opt.step()``) itself.
    """
    device = share.n_observed.device
    noise, eps0, probe = draw_step_noise(module, (share.n_rows, share.t_max),
                                         settings.n_sub, gen, device)
    opt.zero_grad(set_to_none=True)
    proposal = None
    if share.first_frames is None:
        h_init = _state_before(module, share.lead)
    else:  # Every process encodes the whole batch's leads, and takes its rows.
        with torch.no_grad():
            before = _state_before(module, share.first_lead)
            proposal = module.initial_codes(share.first_frames, before)
        h_init = None if before is None else before[share.rows]
    kl_sum = share.n_observed.new_zeros(())
    if share.x is None:
        loss = share.n_observed.new_zeros(())
    else:
        mine = noise[:share.x.shape[1] - 1, :, share.rows].contiguous()
        starts = (None if share.sequence_starts is None
                  else share.sequence_starts[share.rows])
        loss, kl = training_loss(module, share.x, share.mask, mine, eps0[share.rows],
                                 probe, settings.dt, weight, settings.solver,
                                 share.n_observed, proposal, h_init, starts,
                                 settings.density_weight)
        loss.backward()
        kl_sum = kl.detach().sum()
    loss = loss.detach()
    if replicas.distributed:
        _sum_gradients(params, [loss, kl_sum], replicas)
    for p in held:
        p.grad = None
    grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
    return (loss, float(kl_sum / share.n_observed),
            bool(torch.isfinite(loss) and torch.isfinite(grad_norm)))


def _sum_gradients(params: list, scalars: list, replicas: Replicas) -> None:
    """Sum the 0-d ``scalars`` and the gradients over the processes, in place.

    One all-reduce carries them all.

    A parameter left without a gradient on every process (unused by the
    loss) keeps none, as with one process.
    """
    device = scalars[0].device
    used = [torch.ones(1, device=device) if p.grad is not None
            else torch.zeros(1, device=device) for p in params]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    replicas.sum_([p.grad for p in params] + [s.reshape(1) for s in scalars]  # Views.
                  + used)
    for p, flag in zip(params, used):
        if not flag.item():
            p.grad = None


def _parameter_groups(module, params: list) -> list:
    """Adam's parameter groups of ``params``, each with its ``lr_factor``.

    Those the module's ``learning_rate_factors`` lists get their factor, one
    group each; the rest share one group at the common rate (factor 1).
    """
    factors = {id(p): factor for p, factor in module.learning_rate_factors()}
    groups = [{"params": [p for p in params if id(p) not in factors], "lr_factor": 1.0}]
    groups += [{"params": [p], "lr_factor": factors[id(p)]}
               for p in params if id(p) in factors]
    return groups


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
            torch._foreach_copy_(self._params, list(module.parameters()))
            bufs, values = [], []
            for p, state in opt.state.items():
                saved = self._state.setdefault(p, {})
                for key, value in state.items():
                    if key in saved:
                        bufs.append(saved[key])
                        values.append(value)
                    else:
                        saved[key] = value.clone()
            if bufs:
                torch._foreach_copy_(bufs, values)
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

    def follow(self, same: dict) -> None:
        """Key Adam's saved state by other parameters: ``same`` maps old to new."""
        self._state = {same[p]: saved for p, saved in self._state.items()}


class _HeldOut:
    """Held-out windows whose ELBO per step is measured with the same draws each time."""

    def __init__(self, module, data: torch.Tensor, segments: list,
                 settings: TrainingSettings, device, seed: int,
                 first_rows: np.ndarray | None = None) -> None:
        rng = np.random.default_rng(seed)
        windows = sample_windows(segments, settings.window_length, rng)
        windows = windows[:MAX_VALIDATION_WINDOWS]
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        self.batches = []
        for b in range(0, len(windows), settings.batch_size):
            batch = windows[b:b + settings.batch_size]
            x, mask = pad_windows(data, batch, device)
            lead = pad_leads(data, batch, first_rows, settings.lead, device)
            self.batches.append((x, mask, lead,
                                 *draw_step_noise(module, x.shape[:2], settings.n_sub,
                                                  gen, device)))
        self.dt, self.solver = settings.dt, settings.solver

    def __bool__(self) -> bool:
        return bool(self.batches)

    def elbo(self, module, replicas: Replicas = SINGLE) -> float:
        """Held-out ELBO per observed step (full KL weight).

        With several processes each takes every ``world_size``-th batch and
        the sums are added up over them.
        """
        sums = torch.zeros(2, dtype=torch.float64)
        for _, elbo, mask in self._batch_elbos(module, replicas):
            sums += torch.stack([elbo.sum(), mask.sum()]).double().cpu()
        replicas.sum_([sums])
        return float(sums[0] / sums[1])

    def window_elbos(self, module, replicas: Replicas = SINGLE) -> tuple:
        """Each held-out window's ELBO (summed over its steps) and its observed steps.

        Two float64 arrays of shape (n_windows,), in the windows' order.
        """
        sizes = [len(batch[1]) for batch in self.batches]
        ends = np.cumsum([0] + sizes)
        sums = torch.zeros(2, int(ends[-1]), dtype=torch.float64)
        for i, elbo, mask in self._batch_elbos(module, replicas):
            sums[:, ends[i]:ends[i + 1]] = torch.stack([elbo, mask.sum(1)]).double().cpu()
        replicas.sum_([sums])
        return sums[0].numpy(), sums[1].numpy()

    def _batch_elbos(self, module, replicas: Replicas):
        """``(index, ELBO of each window, mask)`` of this process's batches."""
        with torch.no_grad():
            for i, (x, mask, lead, noise, eps0, probe) in enumerate(self.batches):
                if i % replicas.world_size != replicas.rank:
                    continue
                log_lik, kl = module.elbo_terms(x, mask, noise, eps0, self.dt,
                                                solver=self.solver,
                                                partition_noise=probe,
                                                h_init=_state_before(module, lead))
                yield i, log_lik - kl, mask


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


#: :func:`refine_depths`: positions per step, proposal centres, importance
#: draws of ``log Z`` and Adam's learning rate.
DEPTH_BATCH, DEPTH_CENTRES, DEPTH_DRAWS, DEPTH_LR = 1024, 256, 2048, 1e-4


def refine_depths(module, positions: np.ndarray, n_steps: int, seed: int,
                  keep: Callable[[], bool] | None = None) -> bool:
    """Refit the trained energy alone to posterior positions; ``True`` if kept.

    Maximum likelihood of the stationary law ``exp(-beta E) / Z`` on
    ``positions`` (n, latent_dim), the posterior paths through the training
    data: ``n_steps`` Adam steps (learning rate ``DEPTH_LR``, annealed over
    them by :func:`lr_multiplier` to ``LR_FLOOR`` of it) on
    :meth:`~nldseg._model.NeuralLangevinVAE.stationary_nll` of
    ``DEPTH_BATCH`` positions drawn at random, with ``log Z`` from
    ``DEPTH_DRAWS`` importance draws around ``DEPTH_CENTRES`` positions
    (Scott's bandwidth per dimension). Only the energy's parameters move
    (``beta``, encoder and decoder are kept), in place.

    Why: the ELBO fits the shape of each well (its path term is score
    matching) but hardly their relative depths, which set
    ``state_occupancy_``; after training the posterior positions sit in the
    wells in the right shares and the stationary law can be fitted to them
    directly. A non-finite loss or parameter restores the energy as it was,
    with a warning; so does ``keep`` (called once the refit is done, e.g. to
    check that the wells are the same) when it returns ``False``. Returns
    ``False`` when nothing was refitted or the energy was restored.
    """
    data = torch.as_tensor(np.asarray(positions), dtype=torch.float32)
    n, d = data.shape
    if n_steps <= 0 or n < 2:
        return False
    params = list(module.energy.parameters())
    saved = [p.detach().clone() for p in params]
    log_scale = torch.log(data.std(0).clamp_min(1e-6)
                          * DEPTH_CENTRES ** (-1.0 / (d + 4))).expand(DEPTH_CENTRES, d)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(params, lr=DEPTH_LR)
    for p in params:
        p.requires_grad_(True)
    finite = True
    try:
        for step in range(n_steps):
            # Annealed as training is, over every step: the last steps'
            # minibatch noise would otherwise stay in the depths.
            opt.param_groups[0]["lr"] = DEPTH_LR * lr_multiplier(step, 0, n_steps)
            centres = data[torch.randint(n, (DEPTH_CENTRES,), generator=gen)]
            batch = data[torch.randint(n, (DEPTH_BATCH,), generator=gen)]
            loss = module.stationary_nll(batch, centres, log_scale,
                                         torch.randn((DEPTH_DRAWS, d), generator=gen))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not (torch.isfinite(loss)
                    and all(bool(torch.isfinite(p).all()) for p in params)):
                warnings.warn("The refit of the wells' depths met a non-finite "
                              "value; the energy is kept as trained.", RuntimeWarning,
                              stacklevel=2)
                finite = False
                break
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    if finite and (keep is None or keep()):
        return True
    with torch.no_grad():
        for p, value in zip(params, saved):
            p.copy_(value)
    return False


def _load_parameters(module, tensors: list) -> None:
    with torch.no_grad():
        for p, value in zip(module.parameters(), tensors):
            p.copy_(value)


def train(modules, data: torch.Tensor, lengths: np.ndarray, settings: TrainingSettings,
          device: torch.device, seed: int, replicas: Replicas = SINGLE,
          levels: list | None = None, finish_rival: bool = False) -> TrainingResult:
    """Adam on the negative ELBO for at most ``max_iter`` steps (module docstring).

    ``modules``: the freshly built models, one or several (restarts, the
    estimator's ``n_init``). Each is trained with its own windows and noise
    until its held-out ELBO plateaus, the annealing is due or half of
    ``max_iter`` is spent, whichever comes first; the one whose held-out ELBO
    is then highest (the mean of its last ``n_iter_no_change`` checks; the
    training loss when nothing is held out) trains on alone to the end of
    its schedule, and the others are dropped. ``TrainingResult.kept`` is
    its index, ``restart_scores`` the scores compared. The first model is
    trained exactly as a single one would be, so one model gives today's fit.

    ``data`` (n_total, n_features) holds the standardised training sequences
    end to end on ``device``, ``lengths`` their lengths; or one such tensor
    per model, the same rows embedded differently (the estimator's candidates
    with and without a lag, compared on the same held-out steps, windows and
    noise).

    ``levels`` (one int per model, e.g. its lags; default all equal): the
    models of the lowest level compete as restarts do. The first model of a
    higher level is kept instead only if, on the same held-out windows and
    noise, its ELBO is higher than the best lowest-level model's by more
    than ``LEVEL_Z`` standard errors of the per-window differences
    (:func:`_level_gain`); without held-out data, only if its score is
    higher. Only then are that level's other models (its restarts) trained
    to the comparison point, and the best of the level by score is kept: a
    level that loses costs one model, not all its restarts. Every model
    warms its KL term up over the same ``kl_warmup`` steps.
    ``TrainingResult.level_gain`` reports the kept higher-level model against
    the best lowest-level one; ``restart_scores`` holds NaN for the models
    never trained. ``finish_rival``: when a higher level is kept, the best
    lowest-level model is trained to the end of its schedule too
    (its index ``TrainingResult.rival``, its result ``rival_result``), so
    that the caller can prefer it on other grounds; each of the two final
    trainings' warnings is then held back in its result's
    ``finish_warnings``.

    The models that train to the comparison point together do so side by
    side in ``settings.n_jobs`` worker processes
    (:func:`nldseg._parallel.worker_count`; on CPU with one process only), and
    come back to continue in ``modules`` (:func:`_train_runs`): the same
    steps, losses and scores as one after the other. Where the first models
    of every level are more than the workers, the lowest level's train to
    the comparison first, and its best model then trains to the end beside
    the higher levels' first models (the same steps again; its warnings are
    given only if it is kept); with ``finish_rival`` the kept model and the
    rival train to the end side by side.

    A non-finite loss or gradient rolls back to the parameters before the
    last update, halves the learning rate (for the rest of training),
    retries the batch with fresh noise and warns. Ctrl-C keeps the model
    with the best held-out ELBO so far (else the last good step) and warns;
    while models train in worker processes it stops with
    ``KeyboardInterrupt``.
    Warns when ``max_iter`` ends before the KL warm-up, and when the held-out
    ELBO was still improving when the budget ran out.

    ``replicas``: the processes training this model together
    (:mod:`nldseg._distributed`); each must call with the same arguments. Each
    takes its share of every batch; losses, gradients and held-out ELBOs are
    summed over them, so all take the same steps as one process would (to
    float tolerance). Only the first prints progress.
    """
    modules = list(modules)
    datas = list(data) if isinstance(data, (list, tuple)) else [data] * len(modules)
    if len(datas) != len(modules):
        raise ValueError(f"{len(datas)} data tensors for {len(modules)} models.")
    s = settings
    rng = np.random.default_rng(int(seed))
    if s.kl_warmup > s.max_iter:
        warnings.warn(
            f"max_iter={s.max_iter} gradient steps end before the KL warm-up of "
            f"kl_warmup={s.kl_warmup} steps does: the model would be trained "
            f"without its full KL term. Increase max_iter or lower kl_warmup.",
            UserWarning, stacklevel=4)
    fraction = s.validation_fraction if s.early_stopping else 0.0
    train_segments, val_segments = split_validation(lengths, fraction, rng,
                                                     s.window_length)
    first_rows = segment_first_rows(datas[0].shape[0], train_segments + val_segments)
    # A held-out window reads the observations before it in its sequence, as
    # predict does, held out or not (they are read, not scored). A block's
    # first window read none before: it started blind, which charges a model
    # whose states must be recognised and not one that merges them (a
    # reason, not measured alone).
    sequence_first_rows = segment_first_rows(
        datas[0].shape[0], split_validation(lengths, 0.0, rng)[0])
    # Every restart is judged on the same held-out windows and noise (one set
    # of windows per embedding of the rows, drawn alike).
    held_outs = {}
    for module, x in zip(modules, datas):
        if id(x) not in held_outs:
            held_outs[id(x)] = _HeldOut(module, x, val_segments, s, device,
                                        int(seed) + 1, sequence_first_rows)
    levels = [0] * len(modules) if levels is None else list(levels)
    base = min(levels)
    runs = []
    for i, (module, x) in enumerate(zip(modules, datas)):
        # The first run draws exactly what a single fit draws.
        run_rng = rng if i == 0 else np.random.default_rng([int(seed), i])
        run_seed = int(seed) if i == 0 else int(run_rng.integers(2**31 - 1))
        label = f"run {i + 1}/{len(modules)}: " if len(modules) > 1 else ""
        runs.append(_TrainingRun(module, x, train_segments, first_rows,
                                 held_outs[id(x)], s,
                                 device, run_rng, run_seed, replicas, label))
    # A higher level's first model competes at once; its other restarts are
    # trained only if that level wins (see the docstring).
    first_of = {lev: levels.index(lev) for lev in set(levels)}
    deferred = [i for i in range(len(modules))
                if levels[i] != base and first_of[levels[i]] != i]
    scores, done = [float("nan")] * len(modules), {}

    side_by_side = device.type == "cpu" and not replicas.distributed

    def workers(n_tasks):
        return worker_count(s.n_jobs, n_tasks) if side_by_side else 1

    def advance(indices, finishing=()):
        """Train ``indices`` to the comparison point and ``finishing`` to the end.

        Side by side in worker processes where they may run there. A
        finished run's warnings are held back in its result. Returns the
        index of a run the user interrupted, else None.
        """
        tasks = [(i, False) for i in indices] + [(i, True) for i in finishing]
        trained = _train_runs([runs[i] for i, _ in tasks], workers(len(tasks)),
                              [finish for _, finish in tasks])
        for (i, finish), (run, outcome) in zip(tasks, trained):
            runs[i] = run
            if finish:
                done[i] = outcome
                if outcome.interrupted:
                    return i
                continue
            if not isinstance(outcome, TrainingResult):
                scores[i] = outcome
                continue
            done[i] = outcome  # No annealing left (or interrupted).
            if outcome.interrupted:
                return i
            scores[i] = _selection_score(outcome.validation_scores,
                                         outcome.loss_curve, s)
        return None

    def score(i):
        return np.nan_to_num(scores[i], nan=-np.inf)

    def best(indices):
        return max(indices, key=score)

    first = [i for i in range(len(modules)) if i not in deferred]
    lowest = [i for i in first if levels[i] == base]
    several = len(lowest) < len(first)
    # Where the first models cannot all train at once, the lowest level's go
    # first; its best then trains to the end beside the higher levels' first
    # models. It is trained to the end in any case when ``finish_rival`` (as
    # the model kept or as the rival), so its last steps take the place of
    # the lowest level's second round: on 2 cores the default candidates
    # (two restarts and a lag) train in two rounds and a finish where they
    # took three. Without ``finish_rival`` a won higher level drops it.
    early = several and 1 < workers(len(first)) < len(first)
    stopped = advance(lowest if early else first)
    if stopped is not None:
        return _kept(done[stopped], stopped, scores)
    kept, gain = best(range(len(modules))), (float("nan"), float("nan"))
    simple = best(lowest) if several else None
    if several:
        held_simple = held_outs[id(datas[simple])]
        # The best lowest-level model at its comparison point, read before it
        # trains on: every higher-level model is judged against it.
        reference = held_simple.window_elbos(modules[simple], replicas) \
            if held_simple else None
        if early:
            stopped = advance([i for i in first if levels[i] != base],
                              finishing=[] if simple in done else [simple])
            if stopped is not None:
                return _kept(done[stopped], stopped, scores)

        def level_gain(i):
            return _level_gain(modules[i], held_outs[id(datas[i])], reference, replicas)

        other = best([i for i in first if levels[i] != base])
        if held_simple:
            gain = level_gain(other)
            won = gain[0] > LEVEL_Z * gain[1]
        else:
            won = score(other) > score(simple)
        kept = simple
        if won:
            rivals = [i for i in deferred if levels[i] == levels[other]]
            stopped = advance(rivals)
            if stopped is not None:
                return _kept(done[stopped], stopped, scores)
            kept = best([other, *rivals])
            if kept != other and held_simple:
                gain = level_gain(kept)
    rival = simple if finish_rival and kept != simple and levels[kept] != base else None
    if rival is None:
        if kept not in done:
            done[kept] = runs[kept].finish()
        done[kept].give_finish_warnings(stacklevel=4)  # Held back beside others.
    else:
        # The two train to the end side by side, each one's warnings held back.
        stopped = advance([], finishing=[i for i in (kept, rival) if i not in done])
        if stopped is not None:
            return _kept(done[kept], kept, scores)
        done[kept].rival, done[kept].rival_result = rival, done[rival]
    done[kept].level_gain = gain
    done[kept].train_segments, done[kept].held_segments = train_segments, val_segments
    return _kept(done[kept], kept, scores)


def _train_runs(runs: list, n_jobs: int, finishing: list) -> list:
    """``(run, outcome)`` of each run trained to its comparison point or to the end.

    ``finishing`` (one bool per run): train that run to the end
    (:meth:`_TrainingRun.finish` with its warnings held back in its result)
    instead of to its comparison point (:meth:`_TrainingRun.to_comparison`).
    With ``n_jobs`` > 1 the runs train side by side in that many worker
    processes (:func:`nldseg._parallel.run_in_workers`), each on as many torch
    threads as the caller's, and come back as copies that continue in the
    caller's modules (:meth:`_TrainingRun.adopt`): the same steps as one after
    the other here. When the workers cannot run them, they train here, one
    after the other, with a warning.
    """
    if n_jobs > 1 and len(runs) > 1:
        try:
            trained = run_in_workers(_train_in_worker,
                                     [(run, run.data, run.held_out, finish)
                                      for run, finish in zip(runs, finishing)],
                                     n_jobs)
        except WorkersUnavailable as exc:  # The runs here are untouched.
            warnings.warn(
                f"Could not train the candidate models in worker processes ({exc}); "
                f"training them one after the other instead (the same fit, in more "
                f"time). Set n_jobs=1 to skip the attempt.", UserWarning, stacklevel=4)
        else:
            # A copy comes back without rows and held-out windows; joblib may
            # also have run the calls here after all, on these very runs.
            for run, (copy, _) in zip(runs, trained):
                copy.attach(run.data, run.held_out)
                copy.adopt(run.module)
            return trained
    return [(run, _advance_run(run, finish)) for run, finish in zip(runs, finishing)]


def _advance_run(run: _TrainingRun, finish: bool) -> float | TrainingResult:
    """``run`` trained to the end (warnings held back) or to its comparison point."""
    return run.finish(hold_warnings=True) if finish else run.to_comparison()


def _train_in_worker(run: _TrainingRun, data: torch.Tensor, held_out: _HeldOut,
                     finish: bool) -> tuple:
    """In a worker process: ``(run, outcome)`` of :func:`_advance_run`.

    The run is pickled back without its training rows and held-out windows
    (:meth:`_TrainingRun.__getstate__`), and the training kernels' work
    space is freed.
    """
    run.attach(data, held_out, show_progress=False)
    try:
        outcome = _advance_run(run, finish)
    finally:
        release_buffers()
    return run, outcome


def _kept(result: TrainingResult, index: int, scores: list) -> TrainingResult:
    result.kept, result.restart_scores = index, list(scores)
    return result


def _level_gain(module, held_out: _HeldOut, reference: tuple,
                replicas: Replicas) -> tuple:
    """``module``'s held-out ELBO per step minus a reference's, and its standard error.

    ``reference``: the reference model's ``(window ELBOs, steps)``
    (:meth:`_HeldOut.window_elbos`) on the same windows and noise as
    ``held_out`` (two :class:`_HeldOut` drawn alike for two embeddings of the
    rows); the per-window differences are combined by :func:`paired_gain`.
    """
    elbo, steps = held_out.window_elbos(module, replicas)
    ref, ref_steps = reference
    if not np.array_equal(steps, ref_steps):
        raise RuntimeError("Models compared on different held-out windows.")
    return paired_gain(elbo - ref, steps)


def paired_gain(diff: np.ndarray, steps: np.ndarray) -> tuple:
    """Gain per step of paired per-unit differences, and its standard error.

    ``diff`` (n,) are two models' summed scores on the same units (held-out
    windows, segments) subtracted, ``steps`` (n,) the units' steps. The gain
    is ``diff.sum() / steps.sum()``; its standard error is the ratio
    estimator's, from the spread over units of each difference around
    ``gain`` times its steps (infinite with fewer than 2 units: no spread to
    judge the gain by).
    """
    diff, steps = np.asarray(diff, dtype=float), np.asarray(steps, dtype=float)
    gain = float(diff.sum() / steps.sum())
    n = len(steps)
    if n < 2:
        return gain, float("inf")
    resid = diff - gain * steps
    return gain, float(np.sqrt((resid * resid).sum() * n / (n - 1)) / steps.sum())


def _selection_score(scores: list, loss_curve: list, s: TrainingSettings) -> float:
    """How good a run is when the restarts are compared (higher is better).

    The mean of its last ``n_iter_no_change`` held-out ELBOs, or without
    held-out data minus its mean training loss over the last check interval.
    """
    if scores:
        return float(np.mean(scores[-max(1, s.n_iter_no_change):]))
    if loss_curve:
        return -float(np.mean(loss_curve[-s.validation_interval:]))
    return -np.inf


class _TrainingRun:
    """One model's training, resumable and picklable (see :func:`train`).

    :meth:`to_comparison` trains until its constant-rate phase ends or half
    of ``max_iter`` is spent, whichever comes first, and returns the run's
    :func:`_selection_score`; :meth:`finish` trains on as a single run would
    and returns its :class:`TrainingResult` (so does :meth:`to_comparison`
    when training ends first, or on Ctrl-C). The run's whole state (model,
    optimiser, noise generator, window draws, curves) lives on the object,
    so that it can be pickled to a worker process between the two, apart
    from the training rows and held-out windows (:meth:`attach`).
    """

    def __init__(self, module, data: torch.Tensor, train_segments: list,
                 first_rows: np.ndarray, held_out: _HeldOut, s: TrainingSettings,
                 device, rng: np.random.Generator, seed: int, replicas: Replicas,
                 label: str) -> None:
        self.module, self.s = module, s
        self.train_segments, self.first_rows = train_segments, first_rows
        self.rng, self.replicas, self.label = rng, replicas, label
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(seed))
        # The stationary prior is fitted to the codes of window starts the
        # encoder read observations before; those of sequence starts (x_0
        # alone) train only the encoder, unless no window has any observation
        # before it.
        self.hold_starts = bool(s.lead) and any(n > s.lead for _, n in train_segments)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.lr_scale = 1.0  # Halved by every rollback.
        self.opt = torch.optim.Adam(_parameter_groups(module, self.params),
                                    lr=float(s.learning_rate_init), fused=True)
        self.anneal_begin = s.max_iter - s.anneal_steps
        # Restarts are compared by half the budget at the latest.
        self.compare_at = s.max_iter // 2
        self.loss_curve: list[float] = []
        self.kl_curve: list[float] = []
        # A noise that follows the latent state is held at its start (shared,
        # as with decoder_covariance="full") while the posterior is collapsed:
        # free from the start, it could settle that plateau for good (one well).
        self.held = tuple(module.latent_noise_parameters())
        self.scores: list[float] = []
        self.best, self.bad_checks, self.converged = -np.inf, 0, False
        self.best_state: list | None = None
        self.step, self.compared = 0, False
        self.snapshot = RollbackSnapshot(module, self.opt)
        self.windows: list = []
        self.elapsed = 0.0  # Seconds trained so far (the progress bar's clock).
        self.attach(data, held_out)

    def attach(self, data: torch.Tensor | None, held_out: _HeldOut | None,
               show_progress: bool = True) -> None:
        """Give the run its training rows and held-out windows (``None``: take them)."""
        self.data, self.held_out = data, held_out
        self.verbose = self.s.verbose if self.replicas.rank == 0 else 0
        self.bar = _ProgressBar(self.verbose if show_progress else 0)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__, data=None, held_out=None)
        del state["bar"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.bar = _ProgressBar(0)

    def adopt(self, module) -> None:
        """Continue in ``module``: its parameters take this run's values and roles.

        ``module`` has this run's architecture (the model a worker process was
        sent a copy of); the optimiser's state, the rollback snapshot and the
        held noise parameters follow its parameters.
        """
        module.load_state_dict(self.module.state_dict())
        same = dict(zip(self.module.parameters(), module.parameters()))
        self.params = [same[p] for p in self.params]
        self.held = tuple(same[p] for p in self.held)
        for group in self.opt.param_groups:
            group["params"] = [same[p] for p in group["params"]]
        state = self.opt.state
        moved = {same[p]: value for p, value in state.items()}
        state.clear()
        state.update(moved)
        self.snapshot.follow(same)
        self.module = module

    def to_comparison(self) -> float | TrainingResult:
        """Train to the comparison point; the selection score, or the result if it ended."""
        return self._train(stop_at_comparison=True)

    def finish(self, hold_warnings: bool = False) -> TrainingResult:
        """Train to the end of the schedule.

        ``hold_warnings``: the warnings raised are not given but kept in the
        result's ``finish_warnings``, for the caller to give if it keeps the
        model.
        """
        if not hold_warnings:
            return self._train(stop_at_comparison=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self._train(stop_at_comparison=False)
        result.finish_warnings = list(caught)
        return result

    def _train(self, stop_at_comparison: bool) -> float | TrainingResult:
        s, module, opt = self.s, self.module, self.opt
        lr_init = float(s.learning_rate_init)
        interval = s.validation_interval
        t_start = time.perf_counter() - self.elapsed
        t_check = time.perf_counter()
        try:
            while self.step < min(s.max_iter, self.anneal_begin + s.anneal_steps):
                if not self.compared and self.step >= min(self.anneal_begin,
                                                          self.compare_at):
                    self.compared = True
                    if stop_at_comparison:
                        self.bar.clear()
                        self.elapsed = time.perf_counter() - t_start
                        return _selection_score(self.scores, self.loss_curve, s)
                if len(self.windows) < 1:
                    self.windows = sample_windows(self.train_segments, s.window_length,
                                                  self.rng)
                    if not self.windows:
                        raise ValueError("No training window of 2 steps or more is "
                                         "left after holding out validation data.")
                batch = self.windows[:s.batch_size]
                self.windows = self.windows[s.batch_size:]
                share = BatchShare.of(self.data, batch, self.replicas, self.first_rows,
                                      s.lead, self.hold_starts)
                bad_in_a_row = 0
                while True:  # A non-finite step is rolled back and retried.
                    lr = lr_init * self.lr_scale * lr_multiplier(
                        self.step, self.anneal_begin, s.anneal_steps)
                    for group in opt.param_groups:
                        group["lr"] = lr * group["lr_factor"]
                    loss, kl_step, finite = gradient_step(
                        module, self.params, opt, share, self.gen, s,
                        kl_weight(self.step, s.kl_warmup), self.replicas, self.held)
                    if finite:
                        break
                    bad_in_a_row += 1
                    if bad_in_a_row > MAX_BAD_STEPS:
                        raise RuntimeError(
                            f"Training diverged: {bad_in_a_row} non-finite losses or "
                            f"gradients in a row even after lowering the learning "
                            f"rate to {lr:.2e}. Try a smaller learning_rate_init or "
                            f"dt, or standardise X.")
                    self.lr_scale *= 0.5
                    self.snapshot.restore(module, opt)
                    warnings.warn(
                        f"Non-finite loss or gradient at step {self.step}; rolled back "
                        f"to the previous parameters and halved the learning rate "
                        f"(now {0.5 * lr:.2e}).", RuntimeWarning, stacklevel=6)
                self.snapshot.take(module, opt)
                opt.step()
                self.step += 1
                step = self.step
                self.loss_curve.append(float(loss.detach()))
                self.kl_curve.append(kl_step)
                self.bar.show(step, s.max_iter, self.loss_curve[-1],
                              time.perf_counter() - t_start)
                if step % interval:
                    continue
                recent = float(np.mean(self.loss_curve[-interval:]))
                if self.held and np.mean(self.kl_curve[-interval:]) > KL_COLLAPSED:
                    self.held = ()  # The latent path is in use: the noise may follow it.
                checking = bool(self.held_out) and step < self.anneal_begin
                if checking:
                    self.scores.append(self.held_out.elbo(module, self.replicas))
                    if step >= s.kl_warmup:
                        if self.scores[-1] > self.best + s.tol:
                            self.best, self.bad_checks = self.scores[-1], 0
                            self.best_state = [p.detach().clone()
                                               for p in module.parameters()]
                        else:
                            self.bad_checks += 1
                        if self.bad_checks >= s.n_iter_no_change:  # The plateau: anneal.
                            self.converged, self.anneal_begin = True, step
                if self.verbose:
                    self.bar.clear()
                    shown = (f", held-out ELBO {self.scores[-1]:.4f}" if checking
                             else "")
                    print(f"{self.label}Step {step}/{s.max_iter}: loss {recent:.4f}"
                          f"{shown}, lr {lr:.1e}, {time.perf_counter() - t_check:.1f}s",
                          flush=True)
                    t_check = time.perf_counter()
        except KeyboardInterrupt:
            self.bar.clear()
            if self.step == 0:
                raise
            if self.best_state is not None:
                _load_parameters(module, self.best_state)
                kept = f"the model of the best held-out ELBO so far ({self.best:.4f})"
            else:
                _load_parameters(module, self.snapshot.parameters())
                kept = "the parameters before the last update"
            warnings.warn(f"Training interrupted by the user after {self.step} "
                          f"step(s); keeping {kept}.", UserWarning, stacklevel=6)
            return TrainingResult(self.loss_curve, self.step, False, self.scores,
                                  interrupted=True)
        self.bar.clear()
        self.elapsed = time.perf_counter() - t_start
        if self.step == 0:
            raise RuntimeError("Training failed: no training step gave a finite loss "
                               "and gradient. Try a smaller learning_rate_init or dt, "
                               "or check X.")
        if self.scores and not self.converged:
            warnings.warn(still_improving_message(self.scores, s), ConvergenceWarning,
                          stacklevel=6)
        return TrainingResult(self.loss_curve, self.step, self.converged, self.scores)
