"""Inference: posterior paths' noise rule, the particle filter; stream equals predict."""

import copy
import math

import numpy as np
import pytest
import torch

from nldseg import SegmentationStream
from nldseg._inference import LabelState, held_labels, hysteresis_labels


@pytest.mark.parametrize("inference", ["markov", "filter"])
@pytest.mark.parametrize("model", ["tiny_fitted", "tiny_underdamped"])
def test_stream_equals_predict_on_every_prefix(model, inference, tiny_data, request):
    seg = copy.copy(request.getfixturevalue(model)).set_params(inference=inference)
    x = tiny_data[1][0]
    stream = seg.stream()
    assert isinstance(stream, SegmentationStream)
    out = [stream.update(x_t) for x_t in x]
    labels = np.array([lab for lab, _ in out])
    proba = np.array([p for _, p in out])
    assert len(np.unique(labels)) >= 2  # Labels that could disagree.
    np.testing.assert_array_equal(labels, seg.predict(x))
    np.testing.assert_array_equal(proba, seg.predict_proba(x))
    # Each step's output is that of predict on the prefix alone.
    for t in (0, 1, 17):
        np.testing.assert_array_equal(proba[t], seg.predict_proba(x[:t + 1])[t])
    assert stream.n_steps_ == len(x)


def _paths_only(seg):
    """The fitted segmenter labelling by unweighted posterior paths (a shallow copy)."""
    return copy.copy(seg).set_params(inference="paths")


def _particles(seg):
    """The fitted segmenter labelling by the particle filter (a shallow copy)."""
    return copy.copy(seg).set_params(inference="filter")


@pytest.mark.parametrize("inference", ["markov", "filter", "paths"])
def test_streams_are_independent_and_match_batch_predict(tiny_fitted, tiny_data, inference):
    by_paths = inference == "paths"
    seg = copy.copy(tiny_fitted).set_params(inference=inference)
    X_test = tiny_data[1]
    batch = seg.predict_proba(X_test)
    assert len(np.unique(batch.argmax(-1))) >= 2
    streams = [seg.stream() for _ in X_test]
    got = np.empty_like(batch)
    labels = np.empty(batch.shape[:2], dtype=int)
    # Interleave the sequences: one step of each stream in turn.
    for t in range(X_test.shape[1]):
        for i, stream in enumerate(streams):
            labels[i, t], got[i, t] = stream.update(X_test[i, t])
    np.testing.assert_array_equal(got.argmax(-1), batch.argmax(-1))
    np.testing.assert_array_equal(labels, seg.predict(X_test))
    if by_paths:  # Fractions of paths: counts, equal to the last bit.
        np.testing.assert_array_equal(got, batch)
    else:  # Weights: float32 rounding differs between one row and a batch.
        np.testing.assert_allclose(got, batch, rtol=0, atol=1e-5)


def test_particle_filter_probabilities(tiny_fitted, tiny_data):
    """Valid probabilities, the same in any blocks of time and chunks of sequences,
    and moved by the prior's weight."""
    from nldseg._validation import Sequences

    X_test = tiny_data[1]
    parts = [np.concatenate(list(X_test[:3])), X_test[4, :1], X_test[5, :40]]
    parts = [np.asarray(p, dtype=np.float32) for p in parts]
    raw = Sequences(np.concatenate(parts), np.array([len(p) for p in parts]), "list")
    seg = _particles(tiny_fitted)
    seqs = seg._prepare(raw.data, raw.lengths)
    filt = seg._filter()
    whole = filt.proba(seqs)
    assert whole.shape == (len(seqs.data), 3)
    assert np.all(whole >= 0) and np.allclose(whole.sum(1), 1.0, rtol=0, atol=1e-12)
    assert len(np.unique(whole.argmax(1))) >= 2  # labels that can differ
    for block_steps in [1, 7]:
        np.testing.assert_array_equal(filt.proba(seqs, block_steps=block_steps), whole)
    one_at_a_time = filt.proba(seqs, chunk_rows=1)
    # Equal up to float32 rounding, which a batch of other sequences changes;
    # in a long sequence such a difference can change one resampling, after
    # which the two differ by Monte-Carlo noise (documented in the estimator's
    # Notes). So: each sequence's first 50 steps agree to 1e-5 (a sequence
    # reading another's draws would differ at once), and nearly all labels.
    close = np.abs(one_at_a_time - whole).max(1) <= 1e-5
    starts = np.concatenate([[0], np.cumsum(raw.lengths)[:-1]])
    for a, n in zip(starts, raw.lengths):
        assert close[a:a + min(n, 50)].all()
    assert np.mean(one_at_a_time.argmax(1) == whole.argmax(1)) >= 0.95
    plain = copy.copy(seg).set_params(prior_weight=1.0)._filter().proba(seqs)
    assert np.abs(plain - whole).max() > 0.05
    paths = _paths_only(tiny_fitted).predict_proba(raw.data, lengths=raw.lengths)
    assert np.abs(paths - whole).max() > 0.05


