"""The :class:`LangevinSegmenter` estimator: parameters, fit, inference, I/O.

``fit`` is a short list of calls into the other rooms: validation
(:mod:`nldseg._validation`), the model (:mod:`nldseg._model`), training
(:mod:`nldseg._training`), the landscape (:mod:`nldseg._landscape`); inference
goes through the posterior sampler (:mod:`nldseg._inference`).
"""

from __future__ import annotations

import threading
import warnings
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import TransformerTags, check_random_state
from sklearn.utils.validation import check_is_fitted

from nldseg import _persistence
from nldseg._distributed import SINGLE, Replicas, fit_fingerprint
from nldseg._dynamics import DYNAMICS
from nldseg._fused import release_buffers
from nldseg._inference import (
    INFERENCES,
    MarkovFilter,
    ParticleFilter,
    PosteriorSampler,
    SegmentationStream,
    hold_steps,
    hysteresis_labels,
)
from nldseg._kinetics import (
    MarkovStateModel,
    calibrate_clock,
    decode_observations,
    implied_timescales,
    kramers_rate_matrix,
    label_paths,
    landscape_core_thresholds,
    landscape_saddles,
    markov_state_model,
    mean_first_passage_times,
    mean_switch_interval,
    mean_visit_lengths,
    metastable_state_map,
    prior_state_paths,
    row_stochastic,
    transition_counts,
    visit_lengths,
)
from nldseg._landscape import EnergyLandscape, build_landscape, join_states
from nldseg._model import NeuralLangevinVAE, build_model, freeze
from nldseg._parallel import check_jobs
from nldseg._switching_ar import segmentation_scores
from nldseg._threads import check_threads, torch_threads
from nldseg._training import (
    LEARNING_RATES,
    LEVEL_Z,
    TrainingSettings,
    paired_gain,
    refine_depths,
    train,
)
from nldseg._validation import (
    BoolParam,
    IntParam,
    OptionParam,
    RealParam,
    Sequences,
    check_params,
    check_sequences,
    delay_embed,
    format_output,
    scale_from_variance,
    sequence_docs,
    unchanged_on_error,
)
from nldseg._version import __version__
from nldseg.metrics import segmentation_accuracy

SOLVERS = frozenset({"euler", "torchsde"})
#: The kinetics methods' clocks: the prior's as trained, or calibrated to the data.
CLOCKS = frozenset({"calibrated", "model"})
DECODER_COVARIANCES = frozenset({"full", "diag", "latent"})
DECODER_NOISES = frozenset({"gaussian", "student"})
INITIAL_PRIORS = frozenset({"stationary", "gaussian"})
ENCODER_INPUTS = frozenset({"linear", "quadratic"})

#: Steps ``sample`` runs a lagged model's decoder before its first observation.
_SAMPLE_BURN_IN = 50
_SEEDING_LOCK = threading.Lock()  # See LangevinSegmenter._new_module.

#: Type and range of every parameter (``device`` and ``random_state`` are
#: checked where they are used).
_PARAMETER_RULES = {
    "n_states": IntParam(1, none_ok=True),
    "dynamics": OptionParam(DYNAMICS),
    "latent_dim": IntParam(1),
    "beta": RealParam(), "gamma": RealParam(), "mass": RealParam(),
    "learn_langevin_params": BoolParam(),
    "dt": RealParam(),
    "hidden_size": IntParam(1), "context_size": IntParam(1),
    "n_lags": IntParam(0, words=("auto",)),
    "window_length": IntParam(1, none_ok=True),
    "batch_size": IntParam(1), "max_iter": IntParam(1), "n_init": IntParam(1),
    "early_stopping": BoolParam(), "validation_fraction": RealParam(0.0, 1.0, True),
    "decoder_covariance": OptionParam(DECODER_COVARIANCES),
    "decoder_noise": OptionParam(DECODER_NOISES),
    "encoder_input": OptionParam(ENCODER_INPUTS),
    "learning_rate": OptionParam(LEARNING_RATES), "learning_rate_init": RealParam(),
    "kl_warmup": IntParam(0), "density_weight": RealParam(low_closed=True),
    "depth_steps": IntParam(0),
    "tol": RealParam(low_closed=True),
    "n_iter_no_change": IntParam(1), "n_paths": IntParam(1),
    "n_particles": IntParam(1),
    "inference": OptionParam(INFERENCES),
    "prior_weight": RealParam(0.0, 1.0, low_closed=True, high_closed=True),
    "switch_margin": RealParam(0.0, 1.0, low_closed=True),
    "switch_hold": IntParam(0, words=("auto",)),
    "min_state_fraction": RealParam(0.0, 1.0, low_closed=True),
    "initial_prior": OptionParam(INITIAL_PRIORS), "solver": OptionParam(SOLVERS),
    "distributed": BoolParam(), "verbose": IntParam(0),
}

#: Parameters that inference reads and that may be changed on a fitted model.
_INFERENCE_PARAMETERS = ("n_paths", "n_particles", "inference", "prior_weight",
                         "switch_margin", "switch_hold")

#: Arguments of the prior simulations (:meth:`LangevinSegmenter.transition_matrix`).
_KINETICS_RULES = {"n_trajectories": IntParam(1), "n_steps": IntParam(1),
                   "lag": IntParam(1), "n_sequences": IntParam(1),
                   "n_timesteps": IntParam(1), "core_fraction": RealParam(0.0, 1.0),
                   "clock": OptionParam(CLOCKS), "max_iter": IntParam(1),
                   "tol": RealParam(0.0, low_closed=True)}
#: Core sets of the clock's calibration: the kinetics methods' default.
_CLOCK_CORE_FRACTION = 0.5
#: Training steps whose posterior positions the depths' refit reads, at most.
_DEPTH_BUDGET = 200_000
#: Share of the positions whose wells the refit of the depths must keep.
_DEPTH_AGREEMENT = 0.98
#: The Markov chain of ``inference="markov"``: the paths of transition_matrix's
#: defaults, and the emission points per state.
_MARKOV_PATHS, _MARKOV_STEPS, _MARKOV_POINTS = 256, 2000, 64
#: Most latent points one prior simulation may record (memory bound).
_MAX_PRIOR_POINTS = 20_000_000


#: The arguments of the prior simulation that the kinetics methods share, as
#: documented once; :func:`_prior_path_docs` puts them into each docstring.
_PRIOR_PATH_PARAMETERS = """\
n_trajectories : int, default=256
    Simulated paths.
n_steps : int, default=2000
    Observation steps per path.
core_fraction : float, default=0.5
    Height of the cores as a fraction of the lowest barrier, in (0, 1).
clock : {"calibrated", "model"}, default="calibrated"
    The prior's clock, as in :meth:`transition_matrix`.
random_state : int, RandomState instance or None, default=None
    Seeds the simulation; ``None`` uses the estimator's."""


def _prior_path_docs(method):
    """Put :data:`_PRIOR_PATH_PARAMETERS` into ``method``'s docstring.

    (None under ``python -OO``, which strips docstrings.)
    """
    if method.__doc__:
        text = _PRIOR_PATH_PARAMETERS.replace("\n", "\n" + " " * 8)
        method.__doc__ = method.__doc__.replace("{prior_path_parameters}", text)
    return method


def _check_kinetics(**values) -> None:
    """Check the named arguments of a prior simulation against their rules."""
    check_params(values, {name: _KINETICS_RULES[name] for name in values})
    if "lag" in values and "n_steps" in values and values["lag"] > values["n_steps"]:
        raise ValueError(f"lag must be at most n_steps={values['n_steps']}, "
                         f"got {values['lag']}.")


class _LandscapeFit(NamedTuple):
    """What :meth:`LangevinSegmenter._fit_landscape` finds for one trained model."""

    landscape: EnergyLandscape
    time_scale: float  # The prior's calibrated clock.
    dwell: float  # Mean steps between the posterior paths' changes of state.
    depths_refitted: bool  # Whether the wells' depths were refitted and kept.


