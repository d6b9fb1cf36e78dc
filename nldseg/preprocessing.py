"""Sequence-aware preprocessing for pipelines in front of :class:`LangevinSegmenter`.

The transformers here accept every input form the segmenter accepts (a 2-D
array, one sequence or several stacked with ``lengths``; a 3-D array; a list of
2-D arrays of any lengths) and return their output in the same form, so that
they can precede the segmenter in a :class:`~sklearn.pipeline.Pipeline`:
:class:`SequenceStandardScaler` standardises, :class:`SequenceClipper` clips
outliers (for heavy-tailed data, such as a sensor's spikes).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from nldseg._validation import (
    RealParam,
    check_params,
    check_sequences,
    format_output,
    scale_from_variance,
    sequence_docs,
    unchanged_on_error,
)

__all__ = ["SequenceClipper", "SequenceStandardScaler"]

#: The standard deviation of a normal law over its median absolute deviation.
_MAD_TO_SD = 1.4826


class _FrameTransformer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """What the sequence transformers share: each time step transformed on its own."""

    def _map_frames(self, X, lengths, transform_frames):
        """``transform_frames`` (frames -> frames) applied to fitted-checked ``X``,
        returned in ``X``'s form."""
        check_is_fitted(self)
        seqs = check_sequences(self, X, lengths=lengths, reset=False)
        return format_output(seqs, transform_frames(seqs.data))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class SequenceStandardScaler(_FrameTransformer):
    """Standardise features with statistics pooled over all time steps of all sequences.

    The per-feature mean and standard deviation are computed on every time step
    of every training sequence pooled together (sequences of different lengths
    weigh by their number of steps), and applied to each time step on its own:
    ``z = (x - mean_) / scale_``. The result of :meth:`transform` therefore does
    not depend on how the rows are grouped into sequences; ``lengths`` is only
    validated and used to shape the output like the input.

    Parameters
    ----------
    with_mean : bool, default=True
        If True, centre the data before scaling.
    with_std : bool, default=True
        If True, scale the data to unit variance.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features_in_,) or None
        Per-feature mean over all training time steps. ``None`` when both
        ``with_mean`` and ``with_std`` are False.
    var_ : ndarray of shape (n_features_in_,) or None
        Per-feature (biased) variance over all training time steps. ``None``
        when ``with_std=False``.
    scale_ : ndarray of shape (n_features_in_,) or None
        Per-feature divisor ``sqrt(var_)``, set to 1.0 for constant features.
        ``None`` when ``with_std=False``.
    n_features_in_ : int
        Number of features seen during :term:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during :term:`fit`, when ``X`` is a DataFrame
        with string column names.
    n_samples_seen_ : int
        Number of time steps (of all sequences together) seen during
        :term:`fit`.

    See Also
    --------
    sklearn.preprocessing.StandardScaler : The same scaling for 2-D data only.
    nldseg.LangevinSegmenter : The segmenter this transformer is meant to
        precede in a pipeline.

    Notes
    -----
    :class:`~nldseg.LangevinSegmenter` standardises its input internally, so
    this scaler changes neither its fit nor its labels much; it is for
    pipelines that put other steps in between, or that need the scaled data.
    Unlike :class:`~sklearn.preprocessing.StandardScaler`, NaN is rejected,
    as by the segmenter. ``set_output(transform="pandas")`` only applies to a
    2-D ``X``.

    Examples
    --------
    >>> from nldseg.datasets import make_markov_chain_sequences
    >>> from nldseg.preprocessing import SequenceStandardScaler
    >>> X, _ = make_markov_chain_sequences(4, 30, n_features=5, random_state=0)
    >>> scaler = SequenceStandardScaler().fit(X)
    >>> scaler.mean_.shape, scaler.n_samples_seen_
    ((5,), 120)
    >>> scaler.transform(X).shape
    (4, 30, 5)
    >>> [z.shape for z in scaler.transform([X[0], X[1, :12]])]
    [(30, 5), (12, 5)]
    """

    def __init__(self, *, with_mean=True, with_std=True):
        self.with_mean = with_mean
        self.with_std = with_std

    @sequence_docs
    def fit(self, X, y=None, *, lengths: ArrayLike | None = None
            ) -> SequenceStandardScaler:
        """Compute the per-feature mean and standard deviation over all time steps.

        Parameters
        ----------
        {fit_sequences}

        Returns
        -------
        self : SequenceStandardScaler
            The fitted scaler.
        """
        with unchanged_on_error(self):  # Bad input leaves a fitted scaler as it was.
            seqs = check_sequences(self, X, lengths=lengths, reset=True)
        data = seqs.data.astype(np.float64)
        n_samples = data.shape[0]
        if self.with_mean or self.with_std:
            mean = data.mean(axis=0)
        else:
            mean = None
        if self.with_std:
            var = data.var(axis=0)
            scale = scale_from_variance(var, mean, n_samples)
        else:
            var = scale = None
        self.mean_, self.var_, self.scale_ = mean, var, scale
        self.n_samples_seen_ = int(n_samples)
        return self

    @sequence_docs
    def transform(self, X, *, lengths: ArrayLike | None = None):
        """Standardise every time step: ``(x - mean_) / scale_``.

        Parameters
        ----------
        {transform_sequences}

        Returns
        -------
        X_tr : ndarray of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Standardised sequences, in the form and float dtype of ``X``.
        """
        def standardise(frames):
            data = np.array(frames, copy=True)
            if self.with_mean:
                data -= self.mean_.astype(data.dtype)
            if self.with_std:
                data /= self.scale_.astype(data.dtype)
            return data

        return self._map_frames(X, lengths, standardise)

    def fit_transform(self, X, y=None, *, lengths: ArrayLike | None = None):
        """Fit to ``X``, then standardise it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Training sequences.
        y : None
            Ignored; present for API consistency.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``.

        Returns
        -------
        X_tr : ndarray of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Standardised sequences, in the form of ``X``.
        """
        return self.fit(X, lengths=lengths).transform(X, lengths=lengths)

    def inverse_transform(self, X, *, lengths: ArrayLike | None = None):
        """Undo the standardisation: ``x * scale_ + mean_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Standardised sequences, in any form accepted by :meth:`fit`.
        lengths : array-like of int, default=None
            Lengths of the sequences stacked in a 2-D ``X``. Only validated.

        Returns
        -------
        X_orig : ndarray of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Sequences in the original units, in the form of ``X``.
        """
        def unstandardise(frames):
            data = np.array(frames, copy=True)
            if self.with_std:
                data *= self.scale_.astype(data.dtype)
            if self.with_mean:
                data += self.mean_.astype(data.dtype)
            return data

        return self._map_frames(X, lengths, unstandardise)