def test_stream_accepts_row_shapes_and_reset(tiny_fitted, tiny_data):
    x = tiny_data[1][1]
    stream = tiny_fitted.stream()
    first = [stream.update(x_t[None, :]) for x_t in x]
    stream.reset()
    assert stream.n_steps_ == 0
    again = [stream.update(list(x_t)) for x_t in x]
    assert len({label for label, _ in first}) >= 2
    for (la, pa), (lb, pb) in zip(first, again):
        assert la == lb and isinstance(la, int)
        np.testing.assert_array_equal(pa, pb)


F = 8  # features of the tiny fitted model


@pytest.mark.parametrize("bad, err, match", [
    (np.zeros(F - 1), ValueError, rf"shape \({F},\)"),
    (np.zeros((2, F)), ValueError, rf"shape \({F},\)"),
    (np.full(F, np.nan), ValueError, "NaN or infinity"),
    (np.full(F, np.inf), ValueError, "NaN or infinity"),
    (np.full(F, 1e30), ValueError, "magnitude"),
    (np.array(["a"] * F), TypeError, "numeric"),
    (np.ones(F) * 1j, TypeError, "numeric"),
])
def test_bad_observation_raises_and_keeps_state(tiny_fitted, tiny_data, bad, err,
                                                match):
    x = tiny_data[1][2]
    ref = tiny_fitted.stream()
    expected = [ref.update(x_t) for x_t in x]
    assert len({label for label, _ in expected}) >= 2
    stream = tiny_fitted.stream()
    for x_t in x[:2]:
        stream.update(x_t)
    with pytest.raises(err, match=match):
        stream.update(bad)
    assert stream.n_steps_ == 2
    for t in range(2, len(x)):
        label, proba = stream.update(x[t])
        assert label == expected[t][0]
        np.testing.assert_array_equal(proba, expected[t][1])


def test_stream_needs_fitted_model():
    from sklearn.exceptions import NotFittedError

    from nldseg import LangevinSegmenter
    with pytest.raises(NotFittedError):
        LangevinSegmenter().stream()


def test_sampler_draws_the_same_numbers_for_every_sequence(tiny_fitted, tiny_data):
    """Common random numbers: a sequence's paths ignore its neighbours and chunks."""
    from nldseg._inference import PosteriorSampler
    from nldseg._validation import Sequences

    seqs = [np.asarray(s, dtype=np.float32) for s in tiny_data[1][:3]]
    seqs[1] = seqs[1][:17]

    def paths(parts, seed=5, chunk_rows=4096):
        sampler = PosteriorSampler(tiny_fitted.module_, tiny_fitted.dt, 3, seed=seed)
        packed = Sequences(np.concatenate(parts), np.array([len(p) for p in parts]),
                           "list")
        return packed.split(sampler.latent_paths(packed, chunk_rows=chunk_rows))

    together = paths(seqs)
    assert together[0].shape == (len(seqs[0]), 3, tiny_fitted.module_.state_dim)
    # The same draws; other batch sizes only change the matrix products' rounding.
    for i, seq in enumerate(seqs):
        np.testing.assert_allclose(paths([seq])[0], together[i], rtol=1e-5, atol=1e-5)
    for got, want in zip(paths(seqs, chunk_rows=3), together):  # One per chunk.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A prefix has the paths of the whole sequence's first steps, bit for bit.
    alone = paths([seqs[0]])[0]
    np.testing.assert_array_equal(paths([seqs[0][:9]])[0], alone[:9])
    assert np.abs(paths([seqs[0]], seed=6)[0] - alone).max() > 0.1