def _restart_seeds(seed: int, n_init: int) -> list[int]:
    """Weight seeds of the ``n_init`` restarts: ``seed``, then one drawn per restart.

    Restart ``i``'s seed does not depend on ``n_init``, so a larger ``n_init``
    adds restarts and keeps the others.
    """
    return [seed] + [int(np.random.default_rng([seed, i]).integers(0, 2**31 - 1))
                     for i in range(1, n_init)]


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
        holding less than ``min_state_fraction`` of the data), except that
        two wells between which the posterior paths through the training
        data take turns quickly are one state: when the paths' implied time
        scales have a gap of 6 or more and they cross between the two at
        least 3 times per exit from the pair (each well then holds one phase
        of a slow cycle; see Notes). An integer merges the least-populated
        wells into the neighbour behind the lowest barrier until that many
        remain; the rules of ``min_state_fraction`` apply only where they
        leave at least that many, so fewer states come back (with a warning)
        only where the energy has fewer minima. On a simulated recording of
        motion whose default fit held one of 7 activities on a shoulder of
        shallow minima (merged by those rules, 6 wells), ``n_states=7`` gave
        7 (accuracy 0.888 to 0.935, with 67 label changes against 44; see
        ``benchmarks/RESULTS.md``).
    dynamics : {"overdamped", "underdamped"}, default="overdamped"
        Langevin dynamics of the prior (see Notes).
    latent_dim : int, default=3
        Dimension ``d`` of the latent positions (the domain of ``E``). On
        recorded activity data (a smart watch's accelerometer and gyroscope,
        4 activities) the model reading one lag put two of the activities
        (running, badminton) in one well with 3 dimensions, and
        ``latent_dim=5`` told them apart (accuracy 0.83 against 0.61 over 5
        seeds; 4 did as well). So do single frames with 3 dimensions
        (``n_lags=0``: 0.80; ``n_lags="auto"`` keeps them on one seed of
        the 5, see ``n_lags``). Beyond 3
        dimensions the basins have no lookup grid, so labelling is slower
        (1.1-1.25x), the occupancy estimate was less accurate on simulated
        cases, and on simulated motion 4 dimensions found the right number
        of wells on 4 seeds of 8, against 6 with 3 (``benchmarks/RESULTS.md``).
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
    n_lags : int or "auto", default="auto"
        Previous observations read beside each one (delay embedding): the
        model sees the frame ``[x_{t-n_lags}, ..., x_{t-1}, x_t]`` at step
        ``t`` (the first observation of a sequence stands in for the steps
        before it), and its decoder is an autoregression, the density of the
        newest observation given the previous ones, ``p(x_t | x_{t-1}, ...,
        z_t)``, so that a state can be told by how an observation follows the
        previous one, not only by the observations' law. ``"auto"`` adds one
        model reading one lag to the ``n_init`` restarts on single frames; the
        restarts compete among themselves by held-out ELBO, and the model with
        the lag is kept instead of the best of them only if its held-out ELBO
        per step is higher on the same held-out windows and noise by more than
        two standard errors of the per-window differences (a tie keeps single
        frames). Only then are ``n_init - 1`` more restarts with the lag
        trained, and the best of them by held-out ELBO is kept (on a simulated
        recording of motion one lag model of two merged three activities that
        another restart told apart). The two bounds measure the same thing:
        the decoder's density of the newest observation, one observation per
        step either way.
        ``n_lags_`` says which was kept, ``lag_elbo_gain_`` the gain and its
        standard error, ``candidate_scores_`` the restarts' scores. A lag
        that wins by held-out ELBO must then also give the better states
        (unless ``n_states`` is given): the best single-frame model is
        trained to the end too, and kept instead when its energy has several
        wells (``candidate_wells_``) and either the lag's has one, or its
        labels explain the training data better
        (``candidate_state_scores_``). Each of the two labels the training
        steps as :meth:`predict` does, and its labels are scored by
        cross-fitting a switching AR(1) model (in each state ``x_t = b_k +
        A_k x_{t-1} + noise_k``, Markov switching): the training split's
        segments (the sequences, or the pieces of a long one between and
        including its held-out blocks), dealt to at most 20 folds, are each
        scored under the model fitted to the other folds' labelled steps;
        the log-likelihood per step is the score: the same form for both,
        asked of the labels alone, of every step and by a model that did not
        see it. As for the ELBO, single frames must lead by more than two
        standard errors of the paired differences over the folds
        (``lag_state_gain_``); a tie keeps the lag. The ELBO judges the
        observations' density, and a decoder that reads the previous
        observation predicts a smooth recording from it whatever the state:
        on recorded speech (nine
        voices taking turns) the lag won by 12 nats per step while its
        latent path stopped telling the voices apart, and on a smart watch
        it merged two of four activities. Single frames that cut an
        oscillation by phase pay in the score for their many changes and
        for pieces that mix activities, and the lag is kept there. On the
        watch single frames replaced the lag on 3 of 5 seeds; on one more
        they led within the error and the merging lag stayed
        (``benchmarks/RESULTS.md``). This costs the rest of the frame
        model's schedule and labelling the training data twice, only when
        the lag wins. One lag finds states
        that differ only in their dynamics (regimes of a vector
        autoregression with the same stationary law, where single frames give
        one well or spurious ones), and there its held-out ELBO is higher by
        about 3 nats per step; where the states differ in the frames' law the
        two were within a few hundredths of a nat (the suite's ``overlap``,
        ``six_states``, ``unequal``) or single frames were ahead (``highdim``,
        0.45), and one lag can merge such states (fewer wells or lower
        accuracy on some seeds); hence not ``1`` by default (see
        ``benchmarks/RESULTS.md``). On one autoregression alone (a single
        state) one lag once found a spurious well of 3 %; such a well is
        counted, as every well is down to ``min_state_fraction``: a floor of 5 %
        for models with a lag dropped the 5 % and 1 % states of the suite's
        ``langevin`` (2 wells of 4). Without ``early_stopping`` nothing is
        held out, and the lag is kept if its training loss was the lower. The
        candidate with one lag costs what a restart does (at most
        ``max_iter / 2`` gradient steps more), its restarts as much again each
        when it is kept; an integer fixes the lag and
        trains no such candidate. Labels stay online (step ``t`` reads
        ``x[:t+1]``), and :meth:`score` is the ELBO of one observation per
        step, the first of a sequence given itself.
    encoder_input : {"quadratic", "linear"}, default="quadratic"
        What the causal encoder (a GRU) reads at each step: ``"linear"``, the
        frame itself; ``"quadratic"``, the frame beside 32 learned squared
        projections ``(W x_t + b)^2``. States whose frames differ more in
        their covariance than in their mean (overlapping emissions) are then
        told apart from a running sum of squares, which a GRU reading raw
        frames has to build from its gates. The decoder is the same either
        way.
    window_length : int or None, default=50
        Training reads random windows of this many consecutive steps from the
        training sequences (each window starts its own posterior); ``None``
        trains on whole sequences. Before a window the encoder also reads up
        to ``window_length`` earlier steps of its sequence, without gradient,
        so that the window's initial state knows what they said, as at any
        step of :meth:`predict`. Short windows make each update cheap; the
        fitted model labels sequences of any length.
    batch_size : int, default=64
        Windows per gradient step.
    max_iter : int, default=3000
        Maximum number of gradient steps (batches of ``batch_size`` windows):
        the training budget is counted in updates, not epochs, so that one
        5,000-step recording and 500 sequences of 200 steps are both trained
        properly. Training usually ends earlier (``early_stopping``).
    n_init : int, default=2
        Models trained from different initial weights, windows and noise.
        Each trains until its held-out ELBO stops improving, or until half
        of ``max_iter`` is spent; the one with the best held-out ELBO then
        trains on alone to the end of its schedule (annealing included), and
        the others are dropped. Training is non-convex: a run can end with
        two states merged into one well at a lower ELBO than a run that
        found them. Each further model adds at most ``max_iter / 2``
        gradient steps: with the defaults a fit took 1.5-1.9 times as long
        as one model's; ``1`` trains one model. With ``n_lags="auto"`` a
        model reading one lag joins them, and if it wins, its own restarts
        (see ``n_lags``).
    learning_rate : {"cosine", "constant"}, default="cosine"
        Schedule of the Adam learning rate. ``"cosine"`` holds
        ``learning_rate_init`` until the held-out ELBO stops improving (or
        until the last quarter of the budget), then anneals it along half a
        cosine to 1% of itself over ``max_iter / 4`` steps and ends training;
        the low-rate end averages out the minibatch noise in the relative
        depths of the wells, which is what ``state_occupancy_`` reads (see
        Notes). ``"constant"`` keeps ``learning_rate_init`` and ends training
        when the held-out ELBO stops improving.
    learning_rate_init : float, default=3e-3
        Initial Adam learning rate.
    kl_warmup : int, default=1000
        Gradient steps over which the KL weight rises linearly from 0 to 1,
        for every candidate model. While the KL term counts little the
        latent path is free to take apart states whose observations differ
        only a little, and the energy grows a well for each; under a short
        warm-up it can settle early on one place for two such states, so
        that the energy has one well for both, and training does not leave
        that local optimum. On a 6-state Gaussian HMM drawn at random
        (``benchmarks/fresh_cases.py``, draw 1, case 5) the default fit
        under 200 steps merged the two closest states (5 wells, accuracy
        0.83) and under 1,000 kept all six apart (0.99); one restart alone
        went from 4 wells to 6, its held-out ELBO 0.40 nats per step
        higher. It does not keep every close pair apart (the suite's
        ``heavy_tails``, seed 2). Models reading lags, whose decoder
        explains much of an observation from the one before, merged
        activities of a simulated recording of motion under 200 steps and
        not under 1,000 (see ``benchmarks/RESULTS.md``).
    density_weight : float, default=1.0
        Weight, beside the ELBO, of a maximum-likelihood fit of the stationary
        law ``exp(-beta E) / Z`` to the points each training window's
        posterior path visits (the mean over its steps, with the path held
        fixed: only the energy, ``beta`` and ``log Z`` get its gradient).
        It sets the wells' relative depths, hence ``state_occupancy_``,
        which the ELBO alone fits poorly (see Notes). The ELBO's value,
        ``loss_curve_`` and :meth:`score` do not include it. ``0`` trains on
        the ELBO alone. Larger weights gained little on the depths and cost
        accuracy where the encoded paths are noisy (the benchmark's 45-feature
        case lost 2 points at 4, 0.3 at 1). Used with
        ``initial_prior="stationary"`` only.
    depth_steps : int, default=400
        Steps of a refit of the wells' depths after training: the energy
        alone (``beta``, encoder and decoder kept) is fitted by maximum
        likelihood of ``exp(-beta E) / Z`` to one posterior path through the
        training data (at most 200,000 steps of it), before the wells are
        found. The ELBO places the wells well but leaves their relative
        depths, hence ``state_occupancy_``, biased (see Notes); on the
        benchmark's fits this brought the occupancy to the training data's
        own sampling error. The refit is kept only if the wells found from
        those positions before and after it are the same (as many, and the
        positions' basins agreeing on 98 % of them); else it is undone
        (``depths_refitted_`` says which). ``0`` skips it. It added 3-7 s
        to each fitted model of the benchmark's simulated cases, 12-35 s on
        its recordings (where it was undone and the wells were searched for
        twice), on one CPU thread.
    tol : float, default=1e-3
        Minimum improvement of the held-out ELBO per step (in nats) that counts
        as progress.
    n_iter_no_change : int, default=5
        Checks of the held-out ELBO (one every ``min(100, max_iter // 20)``
        steps, at least 10) without progress, after the KL warm-up, that end
        the constant-rate phase.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the data and watch its ELBO to end
        training early. ``False`` trains on all data for the whole budget.
    validation_fraction : float, default=0.1
        Share held out for ``early_stopping``: whole sequences when there are
        10 or more; else that share of each sequence, in blocks spread over
        it (the end of each of up to 10 equal parts, each block at least two
        windows long; the end alone when ``window_length`` is None or the
        share is shorter), so that restarts and early stopping are judged on
        all of a long recording, not on its last states.
    decoder_covariance : {"latent", "full", "diag"}, default="latent"
        Covariance ``Sigma`` of the decoder's noise, ``x_t = g(z_t) + L w_t``
        with ``Sigma = L L^T`` (``w_t``'s law: ``decoder_noise``).
        ``"latent"``: a full covariance that depends on the latent state,
        ``Sigma(z_t)``, so that states which differ in how their features vary
        and co-vary (not only in their means) are told apart; its inverse
        Cholesky factor moves with 8 features of the decoder's hidden layer.
        ``"full"``: one full covariance shared by all states, so that
        correlated fluctuations within a state are noise, not signal;
        ``"diag"``: per-feature variances only (the paper's decoder). On the
        suite's overlapping cases ``"latent"`` found the states that
        ``"full"`` merged (see ``benchmarks/RESULTS.md``); it costs about 40%
        more per gradient step with 45 features, nothing measurable with 8.
    decoder_noise : {"student", "gaussian"}, default="student"
        Law of the decoder noise once whitened by ``Sigma``'s Cholesky
        factor: independent Student-t per feature with degrees of freedom
        learned from the data (starting at 10, kept within 2.1 and 200,
        trained at 10 times the learning rate so that they settle early), or
        Gaussian (the default before this version). With heavy-tailed frames
        (a sensor's spikes) a Gaussian noise makes each outlier cost its
        square, and the cheapest fit can be one broad well with a wide
        noise; a Student-t one costs the log of its size, and on Gaussian
        frames its degrees of freedom rise towards 200. Used by training,
        :meth:`score`, every filter and :meth:`sample` alike.
    n_paths : int, default=8
        Monte-Carlo posterior paths per sequence used by :meth:`transform` and
        :meth:`score` (and by :meth:`predict_proba`, :meth:`predict` and
        :meth:`stream` when ``inference="paths"``).
    inference : {"markov", "filter", "paths"}, default="markov"
        How the online labels are read. ``"markov"``: the exact forward
        filter of the fitted model read as a hidden Markov model on its
        states. The states move by the lag-1 transition matrix of the learned
        prior's paths (calibrated clock, core-set labels: the matrix of
        :meth:`transition_matrix`, from 256 paths of 2,000 steps simulated at
        the end of :term:`fit`), and state ``k`` emits a frame with the
        decoder's density averaged over 64 points of those paths in its
        core (its basin below half its lowest barrier). Every state keeps a
        probability at every step, so evidence for a switch accumulates as
        in an HMM's filter; the position within a well is not carried from
        step to step. No draws (deterministic),
        and faster than ``"filter"``. On seed 0 of 12 simulated benchmark
        cases it was as accurate as the particle filter or more on 11, by
        0.2-5.5 points on 10 (5.5 on volatility regimes of 1-D returns,
        where it matched a Gaussian HMM's filter), and within 0.12 points
        of the HMM filter on the cases that are Gaussian HMMs; on a recorded
        smart watch it was 2.0 points less (0.780 against 0.800; see
        ``benchmarks/RESULTS.md``). Fitting does not read it: the
        comparison of candidate models labels by the particle filter.
        ``"filter"`` (the default before): a particle filter on the fitted
        model. ``n_particles`` particles per sequence move as
        posterior paths (steered by the encoder) and are weighed by the
        decoder's likelihood of each observation times
        ``(p / q)^prior_weight``, the prior's density of each move over the
        posterior's; a state's probability is the weight of the particles in
        its basin. The likelihood corrects the encoder where it lags behind a
        switch. ``"paths"``: the unweighted fractions of ``n_paths``
        posterior paths (the labels of earlier versions; model files saved by
        them load with it), about 12 times as fast. On the suite's
        45-feature case the filter lifted accuracy from 0.859 to 0.914, and
        it was as accurate or more on every other case and seed, but for
        0.0002 on the paper's data (see
        ``benchmarks/RESULTS.md``).
    prior_weight : float in [0, 1], default=0.5
        (``inference="filter"``) How far the particle filter trusts the
        learned prior's dynamics over the encoder's: the particles'
        transition density is taken proportional to ``p^prior_weight q^(1 -
        prior_weight)``. At 1 (the plain particle
        filter of the generative model) the learned prior, which switches
        several times more slowly than the data, holds the old state a step
        too long at sharp switches (paper setting: 0.996 against 0.999).
    n_particles : int, default=64
        Particles per sequence of the filter (``inference="filter"``).
    switch_margin : float in [0, 1), default=0.2
        Hysteresis of the labels (:meth:`predict`, :meth:`stream`): the
        label stays on the current state until another state's probability
        exceeds the current one's by more than this; it then moves to the
        most probable state. It stays online (step ``t`` uses ``x[:t+1]``
        only). 0 gives the argmax of :meth:`predict_proba` at every step.
        Near a switch the probabilities of two states can cross back and
        forth over a few steps; each crossing would be a label change. On
        the suite's default cases (seed 0) 0.2 removed 0.2-12.5 % of the
        label changes for 0.00-0.10 points of accuracy, and 15-56 % on
        simulated recordings of motion (see ``benchmarks/RESULTS.md``).
        :meth:`predict_proba` is not affected.
    switch_hold : "auto" or int >= 0, default="auto"
        Further consecutive steps on which the same other state must lead the
        current label (by more than ``switch_margin``) before the label moves
        to it (:meth:`predict`, :meth:`stream`): it moves on the
        ``switch_hold + 1``-th such step. A visit that leads for fewer steps
        is not reported, and a reported switch comes ``switch_hold`` steps
        after the new state began to lead; the labels stay online.
        ``"auto"``: 0.2 % of ``training_dwell_time_``, rounded down, so 0
        where the states change more often than every 500 steps (every
        case of the default suite), 1 for mean dwell times of 500-999 steps,
        and so on. Under the learned kinetics about 0.2 % of real visits are
        that short (for exponential dwell times), and every switch is
        reported that late, so the hold costs about 0.2 % of accuracy at
        most. Where states last long, a change of state can move the latent
        path past a third well for a few steps, and each pass would be two
        label changes (see ``benchmarks/RESULTS.md``). 0 turns the hold off.
        :meth:`predict_proba` is not affected.
    min_state_fraction : float, default=0.005
        Wells into which less than this fraction of the encoded training data
        flows are merged into a neighbour (as is, before that, a well of
        under 5 % left over a barrier under 2 kT: no metastable state, such
        as a well of the steps just after each switch; and a well of any
        share left over less than 5 % of the highest barrier out of any
        well: a dimple of a flat basin; with ``n_states`` given, none of
        these merges goes below it). The wells are
        found from at most 20,000 encoded training steps: whole sequences
        drawn at random, and pieces of 2,000 steps spread over any recording
        longer than that.
        The default keeps a state that holds 1% of the time (measured in
        ``benchmarks/RESULTS.md``: 0.02 lost it, and 0.005 kept no spurious
        well on the other cases of the suite).
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
        A training step is a long chain of small kernels, so a GPU pays for
        large batches: on an H200 a step of 64 windows took as long as on 16
        CPU threads, one of 512 windows 3.7 times less.
    n_threads : int or None, default=None
        torch's intra-op threads while ``fit``, ``predict``, ``predict_proba``,
        ``transform``, ``score`` and stream updates run; the caller's setting
        is restored afterwards. ``None`` uses 1: the training and inference
        loops are hundreds of small operations per step, which a second
        thread barely speeds up on an idle machine and slows down many times
        over on one whose cores are busy. ``-1`` keeps torch's own setting
        (``torch.set_num_threads``, ``OMP_NUM_THREADS``); a positive int
        uses that many, e.g. for large ``predict`` batches on an idle
        many-core machine. Results agree across thread counts to float
        rounding.
    n_jobs : "auto", int or None, default="auto"
        Worker processes that train the candidate models (the ``n_init``
        restarts, and with ``n_lags="auto"`` the lag candidates) side by side
        up to the point where they are compared; the kept one then trains on
        in this process, unless it already has: where the candidates
        outnumber the workers (the
        default 3 on 2 cores), the restarts on single frames go first, and the
        best of them trains on to its end beside the lag candidate: it is
        trained to the end either way, kept or as the rival whose labels the
        lag's are compared with (with more workers, the two finish side by
        side when the lag wins). Each worker runs on ``n_threads`` torch
        threads and takes exactly the steps this process would, so the fitted
        model is the same for every ``n_jobs``; only the time changes (the
        paper-size fit on 2 cores: 318 s with the three candidates in two
        rounds before the kept one trained on, 235 s since the best restart
        finishes beside the lag, the same model; see
        ``benchmarks/RESULTS.md``). ``"auto"`` uses one process per
        candidate, at most the CPUs available divided by ``n_threads``
        (more threads than cores would slow every one of them down many
        times over), and none on a GPU, with ``distributed=True``, inside
        a joblib worker (e.g. the fits of ``GridSearchCV(n_jobs=...)``) or
        in a daemonic process (a ``multiprocessing.Pool`` worker). Where
        workers cannot start or die, ``fit`` warns and trains the
        candidates here instead. ``None`` or an int as in scikit-learn
        (``None``: 1 outside ``joblib.parallel_config``, ``-1``: all CPUs);
        ``1`` trains the candidates one after the other here.
        Each worker holds torch and a copy of the training data (about
        0.5 GB resident each after a small fit on the 2-core machine of
        ``benchmarks/RESULTS.md``); joblib keeps the workers for the next
        fit and ends them after 300 idle seconds. With workers, the
        progress lines (``verbose``) of the candidates trained side by side
        are printed when the round ends (the comparison point, or the end
        of a model finished there), and Ctrl-C in such a round stops ``fit``
        with ``KeyboardInterrupt``, leaving the estimator as it was.
    distributed : bool, default=False
        Train data-parallel over ``torch.distributed``'s default process
        group, which the caller initialises (a script launched by
        ``torchrun`` calls ``torch.distributed.init_process_group()``, backend
        ``"gloo"`` on CPUs, ``"nccl"`` on GPUs with
        ``device=f"cuda:{local_rank}"``, one GPU per process).
        Every process calls ``fit`` with the same data and parameters; each
        trains on its share of every batch of ``batch_size`` windows, losses
        and gradients are summed across processes, and every process ends with
        the same fitted model, equal to a one-process fit to float rounding.
        The seeds are rank 0's (so ``random_state=None`` works too). Only
        training is shared: finding the wells after it runs on every process.
        ``ValueError`` when no process group is initialised, or when the data
        or parameters differ between processes. See the README's "Several
        processes" section.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, training noise and Monte-Carlo inference.
        Pass an int for reproducible fits and deterministic inference.
    verbose : int, default=0
        0 is silent. 1 prints one line per check of the held-out ELBO (every
        ``min(100, max_iter // 20)`` steps, at least 10: mean training loss,
        held-out ELBO, learning rate, time) and, when stderr is a terminal, an
        in-place progress bar once the fit has run a second. 2 shows the bar on
        any stderr.

    Attributes
    ----------
    n_states_ : int
        Number of states kept: wells, or groups of wells (see ``n_states``;
        ``energy_.state_of_minimum`` says which minimum belongs to which).
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
    prior_time_scale_ : float
        How much faster the prior's clock runs, under ``clock="calibrated"``
        in the kinetics methods (:meth:`transition_matrix`,
        :meth:`mean_dwell_times`, :meth:`dwell_times`,
        :meth:`mean_first_passage_times`, :meth:`implied_timescales`,
        :meth:`sample`, :meth:`kramers_rates`), than the trained one, so that prior paths
        switch states as often as the posterior paths through the training
        data do (measured at the end of :term:`fit` on the paths that found
        the wells). Training matches the prior's drift and stationary law
        to the posterior's, not its switching rate, and the trained prior
        switches 2-9 times too slowly; see Notes. 1.0 with a single state.
        NaN for a model saved before it existed.
    training_dwell_time_ : float
        Mean observation steps between state changes of the posterior paths
        through the training data (the paths that found the wells, labelled
        by core sets as in :meth:`transition_matrix`): the mean time spent in
        a state per visit, over all states, and at most the steps of the
        longest of those paths (short sequences that each stay in one state
        tell only that the dwell is at least that long).
        ``switch_hold="auto"`` reads it. NaN for a model saved before it
        existed (which holds 0 steps).
    depths_refitted_ : bool
        Whether the wells' depths were refitted after training and the refit
        kept (see ``depth_steps``): ``False`` when ``depth_steps=0``, with a
        single well, when the refit would have changed the wells (undone)
        or met a non-finite value, and for a model saved before it existed.
    decoder_df_ : ndarray of shape (n_features_in_,)
        Degrees of freedom of the decoder noise's Student-t law, one per
        feature, learned within 2.1-200 (``decoder_noise="student"``): near
        3-5 the frames hold rare large values (spikes, glitches) that the
        states do not explain; near 50 and over, the noise is close to
        Gaussian. Under ``decoder_covariance="latent"`` or ``"full"``,
        feature ``i``'s is that of its residual given the features before
        it. ``inf`` everywhere under ``decoder_noise="gaussian"`` (and for a
        model saved before the Student-t noise existed).
    n_features_in_ : int
        Number of features seen during :term:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during :term:`fit`, when ``X`` has string
        column names.
    scaler_mean_, scaler_scale_ : ndarray of shape (n_features_in_,)
        Per-feature standardisation fitted on all training time steps.
    loss_curve_ : list of float
        Training loss (negative ELBO per observed step, KL warm-up weight
        applied) of every gradient step.
    validation_scores_ : list of float
        Held-out ELBO per observed step at every check (empty without
        ``early_stopping``).
    n_iter_ : int
        Gradient steps taken.
    n_lags_ : int
        Previous observations the fitted model reads beside each one: ``n_lags``,
        or with ``n_lags="auto"`` the one kept (0 or 1, by held-out ELBO).
    candidate_lags_ : ndarray of shape (n_candidates,)
        The lags of the candidate models: ``n_init`` restarts, and with
        ``n_lags="auto"`` as many more reading one lag (the last ones; only
        the first of them is trained unless the lag wins).
    candidate_scores_ : ndarray of shape (n_candidates,)
        What they were compared by (higher is better): the mean of each
        one's last ``n_iter_no_change`` held-out ELBOs per step when the
        comparison was made (minus its mean training loss without
        ``early_stopping``); NaN for a model not trained (the restarts with
        a lag when single frames won, an interrupted fit). The kept one
        trained on alone. Empty for a model saved before these existed.
    candidate_wells_ : ndarray of shape (n_candidates,)
        Wells (states) of the candidates whose energy was analysed: the kept
        one, and with ``n_lags="auto"``, when the lag won by held-out ELBO,
        the best single-frame model too (see ``n_lags``); NaN for the
        others. Empty for a model saved before it existed.
    candidate_state_scores_ : ndarray of shape (n_candidates,)
        With ``n_lags="auto"``, when the lag won by held-out ELBO and both it
        and the best single-frame model have several wells: how well each
        one's labels explain the training steps, the mean log-likelihood per
        step of a switching AR(1) model of its labels, cross-fitted over the
        training split's segments (higher is better; single frames replace
        the lag when theirs is higher by more than two standard errors, see
        ``n_lags``); NaN otherwise. Empty for a model saved before it existed.
    lag_state_gain_ : ndarray of shape (2,)
        When ``candidate_state_scores_`` were computed: how much higher the
        lag's score per step was than the single-frame model's, and its
        standard error from the paired per-fold differences; single frames
        replace the lag when the gain is below minus two standard errors.
        NaN otherwise, and for a model saved before it existed.
    lag_elbo_gain_ : ndarray of shape (2,)
        With ``n_lags="auto"``: how much higher the held-out ELBO per step
        of the candidate with one lag was than the best single-frame one's,
        on the same held-out windows and noise, and its standard error; the
        lag is kept only if the first such candidate's gain exceeds two
        standard errors, and then the gain is the kept restart's. NaN when
        not compared (an integer ``n_lags``, no ``early_stopping``, an
        interrupted fit, a model saved before it existed).
    converged_ : bool
        Whether the held-out ELBO stopped improving before ``max_iter`` ran
        out. A fit that ran out of budget while it was still improving warns
        with :class:`~sklearn.exceptions.ConvergenceWarning`, which gives the
        last rise of the held-out ELBO (nats per step) to weigh against the
        time of a larger ``max_iter``; ``validation_scores_`` holds every
        check.

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

    The ELBO of a sequence, with ``g u = f_\phi`` and the decoder's density
    ``p(x_t | z_t)`` (Student-t or Gaussian noise, ``decoder_noise``):

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

    The occupancy of a well is fixed by its depth relative to the others.
    Within the ELBO, the path term ``(1/2) int |u|^2 dt`` is, by Ito's
    formula and for overdamped dynamics, ``1 / (2 beta gamma)`` times
    Hyvarinen's score-matching objective of ``exp(-beta E)`` on the points
    the posterior path visits, plus the energy at the window's ends. Score
    matching fits the shape of each well but is blind to the relative weights
    of separated wells (Wenliang and Kanagawa, 2020), so the depths came from
    the density fit at the windows' first points alone, one point per window
    against a whole path of score matching, and ended biased, the same way
    through the last 750 steps of training (suite case ``unequal``, seed 0:
    the largest state's share 0.50 against 0.48 in the training labels, the
    smallest 0.028 against 0.036; ``regimes``: 0.27 against 0.33; see
    ``benchmarks/RESULTS.md``). ``density_weight`` adds the density fit on
    every step of the path, and ``depth_steps`` refits the energy alone to
    the posterior positions after training (kept only if the wells stay the
    same), which brought the occupancy to the data's own sampling error on
    the fits where training had left it above. Minibatch noise moves
    the depths too, hence the default cosine schedule (in the paper's
    experiment, 10 seeds, it cut the mean l1 error of ``state_occupancy_``
    from 0.13 to 0.04). The window starts are encoded after the steps before
    each window (see ``window_length``): encoded from their first frame
    alone, they were placed where that frame pointed, which overweights the
    larger states when frames overlap. For the same reason the windows that
    begin a sequence, with no steps before them, train the encoder but not
    the density fit at their first point (when other windows have steps
    before them).

    The rate of switching between wells is not fitted by the ELBO. Its path
    term matches the prior's drift to the posterior's point by point and the
    density fit matches ``exp(-beta E)`` to where the paths are: one-time
    quantities, which the trained prior reproduces (suite case ``unequal``,
    seed 0: the fraction of posterior and prior points outside the wells'
    cores 0.445 and 0.448). But a posterior path leaves a well in the
    direction the data take it and crosses the barrier straight, where the
    prior's diffusion, with no such knowledge, recrosses many times; the
    trained prior switches 2-9 times as slowly as the posterior paths (and
    the data) do (``unequal``: visits of 166 / 88 / 111 / 38 steps against
    the posterior paths' 87 / 49 / 46 / 23 and the truth's 71 / 46 / 36 /
    20). With the stationary law fixed, the prior's speed is the one thing
    left free, so after training the prior's clock is calibrated: the
    kinetics methods run the prior ``prior_time_scale_`` times as fast as
    trained, the factor at which it switches as often as one posterior path
    through part of the training data (secant steps on simulated rates;
    ``clock="model"`` gives the prior as trained). One factor for all the
    states: the relative rates stay the landscape's (``unequal``: 81 / 44 /
    54 / 20 steps; see ``benchmarks/RESULTS.md``).

    A well is a state when the system, once in it, stays for a while and
    leaves in no fixed direction. A latent path can instead go round a cycle
    through two wells, each holding one phase of a slow oscillation: on
    simulated recordings of motion, a period-80 activity alternated between
    two wells every 29-53 steps inside its 800-step segments, and the fit
    counted one state too many, its labels changing at every half period.
    So after the wells are found, the posterior paths through the training
    data are labelled by core sets (as for the kinetics) and two wells are
    joined into one state when the paths' implied time scales (of the
    reversible chain estimated from the labels at lag 1) have a gap of a
    factor 6 or more and the paths cross between the two wells at least 3
    times for every time they leave the pair. Both are needed: a state of a
    Markov chain that is merely less sticky than the others also opens a gap
    (a factor 17 for one left 20 times as often), but its exits spread over
    the other states, one crossing per exit or fewer. Wells that were states
    relaxed on time scales at most 2.61 times apart on the fits measured
    (seed 0 of four suite cases, three ``motion`` fits), where the joined
    pairs opened gaps of 11-19. A cycle through more than two wells (one
    ``motion`` fit: six) is not joined. Not with ``n_states`` given.

    Monte-Carlo inference uses the same noise draws for every sequence, so
    the output for one sequence does not depend on the other sequences
    passed with it, and :meth:`stream` reproduces it step by step: the same
    labels, and probabilities equal up to float32 rounding (about 1e-6; 7e-4
    was seen at single steps just after an abrupt jump between two joined
    sequences) when the particle filter weighs them. In a long sequence such
    a rounding difference can, rarely, change one resampling of the filter;
    the probabilities then differ by Monte-Carlo noise from that step on.
    The states' Markov chain (the default ``inference="markov"``) draws
    nothing: a sequence's probabilities alone, in a batch and in a stream
    agree to the rounding of the matrix products (1e-10 relative).

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
                 dt=0.5, hidden_size=64, context_size=32, n_lags="auto",
                 encoder_input="quadratic", window_length=50,
                 batch_size=64, max_iter=3000, n_init=2, learning_rate="cosine",
                 learning_rate_init=3e-3, kl_warmup=1000, density_weight=1.0,
                 depth_steps=400, tol=1e-3,
                 n_iter_no_change=5, early_stopping=True, validation_fraction=0.1,
                 decoder_covariance="latent", decoder_noise="student", n_paths=8,
                 inference="markov",
                 prior_weight=0.5, n_particles=64, switch_margin=0.2,
                 switch_hold="auto", min_state_fraction=0.005,
                 initial_prior="stationary",
                 solver="euler", device="auto", n_threads=None, n_jobs="auto",
                 distributed=False, random_state=None, verbose=0):
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
        self.n_lags = n_lags
        self.encoder_input = encoder_input
        self.window_length = window_length
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.n_init = n_init
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.kl_warmup = kl_warmup
        self.density_weight = density_weight
        self.depth_steps = depth_steps
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.decoder_covariance = decoder_covariance
        self.decoder_noise = decoder_noise
        self.n_paths = n_paths
        self.inference = inference
        self.prior_weight = prior_weight
        self.switch_margin = switch_margin
        self.switch_hold = switch_hold
        self.n_particles = n_particles
        self.min_state_fraction = min_state_fraction
        self.initial_prior = initial_prior
        self.solver = solver
        self.device = device
        self.n_threads = n_threads
        self.n_jobs = n_jobs
        self.distributed = distributed
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        check_params(self.get_params(deep=False), _PARAMETER_RULES)
        check_threads(self.n_threads)
        check_jobs(self.n_jobs)
        n_sub = 1.0 / self.dt
        if self.dt > 1 or abs(n_sub - round(n_sub)) > 1e-6:
            raise ValueError(f"dt must be 1/n for a positive integer n (observations "
                             f"are one time unit apart), got {self.dt!r}.")

    def _resolve_device(self) -> torch.device:
        dev = self.device
        if dev == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if not isinstance(dev, str):
            raise TypeError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {dev!r}.")
        if not (dev == "cpu" or dev.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {dev!r}.")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={dev!r} was requested but CUDA is not available.")
        try:
            device = torch.device(dev)
        except RuntimeError as exc:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', "
                             f"got {dev!r}.") from exc
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={dev!r} was requested but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s), numbered "
                             "from 0.")
        return device

    # --------------------------------------------------------------- training
    @sequence_docs
    def fit(self, X, y=None, *, lengths=None) -> LangevinSegmenter:
        """Fit the Neural Langevin Dynamics VAE and find the states.

        Parameters
        ----------
        {fit_sequences}

        Returns
        -------
        self : LangevinSegmenter
            The fitted estimator.
        """
        # Any failure (bad input, divergence, Ctrl-C before the first step)
        # restores the estimator exactly as it was, fitted or not.
        with unchanged_on_error(self), torch_threads(self.n_threads):
            return self._fit(X, lengths)

    def _fit(self, X, lengths) -> LangevinSegmenter:
        self._check_params()
        device = self._resolve_device()
        seqs = check_sequences(self, X, lengths=lengths, reset=True, min_length=2)
        seeds = check_random_state(self.random_state).randint(0, 2**31 - 1, size=4)
        data = seqs.data.astype(np.float64)
        replicas = Replicas.from_default_group(device) if self.distributed else SINGLE
        replicas.check_same("data and parameters",
                            fit_fingerprint(data, seqs.lengths, self.get_params()))
        seeds = replicas.broadcast_seeds(seeds)
        mean = data.mean(0)
        scale = scale_from_variance(data.var(0), mean, data.shape[0])
        # The warnings are said again from the caller's line (fit's, through _fit).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fitted = self._fit_candidates(data, seqs, seeds, mean, scale, device,
                                          replicas)
        for w in caught:
            warnings.warn(w.message, stacklevel=3)
        # Assign at the end so a failure leaves no half-fitted estimator.
        for name, value in fitted.items():
            setattr(self, name, value)
        if self.n_states_ == 1 and self.n_states is None:
            dynamics_hint = (
                "; if the states may differ in how an observation follows the "
                "previous ones rather than in the observations' law, set n_lags=1 "
                "or more" if self.n_lags == 0 else
                " (n_lags='auto' compared single frames with one lag; "
                "candidate_scores_ and candidate_wells_ say what it found)"
                if self.n_lags == "auto" else "")
            warnings.warn(
                "The learned energy has a single well, so every step gets the same "
                "label. If the data should hold several states: give training more "
                f"gradient steps (max_iter, now {self.max_iter}; it stopped after "
                f"{self.n_iter_}), or a sharper prior (beta, now {self.beta})"
                f"{dynamics_hint}.", UserWarning, stacklevel=3)
        return self

    def _fit_candidates(self, data: np.ndarray, seqs: Sequences, seeds,
                        mean: np.ndarray, scale: np.ndarray, device, replicas) -> dict:
        """Train the candidate models, keep the best, find its wells.

        The candidates are the ``n_init`` restarts reading ``n_lags`` previous
        observations; with ``n_lags="auto"``, the restarts on single frames
        and as many reading one lag (the same weight seeds), of which only the
        first is trained unless it wins. The kept one is the best by held-out
        ELBO (:func:`nldseg._training.train`).
        Returns the fitted attributes, not yet assigned.
        """
        auto = self.n_lags == "auto"
        restart_seeds = _restart_seeds(int(seeds[0]), self.n_init)
        candidates = [(0 if auto else self.n_lags, seed) for seed in restart_seeds]
        if auto:  # After the frames', so that their runs draw what they drew.
            candidates += [(1, seed) for seed in restart_seeds]
        lags = [lag for lag, _ in candidates]
        frames = {lag: torch.as_tensor(self._model_frames(
            data, seqs.lengths, mean, scale, n_lags=lag, oldest_first=True), device=device)
            for lag in set(lags)}
        modules = [self._new_module(data.shape[1], seed, device,
                                    dict(self.get_params(), n_lags=lag))
                   for lag, seed in candidates]
        try:
            result = train(modules, [frames[lag] for lag in lags], seqs.lengths,
                           TrainingSettings.from_params(self.get_params()), device,
                           int(seeds[1]), replicas, levels=lags,
                           finish_rival=auto and self.n_states is None)
        finally:
            release_buffers()  # The training kernels' reused work space.
        wells = np.full(len(candidates), np.nan)
        kept, used = result.kept, result
        module = freeze(modules[kept])
        fit = self._fit_landscape(module, frames[lags[kept]].cpu().numpy(), seqs,
                                  seeds[2:], self.min_state_fraction)
        wells[kept] = fit.landscape.n_states
        state_scores = np.full(len(candidates), np.nan)
        state_gain = (np.nan, np.nan)
        if result.rival is not None:
            # The lag won by held-out ELBO. The best single-frame model is
            # trained to the end too, and kept instead when its energy has
            # several wells and the lag's has one, or when both have several
            # and its labels explain the training steps better (cross-fitted).
            rival_result = result.rival_result
            rival = freeze(modules[result.rival])
            rival_fit = self._fit_landscape(rival, frames[0].cpu().numpy(), seqs,
                                            seeds[2:], self.min_state_fraction)
            wells[result.rival] = rival_fit.landscape.n_states
            if rival_fit.landscape.n_states > 1 and fit.landscape.n_states > 1:
                (state_scores[kept], state_scores[result.rival]), state_gain = (
                    self._compare_states(
                        frames, seqs, sorted(result.train_segments + result.held_segments),
                        [(lags[kept], module, fit), (0, rival, rival_fit)]))
            # As the lag had to win by ELBO, a tie keeps it (NaN: not compared).
            frames_better = -state_gain[0] > LEVEL_Z * state_gain[1]
            if rival_fit.landscape.n_states > 1 and (fit.landscape.n_states == 1
                                                     or frames_better):
                kept, used, module, fit = result.rival, rival_result, rival, rival_fit
            used.give_finish_warnings(stacklevel=3)
        del modules, frames
        n_lags = lags[kept]
        landscape, time_scale = fit.landscape, fit.time_scale
        chain = self._markov_chain(module, landscape, time_scale)  # The kept one's only.
        beta, gamma, mass = (t.detach() for t in module.langevin_params())
        scores = np.full(len(candidates), np.nan)
        scores[:len(result.restart_scores)] = result.restart_scores
        return {
            "scaler_mean_": mean, "scaler_scale_": scale,
            "module_": module, "energy_": landscape,
            "beta_": float(beta), "gamma_": float(gamma), "mass_": float(mass.mean()),
            "prior_time_scale_": time_scale,
            "training_dwell_time_": fit.dwell,
            "depths_refitted_": fit.depths_refitted,
            "n_states_": landscape.n_states,
            "state_occupancy_": landscape.occupancy("sampled"),
            "loss_curve_": used.loss_curve, "n_iter_": used.n_iter,
            "converged_": used.converged,
            "validation_scores_": used.validation_scores,
            "n_lags_": n_lags,
            "candidate_lags_": np.array(lags),
            "candidate_scores_": scores,
            "candidate_wells_": wells,
            "candidate_state_scores_": state_scores,
            "lag_state_gain_": np.array(state_gain, dtype=float),
            "lag_elbo_gain_": np.array(result.level_gain, dtype=float),
            "_oldest_first": True,  # Older fits embedded the newest observation first.
            "_markov_transition": chain.transition, "_markov_points": chain.points,
        }

    def _compare_states(self, frames: dict, seqs: Sequences, segments: list,
                        candidates: list) -> tuple:
        """Two candidates' states compared: cross-fitted scores of their labels.

        ``candidates`` are ``(lag, module, fit)`` (``fit``: its :class:`_LandscapeFit`)
        of the kept model and of its rival; ``frames`` the embedded training
        rows by lag. Each labels the training steps as :meth:`predict` does
        with the particle filter (``inference="filter"``, whatever
        ``inference`` is: it is read after fitting and may be changed then,
        so it does not steer the fit; the rule's margin was measured on
        these labels, and the Markov chain's labels of the frame model on
        ``basic_motions`` seed 0 scored 0.31 nats per step lower and kept a
        lag model that merged two activities, 0.59 against 0.80), and
        :func:`nldseg._switching_ar.segmentation_scores` scores the labels
        on ``segments`` of the standardised single frames. Returns the two
        mean scores per step, and the first's gain per step over the second
        with its standard error (:func:`nldseg._training.paired_gain` of the
        per-fold differences).
        """
        rows = frames[0].cpu().numpy().astype(np.float64)
        sums = []
        for lag, module, fit in candidates:
            labels = self._labels(Sequences(frames[lag].cpu().numpy(), seqs.lengths,
                                            seqs.form), module, fit.landscape, fit.dwell,
                                  inference="filter")
            fold_sums, steps = segmentation_scores(rows, labels, fit.landscape.n_states,
                                                   segments)
            sums.append(fold_sums)
        means = [float(fold_sums.sum() / steps.sum()) for fold_sums in sums]
        return means, paired_gain(sums[0] - sums[1], steps)

    def _new_module(self, n_features: int, seed: int, device,
                    params: dict) -> NeuralLangevinVAE:
        """A freshly initialised VAE, its weights drawn from ``seed`` (RNG left alone)."""
        fork = [device] if device.type == "cuda" else []
        # torch's default generator is the process's: two fits seeding it at once
        # from two threads (a threaded grid search) would draw each other's
        # weights, and restore each other's state into the caller's generator.
        with _SEEDING_LOCK, torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed)
            module = build_model(n_features, params)
        return module.to(device)

    def _refit_depths(self, module, frames: Sequences, seed: int,
                      min_state_fraction: float) -> bool:
        """Refit the wells' depths if that keeps the wells; ``True`` if kept.

        :func:`nldseg._training.refine_depths` on one posterior path through
        ``frames`` (at most ``_DEPTH_BUDGET`` steps, spread over them). The
        refit is to move the depths, not the wells: the wells are found from
        those positions before and after (:func:`build_landscape`), and the
        energy is restored unless they are as many and the positions' basins
        agree, matched one to one, on at least ``_DEPTH_AGREEMENT`` of a
        sample of them (on a recorded watch, ``basic_motions`` seed 0, the
        refit had split a well: 6 instead of 5, accuracy 0.777 to 0.685).
        With one well there is nothing to refit. Draws from its own
        generators, so that the wells' search after it draws what it drew
        without it.
        """
        own = np.random.default_rng([seed, 1])
        budget = min(int(frames.lengths.sum()), _DEPTH_BUDGET)
        sampler = PosteriorSampler(module, self.dt, 1, int(own.integers(2**31 - 1)),
                                   self.solver)
        positions = np.concatenate(sampler.landscape_paths(frames, own, budget))
        sample = positions[own.choice(len(positions), min(len(positions), 20_000),
                                      replace=False)]
        beta = float(module.langevin_params()[0])

        def wells() -> tuple[int, np.ndarray]:
            land = build_landscape(module.energy, beta, positions,
                                   min_state_fraction=min_state_fraction,
                                   n_states=self.n_states,
                                   rng=np.random.default_rng([seed, 2]))
            return land.n_states, land.predict(sample)

        n_before, before = wells()
        if n_before == 1:  # No relative depths to refit.
            return False

        def same_wells() -> bool:
            n_after, after = wells()
            return (n_after == n_before
                    and segmentation_accuracy(before, after) >= _DEPTH_AGREEMENT)

        return refine_depths(module, positions, self.depth_steps,
                             int(own.integers(2**31 - 1)), keep=same_wells)

    def _fit_landscape(self, module, z_data: np.ndarray, seqs: Sequences,
                       seeds, min_state_fraction: float,
                       ) -> _LandscapeFit:
        """Find the wells in the latent codes of part of the training data.

        Wells between which the posterior paths take turns much faster than
        they leave the pair are then joined into one state
        (:func:`nldseg._kinetics.metastable_state_map`), unless ``n_states``
        was given. Returns the :class:`EnergyLandscape`, the prior's
        calibrated clock (:func:`nldseg._kinetics.calibrate_clock`) and the
        mean steps between the states' changes
        (:func:`nldseg._kinetics.mean_switch_interval`), both on the same
        posterior paths, and whether the depths' refit was kept
        (:meth:`_refit_depths`).
        """
        rng = np.random.default_rng(int(seeds[0]))
        sampler = PosteriorSampler(module, self.dt, 1, int(seeds[1]), self.solver)
        frames = Sequences(z_data, seqs.lengths, seqs.form)
        refitted = bool(self.depth_steps) and self._refit_depths(
            module, frames, int(seeds[0]), min_state_fraction)
        paths = sampler.landscape_paths(frames, rng)
        landscape = build_landscape(module.energy, float(module.langevin_params()[0]),
                                    np.concatenate(paths),
                                    min_state_fraction=min_state_fraction,
                                    n_states=self.n_states, rng=rng)
        thresholds = None  # Of the core sets, once the states are final.
        if self.n_states is None and landscape.n_states >= 3:
            thresholds = landscape_core_thresholds(landscape, _CLOCK_CORE_FRACTION)
            labels = label_paths(module, landscape, paths, _CLOCK_CORE_FRACTION,
                                 thresholds=thresholds)
            state_map = metastable_state_map(labels, landscape.n_states)
            if state_map.max() + 1 < landscape.n_states:
                join_states(landscape, state_map)
                thresholds = None
        if thresholds is None and landscape.n_states > 1:
            thresholds = landscape_core_thresholds(landscape, _CLOCK_CORE_FRACTION)
        dwell = mean_switch_interval(module, landscape, paths, _CLOCK_CORE_FRACTION,
                                     thresholds=thresholds)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31 - 1)))
        time_scale = calibrate_clock(module, landscape, paths, dt=self.dt,
                                     core_fraction=_CLOCK_CORE_FRACTION,
                                     generator=generator, thresholds=thresholds)
        return _LandscapeFit(landscape, time_scale, dwell, refitted)

    def _markov_chain(self, module, landscape, time_scale: float) -> MarkovStateModel:
        """The states' Markov chain that ``inference="markov"`` filters.

        From the paths of :meth:`transition_matrix` with its defaults (the
        same seed, so its transition matrix is that method's), on the clock
        ``time_scale`` (1 where it is not finite: a model saved before the
        clock was calibrated), with ``_MARKOV_POINTS`` emission points per
        state's core (:func:`nldseg._kinetics.markov_state_model`).
        """
        if landscape.n_states == 1:
            points = np.repeat(landscape.minima[:, None].astype(np.float32),
                               _MARKOV_POINTS, axis=1)
            return MarkovStateModel(np.ones((1, 1)), points)
        generator = self._prior_generator(None)
        thresholds = landscape_core_thresholds(landscape, _CLOCK_CORE_FRACTION)
        with torch_threads(self.n_threads):
            paths = prior_state_paths(
                module, landscape, dt=self.dt, n_paths=_MARKOV_PATHS,
                n_steps=_MARKOV_STEPS, core_fraction=_CLOCK_CORE_FRACTION,
                generator=generator, thresholds=thresholds,
                time_scale=time_scale if np.isfinite(time_scale) else 1.0)
        return markov_state_model(paths, landscape, thresholds=thresholds,
                                  n_points=_MARKOV_POINTS, generator=generator)

    # -------------------------------------------------------------- inference
    def _check_inference_params(self) -> None:
        """The parameters inference reads, which may be set after fitting."""
        check_is_fitted(self)
        check_params({k: getattr(self, k) for k in _INFERENCE_PARAMETERS},
                     {k: _PARAMETER_RULES[k] for k in _INFERENCE_PARAMETERS})

    def _prepare(self, X, lengths) -> Sequences:
        self._check_inference_params()
        seqs = check_sequences(self, X, lengths=lengths, reset=False)
        return Sequences(self._model_frames(seqs.data, seqs.lengths, self.scaler_mean_,
                                            self.scaler_scale_), seqs.lengths, seqs.form)

    def _model_frames(self, data: np.ndarray, lengths: np.ndarray, mean: np.ndarray,
                      scale: np.ndarray, n_lags: int | None = None,
                      oldest_first: bool | None = None) -> np.ndarray:
        """Rows as the model reads them: standardised, float32, delay-embedded.

        The embedding is the fitted one unless ``n_lags`` and ``oldest_first``
        are given.
        """
        if n_lags is None:
            n_lags, oldest_first = self.n_lags_, self._oldest_first
        z = ((data.astype(np.float64, copy=False) - mean) / scale).astype(np.float32)
        return delay_embed(z, lengths, n_lags, oldest_first=oldest_first)

    def _seed(self) -> int:
        """Seed of the inference draws, from ``random_state``."""
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _sampler(self, module=None) -> PosteriorSampler:
        """The posterior sampler of ``module`` (else the fitted one), seeded."""
        return PosteriorSampler(self.module_ if module is None else module, self.dt,
                                self.n_paths, self._seed(), self.solver)

    def _filter(self, module=None, landscape=None, inference: str | None = None,
                ) -> ParticleFilter | MarkovFilter | None:
        """The filter that labels steps; None when ``inference="paths"``.

        Of ``module`` and ``landscape`` when given, else of the fitted ones
        (the Markov chain is the fitted model's); by ``inference`` when
        given, else by the parameter.
        """
        inference = self.inference if inference is None else inference
        if inference == "paths":
            return None
        module = self.module_ if module is None else module
        landscape = self.energy_ if landscape is None else landscape
        if inference == "markov":
            if self._markov_transition.size:
                chain = MarkovStateModel(self._markov_transition, self._markov_points)
            else:  # A model saved before inference="markov".
                chain = self._markov_chain(module, landscape, self.prior_time_scale_)
            return MarkovFilter(module, chain, landscape.occupancy("sampled"))
        return ParticleFilter(module, landscape, self.dt, self.n_particles,
                              self.prior_weight, self._seed())

    def predict_proba(self, X, *, lengths=None):
        """Probability of each state at every time step (online).

        By default the forward filter of the states' Markov chain gives them:
        ``p(state_t = k | x[:t+1])`` of the fitted model read as a hidden
        Markov model on its states (see ``inference``). With
        ``inference="filter"`` it is the weight of the ``n_particles``
        particles of a particle filter whose latent state at ``t`` lies in
        the basin of well ``k``; with ``inference="paths"`` the fraction of
        ``n_paths`` posterior paths there. Step ``t`` uses ``x[:t+1]``
        only. Deterministic for an integer ``random_state``.

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

    def _proba(self, seqs: Sequences, module=None, landscape=None,
               inference: str | None = None) -> np.ndarray:
        """State probabilities of model frames, by ``module`` and ``landscape``
        (the fitted ones when not given), read by ``inference`` (the
        parameter when not given)."""
        module = self.module_ if module is None else module
        landscape = self.energy_ if landscape is None else landscape
        d = module.latent_dim
        with torch_threads(self.n_threads):
            state_filter = self._filter(module, landscape, inference)
            if state_filter is not None:
                return state_filter.proba(seqs)
            return self._sampler(module).map_paths(
                seqs, lambda z: landscape.state_fractions(z[..., :d]),
                (landscape.n_states,), np.float64)

    def _labels(self, seqs: Sequences, module=None, landscape=None,
                dwell: float | None = None,
                inference: str | None = None) -> np.ndarray:
        """:meth:`predict`'s labels of model frames (rows end to end), by the
        fitted model or by ``module``, ``landscape`` and their training
        ``dwell``, read by ``inference`` (the parameter when not given)."""
        dwell = self.training_dwell_time_ if dwell is None else dwell
        hold = hold_steps(self.switch_hold, dwell)
        return np.concatenate([hysteresis_labels(p, self.switch_margin, hold=hold)
                               for p in seqs.split(self._proba(seqs, module, landscape,
                                                               inference))])

    def predict(self, X, *, lengths=None):
        """State label of every time step (online), from ``predict_proba``.

        The argmax of :meth:`predict_proba`, held by a hysteresis: the label
        moves from the current state to the most probable one only when that
        one's probability leads the current one's by more than
        ``switch_margin``, on ``switch_hold + 1`` consecutive steps
        (``switch_margin=0`` and ``switch_hold=0``: the argmax at every step).

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
        return format_output(seqs, self._labels(seqs))

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
        """Posterior-mean latent path (positions), averaged over ``n_paths`` paths.

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
        d = self.module_.latent_dim
        with torch_threads(self.n_threads):
            mean = self._sampler().map_paths(
                seqs, lambda z: z[..., :d].numpy().mean(2), (d,), np.float64)
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

        The ELBO is estimated with ``n_paths`` posterior paths per sequence
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
        with torch_threads(self.n_threads):
            total = self._sampler().elbo_sum(seqs)
        # Each step's likelihood is of the newest observation (given the
        # previous ones), or with an older version's lagged model of the
        # whole frame: n_lags + 1 observations.
        observations = self.module_.decoded_features // self.n_features_in_
        log_jacobian = observations * np.log(self.scaler_scale_).sum()
        return float(total / seqs.data.shape[0] - log_jacobian)

    @property
    def decoder_df_(self) -> np.ndarray:
        """Learned degrees of freedom of the decoder noise, per observed feature.

        Read from the fitted model (``module_``), so it is never out of step
        with it. See the class's Attributes.
        """
        module = self.module_  # AttributeError when not fitted, as any attribute.
        df = module.decoder_df()
        if df is None:  # Gaussian: the Student-t's limit of infinite df.
            return np.full(self.n_features_in_, np.inf)
        return df[module.given_features:].detach().cpu().double().numpy()

    # ------------------------------------------------ kinetics of the prior
    def _prior_generator(self, random_state) -> torch.Generator:
        """A torch generator seeded from ``random_state`` (else the estimator's)."""
        rs = self.random_state if random_state is None else random_state
        seed = int(check_random_state(rs).randint(0, 2**31 - 1))
        return torch.Generator().manual_seed(seed)

    def _time_scale(self, clock: str, stacklevel: int = 4) -> float:
        """The prior's clock for the kinetics methods' ``clock`` argument.

        ``stacklevel`` points a warning at the caller of the public method.
        """
        check_is_fitted(self)
        _check_kinetics(clock=clock)
        if clock == "model":
            return 1.0
        if not np.isfinite(self.prior_time_scale_):
            warnings.warn(
                "This model was fitted before nldseg calibrated the prior's clock; "
                "its prior is simulated as trained (clock='model'), which switches "
                "states too slowly. Refit it for calibrated kinetics.",
                UserWarning, stacklevel=stacklevel)
            return 1.0
        return float(self.prior_time_scale_)

    def _prior_paths(self, n_trajectories, n_steps, core_fraction, random_state,
                     clock):
        """Check the simulation's arguments, then simulate and label prior paths."""
        time_scale = self._time_scale(clock)
        _check_kinetics(core_fraction=core_fraction)
        if n_trajectories * (n_steps + 1) > _MAX_PRIOR_POINTS:
            raise ValueError(
                f"A prior simulation records at most {_MAX_PRIOR_POINTS:.0e} latent "
                f"points (memory); {n_trajectories} paths of {n_steps + 1} points "
                "ask for more.")
        with torch_threads(self.n_threads):
            return prior_state_paths(self.module_, self.energy_, dt=self.dt,
                                     n_paths=n_trajectories, n_steps=n_steps,
                                     core_fraction=core_fraction,
                                     generator=self._prior_generator(random_state),
                                     time_scale=time_scale)

    def _prior_counts(self, lag, n_trajectories, n_steps, core_fraction, random_state,
                      clock) -> np.ndarray:
        """Lag-``lag`` transition counts of labelled prior paths (arguments checked)."""
        _check_kinetics(lag=lag, n_trajectories=n_trajectories, n_steps=n_steps)
        labels = self._prior_paths(n_trajectories, n_steps, core_fraction,
                                   random_state, clock).labels
        return transition_counts(labels, self.n_states_, lag)

    def transition_matrix(self, lag: int = 1, *, n_trajectories: int = 256,
                          n_steps: int = 2000, core_fraction: float = 0.5,
                          clock: str = "calibrated", random_state=None) -> np.ndarray:
        """Transition probabilities between states after ``lag`` steps, by the prior.

        ``n_trajectories`` paths of the learned *prior* SDE (no data, no
        encoder) are simulated for ``n_steps`` observation steps (each
        ``prior_time_scale_`` time units of the prior on the calibrated clock,
        one as trained, in Euler-Maruyama steps of at most ``dt``), starting
        from the stationary law (each state's Laplace Gaussian, weighted by
        ``state_occupancy_``). They are labelled by core sets (milestoning): a
        point enters state ``i`` only when it lies in the basin of ``i`` and
        its energy is below ``E(m_i) + core_fraction * B_i``, ``B_i`` the
        lowest barrier out of ``i`` (saddles by the string method); between
        cores the label is the last core visited. Then every pair
        ``(label[t], label[t + lag])`` is counted and the rows normalised.

        Parameters
        ----------
        lag : int, default=1
            Observation steps between the two labels; at most ``n_steps``.
        n_trajectories : int, default=256
            Simulated paths.
        n_steps : int, default=2000
            Observation steps per path. Cost: ``n_trajectories * n_steps /
            dt`` energy gradients on the trained clock, about 1 s for the
            defaults (``dt=0.5``, ``hidden_size=64``) on one CPU thread;
            ``prior_time_scale_`` times as many on the calibrated one.
        core_fraction : float, default=0.5
            Height of the cores as a fraction of the lowest barrier, in (0, 1).
        clock : {"calibrated", "model"}, default="calibrated"
            ``"calibrated"``: the prior runs ``prior_time_scale_`` times as
            fast as trained, so that it switches states as often as the
            posterior paths through the training data did (the stationary
            law is unchanged); ``"model"``: the prior exactly as trained,
            which switches 2-9 times too slowly (see Notes). The simulation
            costs ``prior_time_scale_`` times as many Euler steps.
        random_state : int, RandomState instance or None, default=None
            Seeds the simulation; ``None`` uses the estimator's
            ``random_state`` (so an integer one makes the result
            deterministic).

        Returns
        -------
        transition_matrix : ndarray of shape (n_states_, n_states_)
            Row-stochastic; ``[i, j]`` is the probability of being in state
            ``j`` ``lag`` steps after being in state ``i``. A state never
            visited gets the row ``e_i``.

        See Also
        --------
        mean_dwell_times : Mean visit length per state, from the same paths.
        kramers_rates : Transition rates from the landscape's saddles.

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> P = seg.transition_matrix(n_trajectories=16, n_steps=50)
        >>> P.shape == (seg.n_states_, seg.n_states_)
        True
        >>> bool(abs(P.sum(1) - 1).max() < 1e-12)
        True
        """
        return row_stochastic(self._prior_counts(lag, n_trajectories, n_steps,
                                                 core_fraction, random_state, clock))

    def estimate_transition_matrix(self, X, *, lengths=None, max_iter: int = 20,
                                   tol: float = 1e-6) -> np.ndarray:
        """The states' transition matrix at lag 1, estimated on data ``X``.

        The fitted model read as a hidden Markov model on its states (the
        chain that ``inference="markov"`` filters: each state emits a frame
        with the decoder's density averaged over points of its well's core),
        with the transition matrix re-estimated to explain ``X``: Baum-Welch
        on the transition matrix alone, the states and their emissions held,
        from the prior's matrix (:meth:`transition_matrix` with its
        defaults). Each round replaces the matrix by the expected transition
        counts of a forward-backward pass over ``X`` under the current one;
        the likelihood of ``X`` rises every round.

        Where :meth:`transition_matrix` reads the learned prior SDE, whose
        rates follow the landscape's barriers and one calibrated clock
        (``prior_time_scale_``), this reads the switches of the data
        themselves through the model's states. On the suite's ``unequal``
        case (seed 0) the prior's mean dwell times were 13-52 % off those of
        the training data's true labels, this estimate's within 4 % of them
        (``benchmarks/RESULTS.md``). Mean dwell times follow as ``1 / (1 -
        P_ii)``; deeptime's hidden Markov state models estimate the same
        kind of matrix. The fitted model is not changed: labels still use the
        prior's chain.

        It suits states the system jumps between. It trusts the chain's
        emissions, which forget where in its well the system is, and counts
        every crossing the frames show: on diffusive data (the suite's
        ``langevin``) recrossings of a barrier count as visits, as with
        nearest-well labels, and the mean dwell times came out between the
        generator's nearest-well and core-set ones (up to 45 % short of the
        latter), where the prior's core-set dwell times (:meth:`mean_dwell_times`)
        were within 18 %. On the suite's ``regimes`` (states that differ in
        their dynamics only, read through one lag) one state's mean dwell
        time came out 36 % short of the training labels' own, where the
        prior's was 16 % short. Compare both estimates before trusting either.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Sequences, in any form accepted by :meth:`fit`, typically the
            training data.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``.
        max_iter : int, default=20
            Most Baum-Welch rounds.
        tol : float, default=1e-6
            Stop once a round raises the log-likelihood by less than this, in
            nats per observation.

        Returns
        -------
        transition_matrix : ndarray of shape (n_states_, n_states_)
            Row-stochastic; ``[i, j]`` is the probability that state ``j``
            follows state ``i`` one observation later. A state that ``X``
            never visits keeps the prior's row.

        See Also
        --------
        transition_matrix : The same matrix by the learned prior SDE.

        Examples
        --------
        >>> import numpy as np
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> P = seg.estimate_transition_matrix(X)
        >>> P.shape == (seg.n_states_, seg.n_states_)
        True
        >>> dwell = 1.0 / (1.0 - np.diag(P))  # Mean steps per visit.
        """
        _check_kinetics(max_iter=max_iter, tol=tol)
        seqs = self._prepare(X, lengths)
        with torch_threads(self.n_threads):
            state_filter = self._filter(inference="markov")
            transition, _, _ = state_filter.reestimate(seqs, max_iter=max_iter, tol=tol)
        return transition

    @_prior_path_docs
    def dwell_times(self, *, n_trajectories: int = 256, n_steps: int = 2000,
                    core_fraction: float = 0.5, clock: str = "calibrated",
                    random_state=None) -> list[np.ndarray]:
        """Lengths of the visits to each state in paths of the learned prior.

        The paths and their core-set labels are those of
        :meth:`transition_matrix`. A visit is a run of one label; the first
        and the last visit of every path are cut by the path's ends
        (censored), so they are dropped and only complete visits are
        returned. Visits are thereby biased short: a visit is complete less
        often the longer it is, noticeably once the mean visit is more than
        a few percent of ``n_steps`` (use :meth:`mean_dwell_times` for the
        mean, which has no such bias).

        Parameters
        ----------
        {prior_path_parameters}

        Returns
        -------
        dwell_times : list of n_states_ ndarrays of int
            Visit lengths in observation steps, one array per state (empty
            for a state with no complete visit).

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> visits = seg.dwell_times(n_trajectories=16, n_steps=50)
        >>> len(visits) == seg.n_states_
        True
        """
        _check_kinetics(n_trajectories=n_trajectories, n_steps=n_steps)
        labels = self._prior_paths(n_trajectories, n_steps, core_fraction,
                                   random_state, clock).labels
        return visit_lengths(labels, self.n_states_)

    @_prior_path_docs
    def mean_dwell_times(self, *, n_trajectories: int = 256, n_steps: int = 2000,
                         core_fraction: float = 0.5, clock: str = "calibrated",
                         random_state=None) -> np.ndarray:
        """Mean length of a visit to each state, in observation steps, by the prior.

        From the paths and core-set labels of :meth:`transition_matrix`: the
        time spent in a state divided by the number of exits from it. Visits
        cut by the ends of a path (censored) add their time but no exit, the
        maximum-likelihood estimate for geometric visit lengths; the plain
        mean of the complete visits of :meth:`dwell_times` would be biased
        short. It equals ``1 / (1 - P_ii)`` of ``transition_matrix(1)`` with
        the same arguments.

        Parameters
        ----------
        {prior_path_parameters}

        Returns
        -------
        mean_dwell_times : ndarray of shape (n_states_,)
            NaN for a state never left (e.g. a single state).

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> seg.mean_dwell_times(n_trajectories=16, n_steps=50).shape == (seg.n_states_,)
        True
        """
        _check_kinetics(n_trajectories=n_trajectories, n_steps=n_steps)
        labels = self._prior_paths(n_trajectories, n_steps, core_fraction,
                                   random_state, clock).labels
        return mean_visit_lengths(labels, self.n_states_)

    @_prior_path_docs
    def mean_first_passage_times(self, lag: int = 1, *, n_trajectories: int = 256,
                                 n_steps: int = 2000, core_fraction: float = 0.5,
                                 clock: str = "calibrated",
                                 random_state=None) -> np.ndarray:
        """Mean time to first reach each state from each other one, by the prior.

        The Markov state model's estimate (as deeptime's ``mfpt``): the
        transition matrix ``P`` of :meth:`transition_matrix` at ``lag``, with
        the same arguments, solved for ``m[i, j] = lag + sum_{k != j}
        P[i, k] m[k, j]``. The core-set labels make the chain close to
        Markov at lag 1 (a recrossing of a barrier top is no transition); a
        larger ``lag`` checks that (the times should not change much) and
        resolves them to multiples of ``lag``.

        Parameters
        ----------
        lag : int, default=1
            Observation steps per transition; at most ``n_steps``.
        {prior_path_parameters}

        Returns
        -------
        mfpt : ndarray of shape (n_states_, n_states_)
            ``[i, j]``: mean observation steps from state ``i`` until state
            ``j`` is first reached; 0 on the diagonal, ``inf`` where the
            simulated paths never lead from ``i`` to ``j``.

        See Also
        --------
        transition_matrix : The chain the times are solved from.
        kramers_rates : Rates from the landscape's saddles (``1 / rate`` is a
            passage time between neighbouring wells).

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> m = seg.mean_first_passage_times(n_trajectories=16, n_steps=50)
        >>> m.shape == (seg.n_states_, seg.n_states_)
        True
        """
        return mean_first_passage_times(
            self.transition_matrix(lag, n_trajectories=n_trajectories, n_steps=n_steps,
                                   core_fraction=core_fraction, clock=clock,
                                   random_state=random_state), lag)

    @_prior_path_docs
    def implied_timescales(self, lag: int = 1, *, n_trajectories: int = 256,
                           n_steps: int = 2000, core_fraction: float = 0.5,
                           clock: str = "calibrated",
                           random_state=None) -> np.ndarray:
        """Relaxation times of the slow processes of the prior, in observation steps.

        The transitions of the core-set labelled prior paths of
        :meth:`transition_matrix` (same arguments) are counted at ``lag``
        and symmetrised (detailed balance, which the overdamped prior obeys
        exactly), and each eigenvalue ``lambda_k`` of the resulting chain
        beyond the first gives ``t_k = -lag / ln(lambda_k)`` (deeptime's
        ``timescales``). A gap between consecutive times separates the slow
        exchanges between groups of states from the fast ones within them;
        times that stay put as ``lag`` grows show a chain that is Markov at
        that lag.

        Parameters
        ----------
        lag : int, default=1
            Observation steps between counted labels; at most ``n_steps``.
        {prior_path_parameters}

        Returns
        -------
        timescales : ndarray of shape (n_visited - 1,)
            Slowest first; ``n_visited`` is the number of states the paths
            visit (``n_states_`` unless a state is too shallow to be
            reached). ``inf`` for groups of states the paths never cross
            between.

        See Also
        --------
        transition_matrix, mean_first_passage_times

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> t = seg.implied_timescales(n_trajectories=16, n_steps=50)
        >>> t.shape[0] <= seg.n_states_ - 1
        True
        """
        return implied_timescales(self._prior_counts(lag, n_trajectories, n_steps,
                                                     core_fraction, random_state, clock),
                                  lag)

    def sample(self, n_sequences: int, n_timesteps: int, *, core_fraction: float = 0.5,
               clock: str = "calibrated",
               random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Generate sequences from the learned model: prior paths, decoded.

        Latent paths of the prior SDE start from its stationary law (as in
        :meth:`transition_matrix`) and are decoded at every step with the
        decoder's mean plus its Gaussian noise, then mapped back to the units
        of the training data (``scaler_mean_``, ``scaler_scale_``). The labels
        are the paths' core-set labels (see :meth:`transition_matrix`). With
        ``n_lags``, the decoder gives each observation given the ``n_lags``
        before it, so the observations are drawn in turn (an autoregression
        along the path), after 50 steps of burn-in that are not returned.

        Parameters
        ----------
        n_sequences : int
            Sequences to generate.
        n_timesteps : int
            Steps per sequence.
        core_fraction : float, default=0.5
            Height of the cores as a fraction of the lowest barrier, in (0, 1).
        clock : {"calibrated", "model"}, default="calibrated"
            The prior's clock, as in :meth:`transition_matrix`.
        random_state : int, RandomState instance or None, default=None
            Seeds the paths and the decoder noise; ``None`` uses the
            estimator's.

        Returns
        -------
        X : ndarray of shape (n_sequences, n_timesteps, n_features_in_)
            Generated observations.
        y : ndarray of shape (n_sequences, n_timesteps)
            State of every step, in ``0..n_states_-1``.

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> X_new, y_new = seg.sample(3, 40, random_state=0)
        >>> X_new.shape, y_new.shape
        ((3, 40, 5), (3, 40))
        """
        check_is_fitted(self)
        _check_kinetics(n_sequences=n_sequences, n_timesteps=n_timesteps)
        generator = self._prior_generator(random_state)
        # One seed for the paths, one for the decoder noise.
        seeds = torch.randint(0, 2**31 - 1, (2,), generator=generator).tolist()
        # A decoder of each observation given the previous ones starts from
        # zeros: it runs this many steps before the first one returned.
        burn_in = _SAMPLE_BURN_IN if self.module_.given_features else 0
        paths, labels, _, _ = self._prior_paths(n_sequences, n_timesteps - 1 + burn_in,
                                                core_fraction, int(seeds[0]), clock)
        with torch_threads(self.n_threads):
            noise = torch.Generator().manual_seed(int(seeds[1]))
            X = decode_observations(self.module_, torch.as_tensor(paths), noise)
        X, labels = X[:, burn_in:], labels[:, burn_in:]
        # A model of an older version with n_lags decodes whole frames, the
        # newest observation first; today's draw the newest observation only.
        X = X[..., :self.n_features_in_]
        return X * self.scaler_scale_ + self.scaler_mean_, labels

    def kramers_rates(self, *, clock: str = "calibrated") -> np.ndarray:
        """Eyring-Kramers transition rates between neighbouring states.

        For each pair of states, a minimum energy path joins their deepest
        minima (simplified string method); the states are neighbours where the
        path steps from one's basin straight into the other's, and the top of
        that crossing is refined by Newton's method to the saddle ``s`` (a
        state of several merged wells has dips and barriers inside its basin,
        which are not transitions). The rate from state ``i`` over
        ``s`` is ``lambda_+ / (2 pi) sqrt(det H(m_i) / |det H(s)|)
        exp(-beta (E(s) - E(m_i)))``: overdamped, ``lambda_+ = |lambda_-(H(s))|
        / gamma`` (the Eyring-Kramers formula); underdamped, ``lambda_+`` is
        the unstable growth rate of the linearised Langevin dynamics at ``s``
        with friction ``gamma`` and mass ``M`` (Kramers-Langer). Accurate for
        barriers of several ``1 / beta``; time unit: one observation step,
        which the calibrated clock makes ``prior_time_scale_`` time units of
        the prior (the rates are multiplied by it).

        Parameters
        ----------
        clock : {"calibrated", "model"}, default="calibrated"
            ``"calibrated"``: rates on the clock of :meth:`transition_matrix`,
            ``prior_time_scale_`` times those of the prior as trained;
            ``"model"``: the prior as trained.

        Returns
        -------
        rates : ndarray of shape (n_states_, n_states_)
            ``[i, j]``: rate from ``i`` to ``j`` per observation step; 0 on
            the diagonal and between states whose path passes through a third
            state's basin; NaN where no index-1 saddle was found on the path.

        See Also
        --------
        transition_matrix : Transition probabilities from simulated paths.

        Notes
        -----
        The formula is asymptotic: harmonic wells and saddles, barriers of
        many ``1 / beta``, and exits that are separate channels. On fitted
        landscapes with barriers of about ``3 / beta`` it came within 1.6x of
        the simulated prior's escape rates on 7 of the 8 states of two fits
        (``benchmarks/RESULTS.md``), but 2.7x too fast on a small shallow
        well (3.2 ``/ beta``) whose three exits lay within 0.5 ``/ beta`` of
        each other and less than two transverse widths apart (its basin's
        anharmonicity accounted for 1.3x of that). On an analytic well
        (``benchmarks/kramers_channels.py``) three exits 120 degrees apart
        added up as the formula says, while three 40 degrees apart, on a
        nearly flat ridge, made its sum 5x too fast. For such wells, trust
        the simulated kinetics (:meth:`transition_matrix`,
        :meth:`mean_dwell_times`) over these rates.

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> seg.kramers_rates().shape == (seg.n_states_, seg.n_states_)
        True
        """
        time_scale = self._time_scale(clock, stacklevel=3)
        beta, gamma, mass = (t.detach().double() for t in self.module_.langevin_params())
        saddles = landscape_saddles(self.energy_)
        return time_scale * kramers_rate_matrix(
            self.energy_, saddles, beta=float(beta), gamma=float(gamma),
            mass=mass.numpy() if self.module_.dynamics == "underdamped" else None)

    def minimum_energy_paths(self) -> dict:
        """Minimum energy paths and saddles between the states' minima.

        The paths of :meth:`kramers_rates` (simplified string method between
        the deepest minima of each pair of states, the top of the step from
        one state's basin into the other's refined to the saddle by Newton's
        method).

        Returns
        -------
        paths : dict
            ``"paths"``: dict ``(i, j) -> ndarray (n_images, latent_dim)``
            for ``i < j``, from state ``i``'s minimum to ``j``'s;
            ``"saddles"`` (n_states_, n_states_, latent_dim), NaN between
            states whose path reaches the other only through a third state's
            basin (they are not neighbours); ``"barriers"`` (n_states_, n_states_):
            ``E(saddle) - E(minimum of the row's state)``, ``inf`` where
            there is no saddle; ``"is_saddle"`` (n_states_, n_states_):
            whether the refined point is an index-1 saddle.

        Examples
        --------
        >>> from nldseg import LangevinSegmenter
        >>> from nldseg.datasets import make_markov_chain_sequences
        >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
        >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
        >>> seg.minimum_energy_paths()["barriers"].shape == (seg.n_states_,) * 2
        True
        """
        check_is_fitted(self)
        found = landscape_saddles(self.energy_)
        return {"paths": found["paths"], "saddles": found["points"],
                "barriers": found["barriers"], "is_saddle": found["is_saddle"]}

    # ------------------------------------------------------- serving and I/O
    def stream(self) -> SegmentationStream:
        """Open a stateful online labeller for one new sequence.

        ``stream().update(x_t)`` consumes one observation and returns its label
        and state probabilities, carrying the encoder and latent state between
        calls; after ``t + 1`` updates they equal ``predict(x[:t + 1])[t]`` and
        ``predict_proba(x[:t + 1])[t]`` (the filters' probabilities to
        rounding; see Notes). Open one stream per sequence; streams are
        independent of each other and of later refits.

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
        self._check_inference_params()
        state_filter = self._filter()
        markov = isinstance(state_filter, MarkovFilter)
        return SegmentationStream(self._sampler(), self.energy_, self.scaler_mean_,
                                  self.scaler_scale_, n_lags=self.n_lags_,
                                  oldest_first=self._oldest_first,
                                  n_threads=self.n_threads,
                                  particle_filter=(None if markov else state_filter),
                                  markov_filter=state_filter if markov else None,
                                  switch_margin=self.switch_margin,
                                  switch_hold=hold_steps(self.switch_hold,
                                                         self.training_dwell_time_))

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
        state = _persistence.rename_old_params(state)
        if "module_" in state:  # Fitted, possibly by a version with fewer attributes.
            state = _persistence.add_missing_fitted(state)
            state.setdefault("n_lags_", state["n_lags"])
        _persistence.warn_if_other_version(state.pop("_nldseg_version", None))
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags
