"""Monte-Carlo inference on a fitted model: posterior paths, particle filter, stream.

:class:`PosteriorSampler` draws ``n_paths`` posterior latent paths per
sequence; ``transform``, ``score`` and the landscape's codes go through it.
:class:`ParticleFilter` weighs such paths by the generative model and labels
the steps (``predict_proba``, ``predict``; with ``inference="paths"`` the
sampler's unweighted paths do; with ``inference="markov"``,
:class:`MarkovFilter`, the exact filter of the states' Markov chain, which
draws nothing). :class:`SegmentationStream` runs any of them one step at a
time. Both follow one noise rule: **common random numbers**. Every
sequence gets the same draws: ``eps0`` (n_paths, state_dim) for the initial
states first, then the Brownian increments (n_sub, n_paths, latent_dim) of
each step in turn, one draw per step (the filter adds one resampling uniform
per step, see :class:`ParticleFilter`). So the output for a sequence does not
depend on the other sequences passed with it, nor on how they are chunked,
nor on the sequence's own length (the increments of step ``k`` are the same
for a prefix), and the stream, which draws the same numbers one step at a
time, reproduces ``predict``. The one exception is the fit's own paths
(:meth:`PosteriorSampler.landscape_paths`: the wells, the depths' refit,
the clock): each sequence draws its own there, as their statistics over
many sequences need independent samples (:meth:`PosteriorSampler.blocks`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from nldseg._threads import check_threads, torch_threads
from nldseg._validation import (
    Sequences,
    active_by_step,
    check_observation,
    delay_embed,
    pad_windows,
)

_SCORE_PARTITION_DRAWS = 8192  # Importance draws of log Z for score().
BLOCK_STEPS = 2048  # Observations simulated at once (memory per chunk of sequences).
#: ``switch_hold="auto"``: the hold, as a fraction of the mean dwell time.
AUTO_HOLD_FRACTION = 0.002


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


def _block(data: torch.Tensor, seqs: Sequences, ids: np.ndarray, k0: int,
           k1: int) -> tuple:
    """Observations ``k0..k1-1`` of the sequences ``ids``, padded: (B, T, D), mask.

    A sequence that has ended gets an empty window at its end (padding,
    masked out).
    """
    offs, lens = seqs.offsets, seqs.lengths
    return pad_windows(data, [(int(offs[i] + min(k0, lens[i])),
                               max(0, int(min(lens[i], k1)) - k0)) for i in ids], "cpu")


def _scatter(out: np.ndarray, values: np.ndarray, seqs: Sequences, ids: np.ndarray,
             k0: int) -> None:
    """Write a block's ``values`` (T, B, ...) at the real steps of sequences ``ids``."""
    offs, lens = seqs.offsets, seqs.lengths
    for j, i in enumerate(ids):
        n = int(min(lens[i], k0 + values.shape[0])) - k0
        if n > 0:
            out[offs[i] + k0:offs[i] + k0 + n] = values[:n, j]


#: How ``predict_proba`` reads the labels (``LangevinSegmenter``'s ``inference``).
INFERENCES = frozenset({"filter", "markov", "paths"})

LANDSCAPE_BUDGET = 20000  # Time steps encoded to find the wells.
LANDSCAPE_PIECE = 2000  # Length of the pieces of a sequence longer than the budget.