class SequenceClipper(_FrameTransformer):
    """Clip each feature's outliers to a band of robust standard deviations.

    Per feature, the median and the median absolute deviation (MAD) of every
    time step of every training sequence pooled together give a robust
    standard deviation ``1.4826 * MAD`` (the standard deviation, for normal
    data), and :meth:`transform` clips each value to ``median_ +- n_sd *
    scale_``. Each time step is clipped on its own, so labels stay online
    when this precedes :class:`~nldseg.LangevinSegmenter` in a pipeline.

    Parameters
    ----------
    n_sd : float, default=3.0
        Half-width of the band, in robust standard deviations; > 0.

    Attributes
    ----------
    median_ : ndarray of shape (n_features_in_,)
        Per-feature median over all training time steps.
    scale_ : ndarray of shape (n_features_in_,)
        Per-feature robust standard deviation ``1.4826 * MAD``; where the MAD
        is 0 (more than half the steps share one value), the standard
        deviation instead, and 1.0 for a constant feature.
    lower_, upper_ : ndarray of shape (n_features_in_,)
        The band: ``median_ -+ n_sd * scale_``.
    n_features_in_ : int
        Number of features seen during :term:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during :term:`fit`, when ``X`` is a DataFrame
        with string column names.

    See Also
    --------
    SequenceStandardScaler : Standardise the features.
    sklearn.preprocessing.RobustScaler : Median and quantile range scaling,
        without clipping, for 2-D data only.

    Notes
    -----
    Why: the segmenter's decoder noise is Gaussian. On heavy-tailed frames
    (the benchmark's ``heavy_tails`` case, Student-t noise with 3 degrees of
    freedom) it explained the outliers with one broad well: seed 1 ended
    with 1 well for 4 states (accuracy 0.277); the same frames clipped at 3
    robust standard deviations (3.4 % of the values) gave 4 wells and 0.866
    (``benchmarks/RESULTS.md``). Gaussian data lose almost nothing: 0.27 %
    of a normal feature's values lie beyond 3 standard deviations.

    Examples
    --------
    >>> import numpy as np
    >>> from nldseg.preprocessing import SequenceClipper
    >>> X = np.random.default_rng(0).standard_t(2, size=(4, 300, 3))
    >>> clipper = SequenceClipper(n_sd=3.0).fit(X)
    >>> Xc = clipper.transform(X)
    >>> bool((Xc >= clipper.lower_).all() and (Xc <= clipper.upper_).all())
    True
    >>> bool(np.abs(X).max() > np.abs(Xc).max())
    True

    In front of the segmenter:

    >>> from sklearn.pipeline import make_pipeline
    >>> from nldseg import LangevinSegmenter
    >>> model = make_pipeline(SequenceClipper(), LangevinSegmenter())
    """

    def __init__(self, *, n_sd=3.0):
        self.n_sd = n_sd

    @sequence_docs
    def fit(self, X, y=None, *, lengths: ArrayLike | None = None) -> SequenceClipper:
        """Compute the per-feature median and robust standard deviation.

        Parameters
        ----------
        {fit_sequences}

        Returns
        -------
        self : SequenceClipper
            The fitted clipper.
        """
        with unchanged_on_error(self):  # Bad input leaves a fitted clipper as it was.
            check_params({"n_sd": self.n_sd}, {"n_sd": RealParam(0.0)})
            seqs = check_sequences(self, X, lengths=lengths, reset=True)
        data = seqs.data.astype(np.float64)
        median = np.median(data, axis=0)
        scale = _MAD_TO_SD * np.median(np.abs(data - median), axis=0)
        flat = scale == 0.0
        if flat.any():
            mean = data.mean(axis=0)
            sd = scale_from_variance(data.var(axis=0), mean, data.shape[0])
            scale = np.where(flat, sd, scale)
        self.median_, self.scale_ = median, scale
        self.lower_ = median - self.n_sd * scale
        self.upper_ = median + self.n_sd * scale
        return self

    @sequence_docs
    def transform(self, X, *, lengths: ArrayLike | None = None):
        """Clip every value to ``[lower_, upper_]`` of its feature.

        Parameters
        ----------
        {transform_sequences}

        Returns
        -------
        X_tr : ndarray of shape (n_samples, n_features), \
                (n_sequences, n_timesteps, n_features) or list of arrays
            Clipped sequences, in the form and float dtype of ``X``.
        """
        return self._map_frames(X, lengths, lambda frames: np.clip(
            frames, self.lower_.astype(frames.dtype), self.upper_.astype(frames.dtype)))