def test_independent_draws_give_each_sequence_its_own_paths(tiny_fitted, tiny_data):
    """``independent=True``: one sequence given many times gets many paths.

    The shared draws give every copy the same path, so a statistic over the
    copies (the wells' shares) is that of one draw; independent draws spread
    over the posterior, deterministically for a seed and whatever the blocks.
    """
    from nldseg._inference import PosteriorSampler
    from nldseg._validation import Sequences

    seq = np.asarray(tiny_data[1][0], dtype=np.float32)
    copies = Sequences(np.concatenate([seq] * 40), np.full(40, len(seq)), "list")
    sampler = PosteriorSampler(tiny_fitted.module_, tiny_fitted.dt, 1, seed=5)
    d = tiny_fitted.module_.latent_dim
    shared = copies.split(sampler.latent_paths(copies)[:, 0, :d])
    for path in shared[1:]:
        np.testing.assert_allclose(path, shared[0], rtol=1e-5, atol=1e-5)
    own = sampler.latent_paths(copies, independent=True)
    paths = np.stack(copies.split(own[:, 0, :d]))  # (40, T, d)
    assert paths.std(0).mean() > 0.05  # The copies' paths differ.
    np.testing.assert_array_equal(sampler.latent_paths(copies, independent=True), own)
    np.testing.assert_array_equal(
        sampler.latent_paths(copies, independent=True, block_steps=7), own)
    # The mean over 40 independent paths is nearer the mean over 40 others than
    # one shared path is (the shares of a fit's statistics rest on this).
    again = PosteriorSampler(tiny_fitted.module_, tiny_fitted.dt, 1, seed=7)
    other_mean = np.stack(copies.split(again.latent_paths(
        copies, independent=True)[:, 0, :d])).mean(0)
    assert (np.abs(paths.mean(0) - other_mean).mean()
            < np.abs(shared[0] - other_mean).mean())