class PosteriorSampler:
    """Posterior latent paths of a fitted model, with common random numbers.

    Parameters
    ----------
    module : NeuralLangevinVAE
        The trained model, on CPU, in eval mode.
    dt : float
        Euler step (``1 / n_sub``).
    n_paths : int
        Posterior paths per sequence.
    seed : int
        Seed of the draws: the same seed gives the same outputs.
    solver : {"euler", "torchsde"}, default="euler"
        Passed to :meth:`NeuralLangevinVAE.simulate`.
    """

    def __init__(self, module, dt: float, n_paths: int, seed: int,
                 solver: str = "euler") -> None:
        self.module = module
        self.dt = float(dt)
        self.n_sub = int(round(1.0 / dt))
        self.n_paths = int(n_paths)
        self.seed = int(seed)
        self.solver = solver

    def generator(self, chunk: int | None = None) -> torch.Generator:
        """A fresh generator at the start of the draws (of chunk ``chunk``'s own).

        ``chunk`` (the index of a chunk's first sequence, for
        :meth:`blocks`' ``independent`` draws) seeds it from ``seed`` and
        ``chunk`` together.
        """
        if chunk is None:
            return torch.Generator().manual_seed(self.seed)
        seed = np.random.SeedSequence([self.seed, chunk]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def initial_noise(self, gen: torch.Generator, rows: int | None = None) -> torch.Tensor:
        """Draws of the initial states, (rows, state_dim); ``rows``: ``n_paths``."""
        rows = self.n_paths if rows is None else rows
        return torch.randn((rows, self.module.state_dim), generator=gen)

    def step_noise(self, gen: torch.Generator) -> torch.Tensor:
        """The increments of one observation step, (n_sub, n_paths, latent_dim)."""
        return torch.randn((self.n_sub, self.n_paths, self.module.latent_dim),
                           generator=gen)

    def blocks(self, seqs: Sequences, *, with_kl: bool = False, probe_draws: int = 0,
               chunk_rows: int = 4096, block_steps: int = BLOCK_STEPS,
               independent: bool = False):
        """Posterior paths of ``seqs``, piece by piece: chunks of sequences, blocks of time.

        Sequences are taken in chunks of about ``chunk_rows`` paths, and each
        chunk is simulated ``block_steps`` observations at a time, every block
        from the GRU and latent states the previous one ended with
        (:meth:`NeuralLangevinVAE.continue_paths`), so that memory is bounded
        whatever the length of a sequence, and the paths equal one
        simulation of the whole sequence. Every chunk draws, from a fresh
        generator: ``probe_draws`` standard normal rows (the ``log Z`` draws
        of :meth:`elbo_sum`), ``eps0``, then the increments step by step; so
        every sequence gets the same draws, and a sequence's paths do not
        depend on the others given with it.

        ``independent=True`` gives every sequence draws of its own instead
        (each chunk from a generator of its own, seeded by the sampler's seed
        and the chunk's first sequence): the paths of many sequences are then
        independent samples, as a fit's statistics over them need. Sharing
        one draw, the sequences' time-aligned paths would all lean the same
        way at once; on a fit of the suite's ``heavy_tails`` (200 sequences)
        one such draw put 0.32 of its positions in one of four wells, others
        0.25-0.29. The paths then depend on ``chunk_rows``.

        Yields
        ------
        ids : ndarray of int
            The chunk's sequences.
        k0 : int
            Index of the block's first observation within its sequences.
        x, mask : Tensor of shape (B, T, D) and (B, T)
            The block's padded observations and which are real.
        z : Tensor of shape (T, B * n_paths, state_dim)
            Latent states (rows sequence-major: ``sequence * n_paths + path``).
        kl : Tensor of shape (T, B * n_paths) or None
            Path KL accrued on the interval ending at each observation (0 at
            the first); with ``with_kl`` only.
        kl0 : Tensor of shape (B * n_paths,) or None
            The initial states' KL, in the first block only and with
            ``with_kl`` only.
        """
        module, s, d = self.module, self.n_paths, self.module.latent_dim
        data, lens = torch.as_tensor(seqs.data), seqs.lengths
        if self.solver != "euler":  # torchsde's sdeint runs whole sequences.
            block_steps = int(lens.max())
        per_chunk = max(1, chunk_rows // s)
        for c0 in range(0, len(lens), per_chunk):
            ids = np.arange(c0, min(len(lens), c0 + per_chunk))
            rows = len(ids) * s if independent else s  # Paths drawn; repeated if shared.
            gen = self.generator(c0 if independent else None)
            probe = torch.randn((probe_draws, d), generator=gen) if probe_draws else None
            eps0 = self.initial_noise(gen, rows)
            eps0 = eps0 if independent else eps0.repeat(len(ids), 1)
            t_max = int(lens[ids].max())
            h = z = None
            for k0 in range(0, t_max, block_steps):
                k1 = min(t_max, k0 + block_steps)
                x, mask = _block(data, seqs, ids, k0, k1)
                n_new = x.shape[1] - (k0 == 0)
                noise = _stepwise_noise(gen, n_new + 1, self.n_sub, rows, d)
                noise = noise if independent else noise.repeat(1, 1, len(ids), 1)
                if self.solver != "euler":
                    paths = module.simulate(x, noise, self.dt, s, eps0=eps0,
                                            solver=self.solver, with_kl=with_kl,
                                            partition_noise=probe)
                    yield ids, k0, x, mask, paths.z, paths.kl_path, paths.kl0
                    continue
                kl0 = None
                if k0 == 0:
                    h = module.gru_step(x[:, 0])
                    z, kl0, _ = module.initial_state(*module.initial_posterior(h), eps0, s,
                                                  probe)
                zs, h, kl = module.continue_paths(x[:, x.shape[1] - n_new:], h, z,
                                                  noise, self.dt, with_kl)
                if k0 == 0:
                    zs = torch.cat([z[None], zs])
                    if kl is not None:
                        kl = torch.cat([kl.new_zeros((1, kl.shape[1])), kl])
                z = zs[-1]
                yield ids, k0, x, mask, zs, kl, kl0

    def map_paths(self, seqs: Sequences, fn, shape: tuple, dtype,
                  chunk_rows: int = 4096, block_steps: int = BLOCK_STEPS,
                  independent: bool = False) -> np.ndarray:
        """``fn`` of the posterior paths at every observation, (n_total, *shape).

        ``fn`` maps a block's latent states (T, B, n_paths, state_dim) to an
        array (T, B, *shape); its values at the real observations are
        written in place, so only the result is held for the whole input.
        ``independent``: as in :meth:`blocks`.
        """
        s = self.n_paths
        out = np.empty((seqs.data.shape[0], *shape), dtype=dtype)
        with torch.no_grad():
            for ids, k0, _, _, z, _, _ in self.blocks(seqs, chunk_rows=chunk_rows,
                                                      block_steps=block_steps,
                                                      independent=independent):
                values = fn(z.reshape(z.shape[0], len(ids), s, -1))
                _scatter(out, values, seqs, ids, k0)
        return out

    def latent_paths(self, seqs: Sequences, chunk_rows: int = 4096,
                     block_steps: int = BLOCK_STEPS, independent: bool = False
                     ) -> np.ndarray:
        """Posterior latent states at every observation, (n_total, n_paths, state_dim).

        The result does not depend on ``block_steps``, nor on ``chunk_rows``
        unless ``independent`` (:meth:`blocks`).
        """
        return self.map_paths(seqs, lambda z: z.numpy(),
                              (self.n_paths, self.module.state_dim), np.float32,
                              chunk_rows, block_steps, independent)

    def landscape_codes(self, seqs: Sequences, rng: np.random.Generator,
                        budget: int = LANDSCAPE_BUDGET,
                        piece: int = LANDSCAPE_PIECE) -> np.ndarray:
        """Latent positions of one path through training sequences, (n, latent_dim).

        The pieces of :meth:`landscape_paths`, concatenated.
        """
        return np.concatenate(self.landscape_paths(seqs, rng, budget, piece))

    def landscape_paths(self, seqs: Sequences, rng: np.random.Generator,
                        budget: int = LANDSCAPE_BUDGET,
                        piece: int = LANDSCAPE_PIECE) -> list[np.ndarray]:
        """One posterior path through each piece of some training sequences.

        Returns a list of float64 arrays (n_steps_i, latent_dim), positions
        only, in the order of the pieces in the data.

        The budget counts time steps. Sequences are drawn at random (from
        ``rng``) and taken whole while they fit the budget left (or are no
        longer than ``piece``), until ``budget`` steps are taken. A longer
        sequence contributes pieces of ``piece`` steps spread evenly over its
        length, as many as the budget left holds (at least one), each encoded
        from its own start: the wells of one long recording are found from
        its whole span, not from its beginning, at a bounded cost. Each
        piece's path has draws of its own (:meth:`blocks`'s ``independent``).
        """
        order = rng.permutation(len(seqs.lengths))
        offs, pieces = seqs.offsets, []
        for i in order:
            n = int(seqs.lengths[i])
            if n <= max(budget, piece):
                pieces.append((int(offs[i]), n))
                budget -= n
            else:
                k = -(-budget // piece)  # ceil; budget > 0 here
                centres = (np.arange(k) + 0.5) * n / k
                starts = np.clip(np.round(centres - piece / 2), 0, n - piece)
                pieces.extend((int(offs[i]) + int(a), piece) for a in starts)
                budget -= k * piece
            if budget <= 0:
                break
        pieces.sort()
        sub = Sequences(np.concatenate([seqs.data[a:a + n] for a, n in pieces]),
                        np.array([n for _, n in pieces]), "list")
        z = self.latent_paths(sub, independent=True)[:, 0, :self.module.latent_dim]
        return sub.split(z.astype(np.float64))

    def elbo_sum(self, seqs: Sequences, block_steps: int = BLOCK_STEPS) -> float:
        """Sum over sequences of the ELBO averaged over the paths (standardised units).

        Summed block by block (:meth:`blocks`): memory stays bounded whatever
        the sequences' length.
        """
        module, s = self.module, self.n_paths
        total = 0.0
        with torch.no_grad():
            for _, _, x, mask, z, kl, kl0 in self.blocks(
                    seqs, with_kl=True, probe_draws=_SCORE_PARTITION_DRAWS,
                    block_steps=block_steps):
                m = mask.transpose(0, 1).repeat_interleave(s, dim=1)
                elbo = ((module.decode_log_prob(x, z, s) - kl) * m).sum()
                if kl0 is not None:
                    elbo = elbo - kl0.sum()
                total += float(elbo) / s
        return total


class Particles(NamedTuple):
    """A particle filter's state after one observation.

    ``h`` (B, hidden): the encoder's output; ``z`` (B * n_particles,
    state_dim): the particles (rows sequence-major); ``log_w`` (B,
    n_particles): their log weights, normalised per sequence.
    """

    h: torch.Tensor
    z: torch.Tensor
    log_w: torch.Tensor


class ParticleFilter:
    """Online state probabilities by a particle filter on the fitted model.

    Each particle moves as a posterior path does (the encoder steers it) and
    its weight is multiplied by ``(p / q)^prior_weight`` times the decoder's
    ``p(x_t | z_t)``. Here ``p / q`` is the prior's density of the move over
    the posterior's (Girsanov's weight of the Euler steps taken,
    :meth:`nldseg._fused.InferenceStepper.advance`); the initial particles
    are weighed by the initial prior over ``q(z_0 | x_0)`` to the same power.
    The probability of state ``k`` is the weight of the particles in the
    basin of well ``k``. When the effective sample size falls below half the
    particles, a sequence's particles are resampled (systematic resampling).
    With a delay embedding (``n_lags``), the decoder's density is that of the
    newest observation given the previous ones (the module's
    ``given_features``), so that no observation is weighed twice.

    The filter targets ``p(z_t | x_0..x_t)`` of a model with the fitted
    decoder and latent dynamics whose transition density is proportional to
    ``p^prior_weight q^(1 - prior_weight)``: the learned prior at 1 (the
    plain particle filter of the generative model), the encoder's posterior
    SDE at 0. The learned prior switches more slowly than the data (see
    ``benchmarks/RESULTS.md``, kinetics), so at 1 the filter holds the old
    state a step too long at sharp switches; in between, the decoder's
    likelihood corrects the encoder where it lags, while the encoder's
    dynamics keep switches prompt.

    Common random numbers as :class:`PosteriorSampler`: every sequence gets
    the same draws, ``eps0`` (n_particles, state_dim) first, then per
    observation the resampling uniform and, from the second observation on,
    before it, the Brownian increments (n_sub, n_particles, latent_dim). So a
    sequence's output does not depend on the sequences passed with it, on
    chunking or on its own length, and :class:`SegmentationStream` reproduces
    it.

    Parameters
    ----------
    module : NeuralLangevinVAE
        The trained model, on CPU, in eval mode.
    landscape : EnergyLandscape
        The fitted states.
    dt : float
        Euler step (``1 / n_sub``).
    n_particles : int
        Particles per sequence.
    prior_weight : float
        Exponent of the prior-to-posterior density ratio, in ``[0, 1]``.
    seed : int
        Seed of the draws.
    """

    def __init__(self, module, landscape, dt: float, n_particles: int,
                 prior_weight: float, seed: int) -> None:
        self.module = module
        self.landscape = landscape
        self.dt = float(dt)
        self.n_sub = int(round(1.0 / dt))
        self.n_particles = int(n_particles)
        self.prior_weight = float(prior_weight)
        self.seed = int(seed)
        self.stepper = module.inference_stepper(self.dt)

    def generator(self) -> torch.Generator:
        """A fresh generator at the start of the draws."""
        return torch.Generator().manual_seed(self.seed)

    def start(self, x0: torch.Tensor, gen: torch.Generator) -> tuple:
        """Particles at the first observations ``x0`` (B, D).

        Returns the weighted particles (for the probabilities of this step)
        and the state to carry on (resampled where needed).
        """
        module, n = self.module, self.n_particles
        eps0 = torch.randn((n, module.state_dim), generator=gen).repeat(x0.shape[0], 1)
        h = module.gru_step(x0)
        mean, log_std = (v.repeat_interleave(n, dim=0) for v in module.initial_posterior(h))
        z = mean + log_std.exp() * eps0
        log_ratio = module.initial_log_weight(z, mean, log_std)
        return self._weigh(h, z, log_ratio, x0, h.new_zeros((x0.shape[0], n)), gen)

    def advance(self, state: Particles, x: torch.Tensor, gen: torch.Generator,
                work: dict | None = None) -> tuple:
        """Move ``state``'s particles to the next observations ``x`` (B, D)."""
        module, n, rows = self.module, self.n_particles, state.z.shape[0]
        noise = torch.randn((self.n_sub, n, module.latent_dim), generator=gen)
        stepper = self.stepper
        h = module.gru_step(x, state.h)
        log_ratio = state.z.new_zeros(rows)
        z = stepper.advance(state.z, stepper.bias(h),
                            stepper.drive(noise.repeat(1, x.shape[0], 1)), work,
                            log_ratio=log_ratio)
        return self._weigh(h, z, log_ratio, x, state.log_w, gen)

    def _weigh(self, h, z, log_ratio, x, log_w, gen) -> tuple:
        """New weights from the move's ``log_ratio`` and ``x``'s likelihood; resample.

        A particle whose weight is not a number (an observation far beyond the
        training data can overflow the likelihood) gets weight 0; if no
        particle of a sequence keeps a finite weight, the observation is not
        weighed and the sequence keeps its weights.
        """
        n = self.n_particles
        u = torch.rand((), generator=gen)
        log_lik = self.module.decode_log_prob(x[:, None], z[None], n)[0]
        step = (self.prior_weight * log_ratio + log_lik).view(-1, n)
        new = log_w + torch.nan_to_num(step, nan=-math.inf, posinf=-math.inf)
        norm = torch.logsumexp(new, dim=1, keepdim=True)
        log_w = torch.where(torch.isfinite(norm), new - norm, log_w)
        weighted = Particles(h, z, log_w)
        return weighted, _resample(weighted, u)

    def proba(self, seqs: Sequences, chunk_rows: int = 4096,
              block_steps: int = BLOCK_STEPS) -> np.ndarray:
        """State probabilities at every observation of ``seqs``, (n_total, n_states).

        Sequences are filtered in chunks of about ``chunk_rows`` particles,
        and labelled ``block_steps`` observations at a time; the result does
        not depend on either.
        """
        n, d = self.n_particles, self.module.latent_dim
        data, lens = torch.as_tensor(seqs.data), seqs.lengths
        out = np.empty((seqs.data.shape[0], self.landscape.n_states))
        per_chunk = max(1, chunk_rows // n)
        work = None
        with torch.no_grad():
            for c0 in range(0, len(lens), per_chunk):
                ids = np.arange(c0, min(len(lens), c0 + per_chunk))
                gen, state = self.generator(), None
                t_max = int(lens[ids].max())
                for k0 in range(0, t_max, block_steps):
                    k1 = min(t_max, k0 + block_steps)
                    x, _ = _block(data, seqs, ids, k0, k1)
                    zs = torch.empty((x.shape[1], len(ids), n, d))
                    ws = np.empty((x.shape[1], len(ids), n))
                    for k in range(x.shape[1]):
                        if state is None:
                            weighted, state = self.start(x[:, k], gen)
                            work = self.stepper.workspace(weighted.z.shape[0], weighted.z)
                        else:
                            weighted, state = self.advance(state, x[:, k], gen, work)
                        zs[k] = weighted.z[:, :d].view(len(ids), n, d)
                        ws[k] = _weights(weighted)
                    values = self.landscape.state_fractions(zs, ws)
                    _scatter(out, values, seqs, ids, k0)
        return out


class MarkovFilter:
    """Forward filter of the landscape's states as a Markov chain (``inference="markov"``).

    The fitted model, read as a hidden Markov model on its states: the
    chain moves by the transition matrix of the learned prior's paths at a
    lag of one observation (:func:`nldseg._kinetics.markov_state_model`, the
    calibrated clock), and state ``k`` emits a frame with the decoder's
    density averaged over points of the prior's paths in the core of ``k``,
    ``p(x | k) = mean_m p(x | z_m)``. The filter is exact for that chain:
    ``alpha_t = (alpha_{t-1} P) * p(x_t | .)``, normalised, from the states'
    stationary shares at the first observation. No draws: the output is
    deterministic, and each sequence's does not depend on the others'.

    Unlike :class:`ParticleFilter`, which can only weigh the states its
    particles have reached, every state keeps a probability at every step,
    so a switch shows as soon as the frames favour it by more than the
    chain's odds of staying (the frames' evidence accumulates as in an HMM
    filter). What it leaves out is the position within a well, which the
    chain forgets from one step to the next.

    To keep every transition possible (a pair of states the simulation
    never saw cross has a zero count), ``TRANSITION_FLOOR`` is mixed into the
    transition matrix, and a frame's likelihoods are taken relative to the
    largest and floored at ``exp(MIN_LOG_RATIO)``. A frame none of whose
    densities is finite is not weighed (the chain only moves).

    Parameters
    ----------
    module : NeuralLangevinVAE
        The trained model, on CPU, in eval mode.
    chain : MarkovStateModel
        Its states' transition matrix and emission points.
    start : ndarray of shape (n_states,)
        Probabilities of the states at the first observation.
    """

    TRANSITION_FLOOR = 1e-6
    MIN_LOG_RATIO = -500.0

    def __init__(self, module, chain, start: np.ndarray) -> None:
        self.module = module
        k, m = chain.points.shape[:2]
        self.n_states, self.n_points = k, m
        self.transition = ((1.0 - self.TRANSITION_FLOOR) * np.asarray(chain.transition,
                                                                      np.float64)
                           + self.TRANSITION_FLOOR / k)
        self.start = np.asarray(start, np.float64) / np.sum(start)
        points = torch.as_tensor(np.asarray(chain.points, np.float32).reshape(k * m, -1))
        with torch.no_grad():  # Once: the cost per frame is then one product.
            self._points = None if module is None else module.decoder_points(points)

    def log_emissions(self, x: torch.Tensor) -> np.ndarray:
        """``log p(x_t | state)`` of model frames ``x`` (T, D), float64 (T, n_states)."""
        with torch.no_grad():
            lp = self.module.points_log_prob(x, self._points).double()
        lp = lp.view(x.shape[0], self.n_states, self.n_points)
        return (torch.logsumexp(lp, -1) - math.log(self.n_points)).numpy()

    @classmethod
    def frame_likelihoods(cls, log_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each frame's state likelihoods relative to its largest, and that largest.

        ``log_b`` (B, n_states) -> ``b`` (B, n_states), in
        ``[exp(MIN_LOG_RATIO), 1]``, and ``top`` (B,), the largest log
        density (0 for a frame none of whose densities is finite: its ``b``
        is all ones, so it is not weighed).
        """
        log_b = np.nan_to_num(log_b, nan=-np.inf, posinf=-np.inf, neginf=-np.inf)
        top = log_b.max(1, keepdims=True)
        seen = np.isfinite(top)
        top = np.where(seen, top, 0.0)
        rel = np.where(seen, log_b - top, 0.0)
        return np.exp(np.maximum(rel, cls.MIN_LOG_RATIO)), top[:, 0]

    def update(self, alpha: np.ndarray | None, log_b: np.ndarray) -> np.ndarray:
        """Filtered probabilities (B, n_states) after frames of densities ``log_b``.

        ``alpha`` (B, n_states) are those after the previous frames (``None``:
        ``log_b`` is the first frame's).
        """
        return self._step(alpha, self.frame_likelihoods(log_b)[0], self.transition)[0]

    def _step(self, alpha: np.ndarray | None, b: np.ndarray,
              transition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step of the forward recursion ``alpha_t = (alpha_{t-1} P) * b_t``.

        Returns the normalised probabilities (B, n_states) and the
        normalisers (B,); ``alpha=None`` starts from :attr:`start`.
        """
        prior = (np.broadcast_to(self.start, b.shape) if alpha is None
                 else alpha @ transition)
        new = prior * b
        norm = new.sum(1, keepdims=True)
        return new / norm, norm[:, 0]

    def sequence_emissions(self, seqs: Sequences,
                           block_steps: int = BLOCK_STEPS) -> np.ndarray:
        """``log p(x_t | state)`` of every frame of ``seqs``, (n_total, n_states).

        Computed ``block_steps`` rows at a time.
        """
        data = torch.as_tensor(seqs.data)
        return np.concatenate([self.log_emissions(data[a:a + block_steps])
                               for a in range(0, data.shape[0], block_steps)]
                              or [np.zeros((0, self.n_states))])

    def proba(self, seqs: Sequences, block_steps: int = BLOCK_STEPS) -> np.ndarray:
        """State probabilities at every observation of ``seqs``, (n_total, n_states).

        The frames' densities are computed ``block_steps`` rows at a time;
        the sequences are then filtered side by side, one step at a time.
        """
        log_b = self.sequence_emissions(seqs, block_steps)
        out = np.empty_like(log_b)
        alpha = None
        for t, active in enumerate(active_by_step(seqs.lengths)):
            rows = seqs.offsets[active] + t
            alpha = self.update(None if alpha is None else alpha[:len(active)], log_b[rows])
            out[rows] = alpha
        return out

    def reestimate(self, seqs: Sequences, *, max_iter: int = 20, tol: float = 1e-6,
                   block_steps: int = BLOCK_STEPS) -> tuple[np.ndarray, int, float]:
        """The transition matrix that best explains ``seqs``, the emissions held.

        Baum-Welch for the transition matrix alone: the chain's densities of
        the frames stay as they are, and each round replaces the matrix by
        the expected transition counts of the forward-backward pass under the
        current one, row-normalised. The likelihood of ``seqs`` rises every
        round; the rounds stop after ``max_iter``, or once it rises by less
        than ``tol`` nats per observation. The start is the chain's matrix
        (with its floor) and its first-frame probabilities; a state that
        ``seqs`` never visit before their last frame keeps its row.

        Returns ``(transition, n_iter, log_likelihood)``: the matrix
        (n_states, n_states), the rounds run, and the mean log-likelihood
        per observation under the returned matrix's predecessor (the last
        forward pass).
        """
        b, top = self.frame_likelihoods(self.sequence_emissions(seqs, block_steps))
        transition = self.transition.copy()
        offs = seqs.offsets
        active_at = active_by_step(seqs.lengths)
        n_total = max(1, b.shape[0])
        previous, log_lik, n_iter = -np.inf, -np.inf, 0
        while n_iter < max_iter:
            n_iter += 1
            alphas = np.empty_like(b)
            log_norm = np.zeros(b.shape[0])
            alpha = None
            for t, active in enumerate(active_at):  # Forward, as proba().
                rows = offs[active] + t
                alpha, norm = self._step(None if alpha is None else alpha[:len(active)],
                                         b[rows], transition)
                alphas[rows], log_norm[rows] = alpha, np.log(norm)
            log_lik = float((log_norm.sum() + top.sum()) / n_total)
            counts = np.zeros_like(transition)
            beta = None
            for t in range(len(active_at) - 1, 0, -1):  # Backward, normalised.
                active = active_at[t]
                rows = offs[active] + t
                ahead = b[rows] * (1.0 if beta is None else beta[:len(active)])
                pair = alphas[rows - 1][:, :, None] * transition * ahead[:, None, :]
                counts += (pair / pair.sum((1, 2), keepdims=True)).sum(0)
                back = ahead @ transition.T
                beta = np.ones((len(active_at[t - 1]), self.n_states))
                beta[:len(active)] = back / back.sum(1, keepdims=True)
            totals = counts.sum(1, keepdims=True)
            transition = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0),
                                  transition)
            if log_lik - previous < tol:
                break
            previous = log_lik
        return transition, n_iter, log_lik


def _weights(particles: Particles) -> np.ndarray:
    """The particles' normalised weights in float64 (B, n_particles): they sum to 1."""
    return torch.softmax(particles.log_w.double(), dim=1).numpy()


def _resample(particles: Particles, u: torch.Tensor) -> Particles:
    """Systematic resampling, with the uniform ``u``, of the sequences whose
    effective sample size is below half their particles; the others as they are.
    """
    h, z, log_w = particles
    n = log_w.shape[1]
    w = log_w.exp()
    low = 1.0 / (w * w).sum(1) < 0.5 * n
    if not bool(low.any()):
        return particles
    cum = w.cumsum(1)
    cum[:, -1] = 1.0
    pos = (u + torch.arange(n, dtype=w.dtype)) / n
    idx = torch.searchsorted(cum, pos.expand(w.shape[0], n).contiguous()).clamp_(max=n - 1)
    keep = torch.arange(n).expand(w.shape[0], n)
    idx = torch.where(low[:, None], idx, keep)
    rows = (idx + torch.arange(w.shape[0])[:, None] * n).reshape(-1)
    log_w = torch.where(low[:, None], torch.full_like(log_w, -math.log(n)), log_w)
    return Particles(h, z[rows], log_w)


class LabelState(NamedTuple):
    """Where the labelling of a sequence stands after a step (what a stream carries).

    ``label``: the current label; ``candidate``: the state that has led it
    (see :func:`held_labels`) on the last ``run`` steps, -1 (and ``run`` 0)
    when none has.
    """

    label: int
    candidate: int = -1
    run: int = 0


def hold_steps(switch_hold, dwell_time: float) -> int:
    """Steps a new state must lead beyond the first: ``switch_hold`` as a number.

    ``"auto"``: ``AUTO_HOLD_FRACTION`` of ``dwell_time`` (the mean steps
    between label changes of the posterior paths through the training data),
    rounded down; 0 when it is not known (NaN, a model fitted before it was
    measured). An integer is taken as it is.

    Examples
    --------
    >>> hold_steps("auto", 1200.0), hold_steps("auto", 40.0), hold_steps(3, 40.0)
    (2, 0, 3)
    """
    if isinstance(switch_hold, str):
        return int(AUTO_HOLD_FRACTION * dwell_time) if np.isfinite(dwell_time) else 0
    return int(switch_hold)


def held_labels(proba: np.ndarray, margin: float, hold: int = 0,
                state: LabelState | None = None) -> tuple[np.ndarray, LabelState]:
    """Online labels of one sequence from its state probabilities, and the state after.

    Another state *leads* the current label at a step when it is the most
    probable state and its probability exceeds the current one's by more than
    ``margin``. The label moves to it at the ``hold + 1``-th consecutive step
    on which the same state leads (``hold=0``: at the first), and stays
    otherwise. The first step takes the most probable state, unless
    ``state`` (where a stream stands, :class:`LabelState`) is given. With
    ``margin <= 0`` and ``hold=0`` the labels are the argmax at every step.
    Each label uses the probabilities up to its own step only, so the labels
    stay online; a switch is reported ``hold`` steps after the step the new
    state began to lead.

    Parameters
    ----------
    proba : ndarray of shape (n_steps, n_states)
        State probabilities of consecutive steps of one sequence.
    margin : float
        Lead, in probability, that another state needs over the current one.
    hold : int, default=0
        Further consecutive steps of lead needed before the label moves.
    state : LabelState or None, default=None
        Where the labelling stood before the first row.

    Returns
    -------
    labels : ndarray of shape (n_steps,), int64
    state : LabelState or None
        Where it stands after the last row (``state`` itself for no rows).

    Examples
    --------
    >>> import numpy as np
    >>> p1 = np.array([[0.9, 0.1, 0.0], [0.1, 0.0, 0.9], [0.0, 0.1, 0.9]])
    >>> held_labels(p1, 0.2)[0].tolist(), held_labels(p1, 0.2, hold=1)[0].tolist()
    ([0, 2, 2], [0, 0, 2])
    >>> p2 = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]])
    >>> held_labels(p2, 0.2, hold=1)[0].tolist()  # a one-step visit is not a switch
    [0, 0, 0]
    """
    best = proba.argmax(1)
    n = len(best)
    if n == 0:
        return best, state
    if margin <= 0 and hold == 0:
        return best, LabelState(int(best[-1]))
    lead = proba[np.arange(n), best]
    labels = np.empty(n, dtype=np.int64)
    if state is None:
        t, (current, candidate, run) = 1, LabelState(int(best[0]))
        labels[0] = current
    else:
        t, (current, candidate, run) = 0, state
    block = 64
    while t < n:
        if candidate < 0:
            # Scan ahead in growing blocks for the next step on which a state leads.
            end = min(n, t + block)
            hits = np.flatnonzero(lead[t:end] - proba[t:end, current] > margin)
            if len(hits) == 0:
                labels[t:end] = current
                t, block = end, min(2 * block, 1 << 16)
                continue
            s = t + int(hits[0])
            labels[t:s] = current
            if hold == 0:  # No hold: the label moves at once.
                current = labels[s] = int(best[s])
                t, block = s + 1, 64
                continue
            t, candidate, run, block = s, int(best[s]), 0, 64
        # The candidate leads from step t on; does it for the steps still needed?
        end = min(n, t + hold + 1 - run)
        leads = (best[t:end] == candidate) & (lead[t:end] - proba[t:end, current] > margin)
        stop = int(np.argmin(leads)) if not leads.all() else end - t
        labels[t:t + stop] = current
        if stop < end - t:  # Another state, or none, leads at t + stop: look again.
            t, candidate, run = t + stop, -1, 0
        elif run + stop == hold + 1:  # Held long enough: the label moves.
            current, candidate, run = candidate, -1, 0
            labels[end - 1] = current
            t = end
        else:  # The sequence ends while the candidate still leads.
            t, run = end, run + stop
    return labels, LabelState(current, candidate, run)


def hysteresis_labels(proba: np.ndarray, margin: float,
                      previous: int | None = None, hold: int = 0) -> np.ndarray:
    """Online labels of one sequence from its state probabilities, with hysteresis.

    The labels of :func:`held_labels`: the label stays on the current state
    until another state's probability exceeds the current one's by more than
    ``margin`` on ``hold + 1`` consecutive steps; it then moves to that state.
    The first step takes the most probable state, unless ``previous`` (the
    label of the step before) is given. ``margin=0`` and ``hold=0`` give the
    argmax at every step. Each label uses the probabilities up to its own step
    only, so the labels stay online.

    Parameters
    ----------
    proba, margin
        As in :func:`held_labels`.
    previous : int or None, default=None
        Label of the step before the first row.
    hold : int, default=0
        As in :func:`held_labels`.

    Returns
    -------
    labels : ndarray of shape (n_steps,), int64
    """
    state = None if previous is None else LabelState(int(previous))
    return held_labels(proba, margin, hold, state)[0]


class SegmentationStream:
    """Label one sequence online, one observation at a time.

    Made by :meth:`LangevinSegmenter.stream`. The stream carries the encoder's
    hidden state, the latent states (the filter's particles and weights, or
    the ``n_paths`` posterior paths) and the random generator between calls,
    so each :meth:`update` costs one encoder step, ``1 / dt`` Euler steps and,
    with the filter, one decoder evaluation per particle. After ``t + 1``
    updates, the label and probabilities returned equal
    ``predict(x[:t + 1])[t]`` and ``predict_proba(x[:t + 1])[t]`` of the
    segmenter on the prefix (the filter's probabilities to float32 rounding:
    one row and a batch of rows round differently). Streams are independent:
    open one per sequence being served.

    Parameters
    ----------
    sampler : PosteriorSampler
        The fitted model's sampler (its model, step, paths and seed).
    landscape : EnergyLandscape
        The fitted states.
    mean, scale : ndarray of shape (n_features,)
        The standardisation fitted on the training data.
    n_lags : int, default=0
        Previous observations appended to each one (the segmenter's
        ``n_lags``); the stream keeps the last ``n_lags`` observations.
    oldest_first : bool, default=False
        Order of the delay embedding's blocks (see
        :func:`nldseg._validation.delay_embed`), as the model was fitted.
    n_threads : int or None, default=None
        torch threads of each update (see ``LangevinSegmenter``'s
        ``n_threads``).
    particle_filter : ParticleFilter or None, default=None
        Label by this filter (as ``predict`` does with the segmenter's
        ``inference="filter"``); ``None``: by the fractions of the sampler's
        posterior paths (or by ``markov_filter``).
    markov_filter : MarkovFilter or None, default=None
        Label by the states' Markov chain (as ``predict`` does with the
        segmenter's ``inference="markov"``); the sampler is then not used.
    switch_margin : float, default=0.0
        Hysteresis of the labels (see :func:`held_labels`); the segmenter
        passes its own.
    switch_hold : int, default=0
        Further steps a new state must lead before the label moves to it (see
        :func:`held_labels`); the segmenter passes its own, in steps.

    Attributes
    ----------
    n_steps_ : int
        Observations consumed so far.

    Examples
    --------
    >>> from nldseg import LangevinSegmenter
    >>> from nldseg.datasets import make_markov_chain_sequences
    >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
    >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
    >>> stream = seg.stream()
    >>> for x_t in X[0, :5]:
    ...     label, proba = stream.update(x_t)
    >>> stream.n_steps_, proba.shape == (seg.n_states_,)
    (5, True)
    """

    def __init__(self, sampler: PosteriorSampler, landscape, mean: np.ndarray,
                 scale: np.ndarray, *, n_lags: int = 0, oldest_first: bool = False,
                 n_threads: int | None = None,
                 particle_filter: ParticleFilter | None = None,
                 switch_margin: float = 0.0, switch_hold: int = 0,
                 markov_filter: MarkovFilter | None = None) -> None:
        check_threads(n_threads)
        self._switch_margin = float(switch_margin)
        self._switch_hold = int(switch_hold)
        self._n_lags = n_lags
        self._oldest_first = oldest_first
        self._n_threads = n_threads
        self._sampler = sampler
        self._filter = particle_filter
        self._markov = markov_filter
        self._landscape = landscape
        self._mean = np.asarray(mean, dtype=np.float64)
        self._scale = np.asarray(scale, dtype=np.float64)
        if markov_filter is not None:  # No paths to move.
            self._stepper = self._work = None
        elif particle_filter is None:
            self._stepper = sampler.module.inference_stepper(sampler.dt)
            rows = sampler.n_paths
        else:  # The filter's own stepper: the weights are folded once.
            self._stepper, rows = particle_filter.stepper, particle_filter.n_particles
        if self._stepper is not None:
            self._work = self._stepper.workspace(rows, torch.empty(0))
        self.reset()

    def reset(self) -> SegmentationStream:
        """Forget the observations seen so far and start a new sequence.

        Returns
        -------
        self : SegmentationStream
        """
        self._gen = (self._sampler if self._filter is None else self._filter).generator()
        self._state = self._labelling = None
        self._recent = np.zeros((0, len(self._mean)), dtype=np.float32)
        self.n_steps_ = 0
        return self

    def update(self, x_t) -> tuple[int, np.ndarray]:
        """Consume the next observation; return its label and state probabilities.

        Parameters
        ----------
        x_t : array-like of shape (n_features,) or (1, n_features)
            The newest observation, in the units of the training data.

        Returns
        -------
        label : int
            State of the newest step: the argmax of ``proba``, held by the
            hysteresis ``switch_margin`` and ``switch_hold`` from the steps
            before.
        proba : ndarray of shape (n_states_,)
            Probability of each state at the newest step.
        """
        row = check_observation(x_t, len(self._mean))
        recent = np.vstack([self._recent, ((row - self._mean) / self._scale).reshape(
            1, -1).astype(np.float32)])[-(self._n_lags + 1):]
        # The newest row's delay embedding, by the same rule as predict's.
        x = torch.as_tensor(delay_embed(recent, np.array([len(recent)]), self._n_lags,
                                        oldest_first=self._oldest_first)[-1])
        gen_state = self._gen.get_state()
        try:
            with torch_threads(self._n_threads), torch.no_grad():
                if self._markov is not None:
                    state, proba = self._markov_step(x)
                elif self._filter is None:
                    state, proba = self._step(x)
                else:
                    state, proba = self._filter_step(x)
        except BaseException:
            self._gen.set_state(gen_state)
            raise
        labels, labelling = held_labels(proba[None], self._switch_margin,
                                        self._switch_hold, self._labelling)
        # Commit the new state only once everything above has succeeded.
        self._state, self._recent, self._labelling = state, recent, labelling
        self.n_steps_ += 1
        return int(labels[0]), proba

    def _step(self, x: torch.Tensor) -> tuple:
        """Encoder step and posterior paths' update for one observation, and the
        state fractions (no state change)."""
        sampler = self._sampler
        module = sampler.module
        state = self._state
        h = module.gru_step(x.reshape(1, -1), None if state is None else state[0])
        if state is None:
            mean, log_std = module.initial_posterior(h)
            z = mean + log_std.exp() * sampler.initial_noise(self._gen)
        else:
            stepper = self._stepper
            z = stepper.advance(state[1], stepper.bias(h),
                                stepper.drive(sampler.step_noise(self._gen)), self._work)
        return (h, z), self._landscape.state_fractions(z[:, :module.latent_dim])

    def _markov_step(self, x: torch.Tensor) -> tuple:
        """The Markov chain filter's step for one observation (no state change)."""
        markov = self._markov
        alpha = markov.update(self._state, markov.log_emissions(x.reshape(1, -1)))
        return alpha, alpha[0]

    def _filter_step(self, x: torch.Tensor) -> tuple:
        """The particle filter's step for one observation (no state change)."""
        filt, x = self._filter, x.reshape(1, -1)
        if self._state is None:
            weighted, state = filt.start(x, self._gen)
        else:
            weighted, state = filt.advance(self._state, x, self._gen, self._work)
        proba = self._landscape.state_fractions(weighted.z[:, :filt.module.latent_dim],
                                                _weights(weighted)[0])
        return state, proba
