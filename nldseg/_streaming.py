"""Stateful online labelling for serving: one observation in, one label out."""

from __future__ import annotations

import numpy as np
import torch

from nldseg._fused import InferenceStepper
from nldseg._validation import check_observation


class SegmentationStream:
    """Label one sequence online, one observation at a time.

    Made by :meth:`LangevinSegmenter.stream`. The stream carries the encoder's
    hidden state, the ``n_samples`` posterior latent states and the random
    generator between calls, so each :meth:`update` costs one encoder step and
    ``1 / dt`` Euler steps. After ``t + 1`` updates, the label and
    probabilities returned equal ``predict(x[:t + 1])[t]`` and
    ``predict_proba(x[:t + 1])[t]`` of the segmenter on the prefix. Streams are
    independent: open one per sequence being served.

    Parameters
    ----------
    estimator : LangevinSegmenter
        A fitted segmenter. The stream reads it and never changes it; refitting
        the estimator does not affect a stream already open.

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

    def __init__(self, estimator) -> None:
        self._module = estimator.module_
        self._landscape = estimator.energy_
        self._mean = np.asarray(estimator.scaler_mean_, dtype=np.float64)
        self._scale = np.asarray(estimator.scaler_scale_, dtype=np.float64)
        self._n_features = int(estimator.n_features_in_)
        self._n_samples = int(estimator.n_samples)
        self._n_sub = estimator._n_sub
        self._dt = float(estimator.dt)
        self._seed = estimator._inference_seed()
        self._stepper = InferenceStepper(self._module, self._dt)
        self._work = self._stepper.workspace(self._n_samples, torch.empty(0))
        self.reset()

    def reset(self) -> SegmentationStream:
        """Forget the observations seen so far and start a new sequence.

        Returns
        -------
        self : SegmentationStream
        """
        self._gen = torch.Generator().manual_seed(self._seed)
        self._hidden = None
        self._z = None
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
            State of the newest step (the argmax of ``proba``).
        proba : ndarray of shape (n_states_,)
            Probability of each state at the newest step.
        """
        row = check_observation(x_t, self._n_features)
        x = torch.as_tensor(((row - self._mean) / self._scale).astype(np.float32))
        module = self._module
        d, s = module.latent_dim, self._n_samples
        gen_state = self._gen.get_state()
        try:
            hidden, z = self._step(module, x, d, s)
            proba = self._landscape._state_fractions(z[:, :d])
        except BaseException:
            self._gen.set_state(gen_state)
            raise
        # Commit the new state only once everything above has succeeded.
        self._hidden, self._z = hidden, z
        self.n_steps_ += 1
        return int(proba.argmax()), proba

    def _step(self, module, x, d, s):
        """Encoder step and latent update for one observation (no state change)."""
        with torch.no_grad():
            h = module._gru_step(x.reshape(1, -1), self._hidden)
            if self._z is None:
                mean, log_std = module.initial_posterior(h)
                eps0 = torch.randn((s, module.state_dim), generator=self._gen)
                z = mean + log_std.exp() * eps0
            else:
                noise = torch.randn((self._n_sub, s, d), generator=self._gen)
                stepper = self._stepper
                z = stepper.advance(self._z, stepper.bias(h), stepper.drive(noise),
                                    self._work)
        return h, z