def test_blocks_of_time_give_the_paths_of_one_piece(tiny_fitted, tiny_data):
    """A long sequence is simulated in blocks of time, with the same result."""
    from nldseg._inference import PosteriorSampler
    from nldseg._validation import Sequences

    X_test = tiny_data[1]
    parts = [np.concatenate(list(X_test)), X_test[1, :1], X_test[2, :23]]
    parts = [np.asarray(p, dtype=np.float32) for p in parts]
    seqs = Sequences(np.concatenate(parts), np.array([len(p) for p in parts]), "list")
    sampler = PosteriorSampler(tiny_fitted.module_, tiny_fitted.dt, 3, seed=5)
    whole = sampler.latent_paths(seqs, block_steps=10**6)
    for block_steps in [1, 7, 64]:
        np.testing.assert_array_equal(
            sampler.latent_paths(seqs, block_steps=block_steps), whole)
        shapes = [x.shape[1] for _, _, x, *_ in sampler.blocks(seqs,
                                                              block_steps=block_steps)]
        assert max(shapes) <= block_steps  # memory bounded by the block
        assert len(shapes) == -(-len(parts[0]) // block_steps)
    one = sampler.elbo_sum(seqs, block_steps=10**6)
    for block_steps in [1, 7]:
        assert sampler.elbo_sum(seqs, block_steps=block_steps) == pytest.approx(one,
                                                                                rel=1e-6)
    # The estimator's probabilities of a 300-step sequence, in blocks of 7 steps.
    seg = _paths_only(tiny_fitted)
    long_seq = seg._prepare(parts[0], None)  # standardised, as predict does
    d = seg.module_.latent_dim
    proba = seg._sampler().map_paths(
        long_seq, lambda z: seg.energy_.state_fractions(z[..., :d]), (3,),
        np.float64, block_steps=7)
    want = seg.predict_proba(parts[0])
    assert len(np.unique(want.argmax(1))) >= 2  # labels that can differ
    np.testing.assert_array_equal(proba, want)


def test_landscape_codes_encode_whole_sequences_up_to_the_budget(tiny_fitted, tiny_data):
    """The wells are found from whole training sequences, drawn until the budget."""
    from nldseg._inference import PosteriorSampler
    from nldseg._validation import Sequences

    parts = [np.asarray(s, dtype=np.float32) for s in tiny_data[1][:6]]
    parts[2] = parts[2][:11]
    lengths = np.array([len(p) for p in parts])
    seqs = Sequences(np.concatenate(parts), lengths, "list")
    sampler = PosteriorSampler(tiny_fitted.module_, tiny_fitted.dt, 1, seed=3)
    d = tiny_fitted.module_.latent_dim

    everything = sampler.landscape_codes(seqs, np.random.default_rng(0), budget=10**9)
    want = sampler.latent_paths(seqs, independent=True)[:, 0, :d]
    np.testing.assert_array_equal(everything, want)  # All, in their own order.

    budget = int(lengths[0]) + 1  # More than one sequence, fewer than all.
    rng = np.random.default_rng(1)
    order = np.random.default_rng(1).permutation(len(parts))
    some = sampler.landscape_codes(seqs, rng, budget=budget)
    taken = np.cumsum(lengths[order])
    n_taken = int(np.searchsorted(taken, budget)) + 1  # Stop once the budget is spent.
    chosen = sorted(order[:n_taken])
    assert some.shape == (lengths[chosen].sum(), d)
    assert 1 < len(chosen) < len(parts)
    sub = Sequences(np.concatenate([parts[i] for i in chosen]), lengths[chosen], "list")
    np.testing.assert_array_equal(
        some, sampler.latent_paths(sub, independent=True)[:, 0, :d])


def test_landscape_codes_take_pieces_spread_over_a_recording_longer_than_the_budget(
        tiny_fitted):
    """One long recording: the budget counts steps, taken from its whole span."""
    from nldseg._inference import PosteriorSampler
    from nldseg._validation import Sequences

    rng = np.random.default_rng(0)
    long = rng.normal(size=(5000, tiny_fitted.n_features_in_)).astype(np.float32)
    short = rng.normal(size=(30, tiny_fitted.n_features_in_)).astype(np.float32)
    sampler = PosteriorSampler(tiny_fitted.module_, tiny_fitted.dt, 1, seed=3)
    d = tiny_fitted.module_.latent_dim
    seqs = Sequences(long, np.array([5000]), "list")
    codes = sampler.landscape_codes(seqs, np.random.default_rng(0), budget=1000,
                                    piece=300)
    # ceil(1000 / 300) = 4 pieces of 300 steps, centred at 1/8, 3/8, 5/8, 7/8.
    starts = [475, 1725, 2975, 4225]
    pieces = Sequences(np.concatenate([long[a:a + 300] for a in starts]),
                       np.full(4, 300), "list")
    np.testing.assert_array_equal(codes,
                                  sampler.latent_paths(pieces, independent=True)[:, 0, :d])
    # A sequence that fits the budget left is still taken whole; the long one
    # then gives ceil(970 / 300) = 4 pieces at the same places.
    both = Sequences(np.concatenate([short, long]), np.array([30, 5000]), "list")
    assert np.random.default_rng(0).permutation(2)[0] == 0  # The short one first.
    codes = sampler.landscape_codes(both, np.random.default_rng(0), budget=1000,
                                    piece=300)
    parts = [short] + [long[a:a + 300] for a in starts]
    want = Sequences(np.concatenate(parts), np.array([30, 300, 300, 300, 300]), "list")
    np.testing.assert_array_equal(
        codes, sampler.latent_paths(want, independent=True)[:, 0, :d])


@pytest.mark.parametrize("inference", ["markov", "filter"])
def test_filters_on_an_observation_far_beyond_the_data(tiny_fitted, tiny_data, inference):
    """A spike at the largest magnitude accepted: finite probabilities, same labels."""
    tiny_fitted = copy.copy(tiny_fitted).set_params(inference=inference)
    x = np.array(tiny_data[1][0], dtype=np.float64)
    x[30, 2] = 1e15  # the largest magnitude the input checks accept
    proba = tiny_fitted.predict_proba(x)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=0, atol=1e-12)
    # Before the spike nothing changed; the stream gives the same labels.
    np.testing.assert_array_equal(proba[:30], tiny_fitted.predict_proba(x[:30]))
    stream = tiny_fitted.stream()
    labels = [stream.update(x_t)[0] for x_t in x]
    np.testing.assert_array_equal(labels, tiny_fitted.predict(x))


def test_particle_filter_weights_stay_finite_when_the_likelihood_is_not(tiny_fitted,
                                                                       tiny_data,
                                                                       monkeypatch):
    """NaN likelihoods weigh 0; a step where no particle is finite is not weighed."""
    module = tiny_fitted.module_
    original = module.decode_log_prob
    calls = {"n": 0}

    def broken(x, z, n_paths=1, given=0):
        out = original(x, z, n_paths, given)
        calls["n"] += 1
        if calls["n"] == 6:  # every particle impossible at this step
            return torch.full_like(out, -math.inf)
        if calls["n"] == 8:  # some particles not a number
            out = out.clone()
            out[..., ::3] = math.nan
        return out

    monkeypatch.setattr(module, "decode_log_prob", broken)
    x = np.asarray(tiny_data[1][0][:20], dtype=np.float64)
    proba = _particles(tiny_fitted).predict_proba(x)
    assert calls["n"] == 20
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=0, atol=1e-12)


def _held_by_loop(proba, margin, previous=None, hold=0):
    """The hysteresis rule written as the plain loop over steps: a state that
    leads on ``hold + 1`` consecutive steps takes the label."""
    labels, current, candidate, run = [], previous, -1, 0
    for row in proba:
        best = int(row.argmax())
        if current is None:
            current = best
        elif best != current and row[best] - row[current] > margin:
            run = run + 1 if best == candidate else 1
            candidate = best
            if run > hold:
                current, candidate, run = best, -1, 0
        else:
            candidate, run = -1, 0
        labels.append(current)
    return np.array(labels, dtype=np.int64)


def test_hysteresis_labels_hold_the_current_state_until_another_leads():
    proba = np.array([[0.9, 0.1], [0.45, 0.55], [0.36, 0.64], [0.2, 0.8],
                      [0.55, 0.45], [0.61, 0.39], [0.7, 0.3]])
    np.testing.assert_array_equal(hysteresis_labels(proba, 0.0), proba.argmax(1))
    # 0.55 - 0.45 and 0.64 - 0.36 are within 0.3 of the current state; 0.8 - 0.2 is not.
    np.testing.assert_array_equal(hysteresis_labels(proba, 0.3), [0, 0, 0, 1, 1, 1, 0])
    # A stream's step carries the label of the step before.
    np.testing.assert_array_equal(hysteresis_labels(proba[1:2], 0.3, previous=0), [0])
    np.testing.assert_array_equal(hysteresis_labels(proba[1:2], 0.3), [1])
    assert hysteresis_labels(np.zeros((0, 3)), 0.2).shape == (0,)


def test_a_hold_drops_visits_shorter_than_it_and_delays_switches_by_it():
    """A state that leads for one step is no switch with ``hold=1``; one that
    keeps leading takes the label exactly ``hold`` steps after it began."""
    k = 3
    states = [0] * 5 + [1] + [2] * 10 + [1, 1] + [2] * 4
    proba = 0.05 + 0.85 * np.eye(k)[states]
    np.testing.assert_array_equal(hysteresis_labels(proba, 0.2), states)
    held = hysteresis_labels(proba, 0.2, hold=1)
    # The one-step visit to 1 is dropped; the switch to 2 comes one step late;
    # the two-step return to 1 is a switch (at its second step).
    np.testing.assert_array_equal(
        held, [0] * 5 + [0, 0] + [2] * 9 + [2, 1] + [1] + [2] * 3)
    # With hold=2 the two-step return to 1 is dropped too.
    np.testing.assert_array_equal(hysteresis_labels(proba, 0.2, hold=2),
                                  [0] * 8 + [2] * 14)
    # The lead must be by the same state on consecutive steps.
    alternating = 0.05 + 0.85 * np.eye(k)[[0, 1, 2, 1, 2, 1, 2]]
    np.testing.assert_array_equal(hysteresis_labels(alternating, 0.2, hold=1), [0] * 7)
    # A hold longer than the sequence: no switch, and where it stands is carried.
    labels, state = held_labels(proba[:8], 0.2, hold=50)
    np.testing.assert_array_equal(labels, [0] * 8)
    assert state == LabelState(0, 2, 2)


def test_held_labels_carry_their_state_across_pieces():
    """Labelling a sequence piece by piece, carrying ``LabelState`` (as a stream
    does one row at a time), gives the labels of one call."""
    rng = np.random.default_rng(1)
    n, k = 3000, 4
    sticky = np.repeat(rng.integers(k, size=n // 20 + 1), 20)[:n]
    proba = rng.dirichlet(np.ones(k), size=n) + 1.5 * np.eye(k)[sticky]
    proba /= proba.sum(1, keepdims=True)
    for margin, hold in ((0.0, 0), (0.2, 0), (0.2, 3), (0.0, 2), (0.5, 7)):
        whole, end = held_labels(proba, margin, hold)
        cuts = np.sort(rng.choice(np.arange(1, n), size=40, replace=False))
        pieces, state = [], None
        for piece in np.split(proba, cuts):
            labels, state = held_labels(piece, margin, hold, state)
            pieces.append(labels)
        np.testing.assert_array_equal(np.concatenate(pieces), whole)
        assert state == end
        rows, state = [], None
        for row in proba[:300]:
            labels, state = held_labels(row[None], margin, hold, state)
            rows.append(int(labels[0]))
        np.testing.assert_array_equal(rows, whole[:300])


@pytest.mark.parametrize("hold", [0, 1, 4])
@pytest.mark.parametrize("margin", [0.0, 0.05, 0.3, 0.9])
def test_hysteresis_labels_equal_the_loop_and_stay_online(margin, hold):
    """Long random sequences (the block scan) against the loop; a prefix's labels
    are the first labels of the whole; never more changes than the argmax."""
    rng = np.random.default_rng(0)
    for n, k in ((1, 1), (7, 3), (5000, 4), (20000, 2)):
        sticky = np.repeat(rng.integers(k, size=n // 50 + 1), 50)[:n]
        proba = rng.dirichlet(np.ones(k), size=n) + 2.0 * np.eye(k)[sticky]
        proba /= proba.sum(1, keepdims=True)
        labels = hysteresis_labels(proba, margin, hold=hold)
        np.testing.assert_array_equal(labels, _held_by_loop(proba, margin, hold=hold))
        np.testing.assert_array_equal(hysteresis_labels(proba[:n // 3], margin, hold=hold),
                                      labels[:n // 3])
        assert (np.diff(labels) != 0).sum() <= (np.diff(proba.argmax(1)) != 0).sum()
        previous = int(rng.integers(k))
        np.testing.assert_array_equal(hysteresis_labels(proba, margin, previous, hold),
                                      _held_by_loop(proba, margin, previous, hold))
