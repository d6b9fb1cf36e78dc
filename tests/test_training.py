"""The training loop's pieces, tested directly: windows, schedule, KL weight, rollback."""

import sys

import numpy as np
import pytest
import torch

from nldseg._model import NeuralLangevinVAE
from nldseg._training import (
    LR_FLOOR,
    MAX_HELD_BLOCKS,
    RollbackSnapshot,
    _ProgressBar,
    kl_weight,
    lr_multiplier,
    pad_leads,
    refine_depths,
    sample_windows,
    segment_first_rows,
    split_validation,
)


def _segments(lengths):
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [(int(a), int(n)) for a, n in zip(starts, lengths)]


def test_leads_are_the_rows_before_each_window_within_its_segment():
    data = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 2)
    segments = [(0, 10), (10, 25), (35, 5)]
    first = segment_first_rows(40, segments)
    assert first.tolist() == [0] * 10 + [10] * 25 + [35] * 5
    windows = [(13, 6), (0, 10), (30, 5), (35, 3)]
    frames, lengths = pad_leads(data, windows, first, 8, "cpu")
    assert frames.shape == (4, 8, 2) and lengths.tolist() == [3, 0, 8, 0]
    # Each window's earlier rows, in order, from the first column.
    assert frames[0, :3, 0].tolist() == [10, 11, 12]
    assert frames[2, :, 0].tolist() == list(range(22, 30))
    # Never a row of another segment, never more than ``lead``.
    frames, lengths = pad_leads(data, windows, first, 2, "cpu")
    assert lengths.tolist() == [2, 0, 2, 0] and frames[0, :, 0].tolist() == [11, 12]
    assert pad_leads(data, [(0, 10), (35, 3)], first, 8, "cpu") is None
    assert pad_leads(data, windows, first, 0, "cpu") is None


@pytest.mark.parametrize("grad", [True, False])
def test_a_window_read_after_its_lead_continues_the_whole_sequence(grad):
    """The encoder's state before a window is the one a whole-sequence pass has."""
    m = NeuralLangevinVAE(3, 3, "overdamped", 16, 8, 1.0, 1.0, 1.0, False,
                          encoder_input="quadratic")
    x = torch.randn(3, 30, 3, generator=torch.Generator().manual_seed(0))
    # Row 0 reads 10 steps before its window; row 1's sequence starts 6 steps
    # before (its frames x[1, 4:10], then padding); row 2's at the window.
    lead = torch.stack([x[0, :10], torch.cat([x[1, 4:10], x[1, :4]]), x[2, :10]])
    with torch.set_grad_enabled(grad):
        h_init = m.encoder_state(lead, torch.tensor([10, 6, 0]))
        h, mean, _ = m._encode_hidden(x[:, 10:], h_init)
        whole, _, _ = m._encode_hidden(x[:1])
        late, _, _ = m._encode_hidden(x[1:2, 4:])
        fresh, _, _ = m._encode_hidden(x[2:, 10:])
    assert not h_init.requires_grad and not h_init[2].any()
    torch.testing.assert_close(h[0], whole[0, 10:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h[1], late[0, 6:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h[2], fresh[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean, m.initial_codes(x[:, 10], h_init)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [7, 50, None])
def test_windows_tile_every_sequence_without_overlap(window):
    lengths = np.array([30, 1, 2, 55, 7])
    windows = sample_windows(_segments(lengths), window, np.random.default_rng(0))
    covered = np.zeros(lengths.sum(), dtype=int)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for start, n in windows:
        covered[start:start + n] += 1
        seq = np.searchsorted(starts, start, side="right") - 1
        assert start + n <= starts[seq] + lengths[seq]  # Never crosses sequences.
        if window is not None and lengths[seq] > window:
            assert 2 <= n <= window
    assert covered.max() == 1  # No step twice.
    if window is None:  # Whole sequences, but none of a single step.
        assert sorted(windows) == sorted((a, n) for a, n in zip(starts, lengths)
                                         if n >= 2)
    else:
        # Only pieces of one step (no transition) of a cut sequence are left out.
        assert covered.sum() >= lengths.sum() - 2 * (lengths > window).sum()


def test_windows_are_shuffled_and_reproducible():
    segments = _segments(np.full(20, 100))
    a = sample_windows(segments, 10, np.random.default_rng(3))
    b = sample_windows(segments, 10, np.random.default_rng(3))
    c = sample_windows(segments, 10, np.random.default_rng(4))
    assert a == b and a != c
    assert [s for s, _ in a] != sorted(s for s, _ in a)


def test_learning_rate_holds_then_anneals_along_half_a_cosine():
    assert [lr_multiplier(s, 100, 50) for s in (0, 50, 99)] == [1.0] * 3
    assert lr_multiplier(124, 100, 50) == pytest.approx(LR_FLOOR + (1 - LR_FLOOR) / 2)
    assert lr_multiplier(149, 100, 50) == pytest.approx(LR_FLOOR)  # the last step
    assert lr_multiplier(400, 100, 50) == pytest.approx(LR_FLOOR)
    values = [lr_multiplier(s, 100, 50) for s in range(99, 150)]
    assert all(b < a for a, b in zip(values, values[1:]))
    assert {lr_multiplier(s, 0, 0) for s in range(0, 300, 7)} == {1.0}  # constant


def test_validation_holds_out_whole_sequences_or_the_end_of_each():
    rng = np.random.default_rng(0)
    many = np.full(30, 50)
    train, val = split_validation(many, 0.1, rng)
    assert len(val) == 3 and len(train) == 27
    assert sorted(train + val) == _segments(many)
    few = np.array([1000, 300, 15])
    train, val = split_validation(few, 0.1, rng)
    # The last tenth of each sequence of 20 steps or more; short ones all train.
    assert val == [(900, 100), (1270, 30)]
    assert train == [(0, 900), (1000, 270), (1300, 15)]
    assert split_validation(few, 0.0, rng) == (_segments(few), [])


def test_a_long_recording_is_held_out_in_blocks_spread_over_it():
    rng = np.random.default_rng(0)
    lengths = np.array([8000, 300])
    train, val = split_validation(lengths, 0.1, rng, window_length=50)
    # Train and held-out segments tile every sequence without overlap.
    rows = np.zeros(8300, dtype=int)
    for a, n in train + val:
        rows[a:a + n] += 1
    assert (rows == 1).all()
    first = [(a, n) for a, n in val if a < 8000]
    # The 8,000 steps: 800 held out as 8 blocks of 100 (two windows each), one
    # at the end of each eighth; 300 steps hold out 30, too few for two blocks.
    assert first == [(1000 * j + 900, 100) for j in range(8)]
    assert [(a, n) for a, n in val if a >= 8000] == [(8270, 30)]
    # A state held only in the first half is judged too (not only the end).
    assert any(a + n <= 4000 for a, n in first)
    # At most MAX_HELD_BLOCKS blocks; whole-sequence training keeps the end.
    _, val = split_validation(np.array([50_000]), 0.1, rng, window_length=50)
    assert len(val) == MAX_HELD_BLOCKS and sum(n for _, n in val) == 5000
    assert split_validation(np.array([8000]), 0.1, rng, window_length=None) == (
        [(0, 7200)], [(7200, 800)])


def test_kl_weight_rises_linearly_to_one():
    assert [kl_weight(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0


def test_rollback_snapshot_restores_parameters_and_adam_state_exactly():
    torch.manual_seed(0)
    m = NeuralLangevinVAE(4, 2, "underdamped", 8, 4, 1.0, 1.0, 1.0, True)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    snap = RollbackSnapshot(m, opt)

    def step():
        opt.zero_grad()
        sum((p * p).sum() for p in params).backward()
        opt.step()

    snap.take(m, opt)  # Before the first update: Adam has no state yet.
    step()
    snap.restore(m, opt)
    assert not opt.state
    for saved, p in zip(snap.parameters(), m.parameters()):
        torch.testing.assert_close(p, saved, rtol=0, atol=0)
    step()
    step()
    want_params = [p.detach().clone() for p in m.parameters()]
    want_state = {k: {n: v.clone() for n, v in st.items()} for k, st in opt.state.items()}
    snap.take(m, opt)
    step()  # The update to undo.
    snap.restore(m, opt)
    for p, want in zip(m.parameters(), want_params):
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=0)
    for p, st in opt.state.items():
        for name, value in st.items():
            torch.testing.assert_close(value, want_state[p][name], rtol=0, atol=0)


def test_progress_bar(capsys):
    bar = _ProgressBar(2)
    bar.show(5, 10, 1.5, elapsed=0.5)  # Short fits show no bar.
    assert capsys.readouterr().err == ""
    bar.show(5, 10, 1.5, elapsed=2.0)
    err = capsys.readouterr().err
    assert "Step 5/10 [" + "#" * 15 + "." * 15 + "] loss 1.5000" in err
    bar.clear()
    assert capsys.readouterr().err.startswith("\r ")
    # verbose=1 draws the bar only on a terminal (pytest's stderr is not one).
    assert not _ProgressBar(1).enabled and not _ProgressBar(0).enabled


@pytest.mark.parametrize("threshold, moves", [(float("inf"), False), (-1.0, True)])
def test_latent_noise_is_held_while_the_posterior_is_collapsed(monkeypatch, threshold,
                                                               moves):
    """Held, the noise's dependence on the latent state stays at its start."""
    import warnings

    from nldseg import LangevinSegmenter
    from nldseg.datasets import make_markov_chain_sequences

    monkeypatch.setattr("nldseg._training.KL_COLLAPSED", threshold)
    X, _ = make_markov_chain_sequences(20, 30, n_features=3, random_state=0)
    kw = dict(hidden_size=8, context_size=4, max_iter=30, kl_warmup=5,
              early_stopping=False, random_state=0, decoder_covariance="latent",
              n_jobs=1)  # The constant is patched in this process only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(**kw).fit(X)
    m = seg.module_
    assert m.dec_prec_lower.abs().sum() > 0  # The shared part always trains.
    held = [m.dec_noise_lower, m.dec_noise_diag.weight, m.dec_noise_diag.bias]
    assert all(bool((p != 0).any()) is moves for p in held)


def _restart_setup(n_models, seed=0):
    """Tiny data on 12 sequences (one held out) and ``n_models`` fresh models."""
    from nldseg import LangevinSegmenter
    from nldseg._model import build_model
    from nldseg._training import TrainingSettings
    from nldseg.datasets import make_markov_chain_sequences

    X, _ = make_markov_chain_sequences(12, 40, n_features=3, random_state=seed)
    params = dict(LangevinSegmenter().get_params(), hidden_size=8, context_size=4,
                  window_length=20, batch_size=8, max_iter=80, kl_warmup=10,
                  n_iter_no_change=2, n_lags=0, n_paths=2)
    data = torch.as_tensor(X.reshape(-1, 3), dtype=torch.float32)
    models = []
    for i in range(n_models):
        torch.manual_seed(100 + i)
        models.append(build_model(3, params))
    return models, data, np.full(12, 40), TrainingSettings.from_params(params)


def test_restarts_are_judged_on_their_held_out_elbo_and_the_best_is_annealed():
    import warnings

    from nldseg._training import train

    # A second model that cannot learn (all but one parameter frozen) must lose,
    # whichever place it takes.
    for order in ([0, 1], [1, 0]):
        models, data, lengths, s = _restart_setup(2)
        frozen = models[1]
        for p in list(frozen.parameters())[1:]:
            p.requires_grad_(False)
        before = [p.detach().clone() for p in frozen.parameters()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train([models[i] for i in order], data, lengths, s,
                           torch.device("cpu"), seed=3)
        assert len(result.restart_scores) == 2
        assert result.kept == order.index(0)
        assert result.restart_scores[result.kept] > result.restart_scores[1 - result.kept]
        # The kept run's score is the mean of its last n_iter_no_change checks
        # when the runs were compared: at its plateau or at half the budget.
        vs, n = result.validation_scores, s.n_iter_no_change
        at = min(len(vs), s.max_iter // 2 // s.validation_interval)
        assert result.restart_scores[result.kept] == pytest.approx(
            np.mean(vs[max(0, at - n):at]))
        # It then trained on alone (checks stop when the annealing begins).
        assert result.n_iter > len(vs) * s.validation_interval
        assert all(torch.equal(a, b) for a, b in
                   zip(before[1:], list(frozen.parameters())[1:]))


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_the_first_restart_draws_what_a_single_fit_draws(n_jobs):
    """Restarts add runs; the first is the single fit, draw for draw, also
    when the restarts train side by side in worker processes (and come back
    into the models given)."""
    import warnings
    from dataclasses import replace

    from nldseg._threads import torch_threads
    from nldseg._training import train

    with warnings.catch_warnings(), torch_threads(1):
        warnings.simplefilter("ignore")
        one = train(*_restart_setup(1), torch.device("cpu"), seed=5)
        models, data, lengths, s = _restart_setup(3)
        before = [p.detach().clone() for p in models[0].parameters()]
        three = train(models, data, lengths, replace(s, n_jobs=n_jobs),
                      torch.device("cpu"), seed=5)
    assert one.kept == 0 and len(one.restart_scores) == 1
    assert three.restart_scores[0] == one.restart_scores[0]
    assert len(set(three.restart_scores)) == 3  # Each run has its own draws.
    trained = list(models[three.kept].parameters())
    assert not all(torch.equal(a, b) for a, b in zip(trained, before))
    if three.kept == 0:
        assert three.loss_curve == one.loss_curve


class _FixedHeldOut:
    """Stands in for a held-out set whose per-window ELBOs are given."""

    def __init__(self, elbos, steps):
        self.elbos, self.steps = np.asarray(elbos, float), np.asarray(steps, float)

    def window_elbos(self, module, replicas):
        return self.elbos, self.steps


def test_level_gain_is_the_paired_gain_per_step_and_its_standard_error():
    from nldseg._distributed import SINGLE
    from nldseg._training import _level_gain

    rng = np.random.default_rng(0)
    ref = rng.normal(-500.0, 40.0, size=64)  # Windows of 50 steps.
    diff = rng.normal(5.0, 2.0, size=64)     # 0.1 per step, spread 0.04.
    steps = np.full(64, 50.0)
    gain, se = _level_gain(None, _FixedHeldOut(ref + diff, steps), (ref, steps), SINGLE)
    assert gain == pytest.approx(diff.mean() / 50)
    # Equal windows: the paired t-test's standard error; the windows' own
    # spread (40) does not enter it.
    assert se == pytest.approx(np.std(diff / 50, ddof=1) / 8)
    # Unequal windows weigh by their steps.
    steps = np.array([10.0, 30.0, 60.0])
    gain, se = _level_gain(None, _FixedHeldOut([-9.0, -27.0, -54.0], steps),
                           (np.array([-10.0, -30.0, -60.0]), steps), SINGLE)
    assert gain == pytest.approx(0.1) and se == pytest.approx(0.0, abs=1e-12)
    # One window: no spread to judge by.
    assert _level_gain(None, _FixedHeldOut([1.0], [5.0]),
                       (np.array([0.0]), np.array([5.0])), SINGLE)[1] == np.inf
    with pytest.raises(RuntimeError, match="different held-out windows"):
        _level_gain(None, _FixedHeldOut([1.0, 2.0], [5.0, 5.0]),
                    (np.array([1.0, 2.0]), np.array([5.0, 4.0])), SINGLE)


def test_window_elbos_add_up_to_the_held_out_elbo():
    from nldseg._training import _HeldOut, split_validation

    models, data, lengths, s = _restart_setup(1)
    _, val = split_validation(lengths, 0.25, np.random.default_rng(0))
    held = _HeldOut(models[0], data, val, s, torch.device("cpu"), 1)
    elbos, steps = held.window_elbos(models[0])
    assert len(elbos) == len(steps) > 1 and np.all(steps > 0)
    assert elbos.sum() / steps.sum() == pytest.approx(held.elbo(models[0]), rel=1e-5)


def test_held_out_windows_read_the_steps_before_them(monkeypatch):
    import dataclasses
    import warnings

    from nldseg import _training

    models, data, _, s = _restart_setup(1)
    s = dataclasses.replace(s, max_iter=2, validation_fraction=0.2)
    seen = {}
    real = _training._HeldOut

    def spy(module, x, segments, settings, device, seed, first_rows=None):
        seen.update(segments=segments, first_rows=first_rows)
        return real(module, x, segments, settings, device, seed, first_rows)

    def run_spy(module, x, segments, first_rows, *args):
        seen.update(train_segments=segments, train_first_rows=first_rows)
        return real_run(module, x, segments, first_rows, *args)

    real_run = _training._TrainingRun
    monkeypatch.setattr(_training, "_HeldOut", spy)
    monkeypatch.setattr(_training, "_TrainingRun", run_spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # One recording of 480 steps: held out in two blocks of 48 steps.
        _training.train(models, data, np.array([480]), s, torch.device("cpu"), 0)
    assert seen["segments"] == [(192, 48), (432, 48)]
    # Each block's windows may read back to the recording's start, training
    # rows included, as predict reads them; training windows stop at theirs.
    assert (seen["first_rows"] == 0).all()
    assert seen["train_segments"] == [(0, 192), (240, 192)]
    train_rows = seen["train_first_rows"]
    assert train_rows[240] == 240 and train_rows[431] == 240 and train_rows[100] == 0


@pytest.mark.parametrize("gain, se, kept", [
    (0.50, 0.10, 1),    # Five standard errors better: the lag is kept.
    (0.15, 0.10, 0),    # Higher, but within two standard errors: the simpler.
    (-0.30, 0.10, 0),
])
def test_a_higher_level_is_kept_only_when_clearly_better(gain, se, kept, monkeypatch):
    import warnings

    from nldseg import _training

    monkeypatch.setattr(_training, "_level_gain", lambda *args: (gain, se))
    models, data, lengths, s = _restart_setup(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _training.train(models, [data, data.clone()], lengths, s,
                                 torch.device("cpu"), seed=3, levels=[0, 1])
    assert result.kept == kept and result.level_gain == (gain, se)


@pytest.mark.parametrize("gain", [0.5, -0.3])
def test_finish_rival_trains_the_best_lower_level_model_to_the_end(gain, monkeypatch):
    """With ``finish_rival`` a won higher level leaves the best lowest-level
    model trained to the end too, step for step as if it had been kept (its
    own loss curve, its warnings held back); a lost one finishes nothing
    more."""
    import warnings

    from nldseg import _training

    monkeypatch.setattr(_training, "_level_gain", lambda *args: (gain, 0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models, data, lengths, s = _restart_setup(2)
        alone = _training.train(models[:1], [data], lengths, s, torch.device("cpu"),
                                seed=3)
        alone_params = [p.detach().clone() for p in models[0].parameters()]
        models, data, lengths, s = _restart_setup(2)
        result = _training.train(models, [data, data.clone()], lengths, s,
                                 torch.device("cpu"), seed=3, levels=[0, 1],
                                 finish_rival=True)
    if gain < 0:
        assert result.kept == 0 and result.rival is None and result.rival_result is None
        assert result.loss_curve == alone.loss_curve
        return
    assert result.kept == 1 and result.rival == 0
    assert result.n_iter == len(result.loss_curve) > 0
    assert isinstance(result.finish_warnings, list)
    rival = result.rival_result
    assert rival.loss_curve == alone.loss_curve and rival.n_iter == alone.n_iter
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), alone_params))


@pytest.mark.parametrize("gain, finish_rival", [
    (None, True),    # The gain measured (the lag loses): the early finish is kept.
    (0.5, True),     # The lag wins: the restart that finished early is the rival.
    (0.5, False),    # The lag wins and drops the restart that finished early.
])
def test_the_early_finish_beside_a_higher_level_trains_what_one_process_does(
        gain, finish_rival, monkeypatch):
    """Two restarts and a lag on two workers: the restarts train first, then
    the better one trains to the end beside the lag's comparison. Kept model,
    rival, scores, curves, parameters and warnings are those of one process
    training them one after the other."""
    import warnings
    from dataclasses import replace

    from nldseg import _training

    if gain is not None:
        monkeypatch.setattr(_training, "_level_gain", lambda *args: (gain, 0.1))
    seen, early = {}, []
    real_train_runs = _training._train_runs

    def spy(runs, n_jobs, finishing):
        early.append(n_jobs > 1 and any(finishing) and not all(finishing))
        return real_train_runs(runs, n_jobs, finishing)

    monkeypatch.setattr(_training, "_train_runs", spy)
    for n_jobs in (1, 2):
        models, data, lengths, s = _restart_setup(3)
        # Never converged: finishing warns, and the warning must reach the caller
        # once, when the model that finished early is kept.
        s = replace(s, n_jobs=n_jobs, n_iter_no_change=1000)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _training.train(models, [data, data, data.clone()], lengths, s,
                                     torch.device("cpu"), seed=3, levels=[0, 0, 1],
                                     finish_rival=finish_rival)
        seen[n_jobs] = (result, [[p.detach().clone() for p in m.parameters()]
                                 for m in models],
                        sorted(str(w.message) for w in caught))
    assert early.count(True) == 1  # Only with two workers, once.
    (one, params_one, warned_one), (two, params_two, warned_two) = seen[1], seen[2]
    assert two.kept == one.kept
    if gain is not None:
        assert one.kept == (2 if gain > 0 else int(np.argmax(one.restart_scores[:2])))
        assert one.level_gain == (gain, 0.1)
    else:  # Measured against the better restart before it trained on.
        assert np.isfinite(one.level_gain).all()
    assert two.restart_scores == one.restart_scores
    assert two.loss_curve == one.loss_curve and two.n_iter == one.n_iter
    assert two.level_gain == one.level_gain
    assert two.rival == one.rival
    if one.rival is not None:
        assert two.rival_result.loss_curve == one.rival_result.loss_curve
        assert [str(w.message) for w in two.rival_result.finish_warnings] == \
            [str(w.message) for w in one.rival_result.finish_warnings]
    assert warned_two == warned_one
    assert any("still improving" in w for w in warned_one) == (one.rival is None)
    # The kept model (and the rival) end with the same parameters either way.
    for i in {one.kept, one.rival} - {None}:
        assert all(torch.equal(x, y) for x, y in zip(params_one[i], params_two[i]))


def test_held_back_finish_warnings_are_given_once_with_their_category():
    """The kept model's held-back warnings keep their category and are given
    once, at the line ``stacklevel`` names (2: the caller's)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from nldseg._training import TrainingResult
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        warnings.warn("budget ran out", ConvergenceWarning, stacklevel=1)
        warnings.warn("a note", UserWarning, stacklevel=1)
    result = TrainingResult([1.0], 1, False, finish_warnings=list(held))
    with warnings.catch_warnings(record=True) as given:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        result.give_finish_warnings(stacklevel=2)
        result.give_finish_warnings(stacklevel=2)
    assert [(w.category, str(w.message)) for w in given] == [
        (ConvergenceWarning, "budget ran out"), (UserWarning, "a note")]
    assert all(w.filename == __file__ and w.lineno == line for w in given)
    assert result.finish_warnings == []


def test_without_held_out_data_a_higher_level_needs_a_higher_score():
    import warnings
    from dataclasses import replace

    from nldseg._training import train

    models, data, lengths, s = _restart_setup(2)
    s = replace(s, early_stopping=False)
    for p in list(models[1].parameters())[1:]:
        p.requires_grad_(False)  # The higher level cannot learn: it loses.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(models, data, lengths, s, torch.device("cpu"), seed=3,
                       levels=[0, 1])
    assert result.kept == 0 and np.isnan(result.level_gain).all()


@pytest.mark.parametrize("wins", [True, False])
def test_a_higher_levels_restarts_train_only_when_it_wins(wins, monkeypatch):
    """Levels [0, 0, 1, 1]: the second model of level 1 is trained only if the
    first beats level 0; then the better of the two by score is kept, and the
    gain reported is the kept one's."""
    import warnings

    from nldseg import _training

    asked = []

    def fake_gain(module, held, reference, replicas):
        asked.append(module)
        return (1.0, 0.1) if wins else (0.1, 0.1)

    monkeypatch.setattr(_training, "_level_gain", fake_gain)
    models, data, lengths, s = _restart_setup(4)
    for p in list(models[2].parameters())[1:]:
        p.requires_grad_(False)  # The first model of level 1 cannot learn.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _training.train(models, [data, data, data.clone(), data.clone()],
                                 lengths, s, torch.device("cpu"), seed=3,
                                 levels=[0, 0, 1, 1])
    scores = result.restart_scores
    assert len(scores) == 4 and np.isfinite(scores[:3]).all()
    if wins:
        assert np.isfinite(scores[3]) and scores[3] > scores[2]
        assert result.kept == 3 and asked == [models[2], models[3]]
    else:
        assert np.isnan(scores[3])  # Never trained.
        assert result.kept == int(np.argmax(scores[:2])) and asked == [models[2]]
    assert result.level_gain == ((1.0, 0.1) if wins else (0.1, 0.1))


def test_every_level_warms_its_kl_term_up_alike(monkeypatch):
    """Models reading lags and single-frame models share one warm-up, ``kl_warmup``."""
    import warnings
    from dataclasses import replace

    from nldseg import _training

    warmups = {}
    real = _training.kl_weight

    def spy(step, kl_warmup):
        warmups.setdefault(kl_warmup, 0)
        warmups[kl_warmup] += 1
        return real(step, kl_warmup)

    monkeypatch.setattr(_training, "kl_weight", spy)
    models, data, lengths, s = _restart_setup(2)
    s = replace(s, n_jobs=1)  # The spy is in this process only.
    assert (s.kl_warmup, s.max_iter) == (10, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _training.train(models, [data, data.clone()], lengths, s,
                                 torch.device("cpu"), seed=3, levels=[0, 1])
    assert np.isfinite(result.restart_scores).all()  # Both levels trained.
    assert set(warmups) == {10}, warmups


def test_the_still_improving_warning_gives_the_last_rise_after_the_warm_up():
    """The gain of the last checks over the best before them, warm-up checks left out."""
    from dataclasses import replace

    from nldseg import LangevinSegmenter
    from nldseg._training import TrainingSettings, still_improving_message

    s = TrainingSettings.from_params(dict(LangevinSegmenter().get_params(),
                                          max_iter=3000, kl_warmup=1000))
    assert (s.validation_interval, s.n_iter_no_change) == (100, 5)
    # Checks at steps 100, ..., 1500: the first nine come before the warm-up's
    # end, and their -1.0 beats every later one but must not count.
    scores = [-1.0] * 9 + [-5.0, -4.0, -4.5, -3.9, -3.95, -3.7]
    message = still_improving_message(scores, s)
    # Best of the last 5 (-3.7) against the best of the one before them (-5.0).
    assert "last 5 checks (500 steps) was 1.3 nats per step above" in message
    assert "increase max_iter" in message
    few = still_improving_message(scores[:12], s)  # 3 checks after the warm-up.
    assert "only 3 check(s) of it came after the KL warm-up (kl_warmup=1000)" in few
    # A warm-up ending between two checks: the first check after it (step 1100).
    late = still_improving_message(scores, replace(s, kl_warmup=1050))
    assert "only 5 check(s) of it came after" in late


# ------------------------------------------------------------ the depths' refit
def _one_dim_model():
    torch.manual_seed(0)
    m = NeuralLangevinVAE(2, 1, "overdamped", 16, 4, 1.0, 1.0, 1.0, False)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def test_refine_depths_gives_separated_wells_their_shares(monkeypatch):
    """Maximum likelihood on positions in two clusters, 80 % / 20 %: the
    stationary law puts that mass on each side, and nothing but the energy moves."""
    import nldseg._training as training

    monkeypatch.setattr(training, "DEPTH_LR", 0.02)  # A fresh model, not a trained one.
    m = _one_dim_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rng = np.random.default_rng(1)
    left = rng.random(4000) < 0.8
    q = (np.where(left, -2.0, 2.0) + 0.4 * rng.normal(size=4000))[:, None]
    assert training.refine_depths(m, q, 300, seed=0)
    grid = torch.linspace(-8.0, 8.0, 4001)[:, None]
    with torch.no_grad():
        w = torch.exp(-m.energy(grid).double())
    assert float(w[grid[:, 0] < 0].sum() / w.sum()) == pytest.approx(left.mean(), abs=0.03)
    for k, v in m.state_dict().items():
        if not k.startswith("energy."):
            torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    assert all(not p.requires_grad and p.grad is None for p in m.parameters())


def test_refine_depths_rolls_back_a_non_finite_step(monkeypatch):
    m = _one_dim_model()
    before = [p.clone() for p in m.energy.parameters()]
    monkeypatch.setattr(m, "stationary_nll",
                        lambda q, *args: m.energy(q).mean() * float("nan"))
    q = np.random.default_rng(0).normal(size=(100, 1))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert not refine_depths(m, q, 5, seed=0)
    for a, b in zip(m.energy.parameters(), before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not refine_depths(m, q, 0, seed=0)  # Nothing to do.


@pytest.mark.parametrize("verdict", [True, False])
def test_refine_depths_asks_keep_once_and_undoes_a_refused_refit(verdict):
    """``keep`` sees the refitted energy, with its parameters frozen again;
    refused, the energy is restored to the last bit."""
    m = _one_dim_model()
    before = [p.clone() for p in m.energy.parameters()]
    seen = []

    def keep():
        seen.append([p.clone() for p in m.energy.parameters()])
        assert all(not p.requires_grad for p in m.energy.parameters())
        return verdict

    q = np.random.default_rng(0).normal(size=(200, 1))
    assert refine_depths(m, q, 5, seed=0, keep=keep) is verdict
    assert len(seen) == 1
    assert any(not torch.equal(a, b) for a, b in zip(seen[0], before))  # It moved.
    now = list(m.energy.parameters())
    for a, b in zip(now, before if not verdict else seen[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)



def test_parameter_groups_train_the_degrees_of_freedom_faster():
    """Adam's groups: a Student-t model's degrees of freedom at 10x the rate.

    A Gaussian model keeps one group of every parameter, in order (its
    training unchanged by the groups).
    """
    from nldseg import LangevinSegmenter
    from nldseg._model import STUDENT_DF_LR_FACTOR, build_model
    from nldseg._training import _parameter_groups
    for noise in ("gaussian", "student"):
        module = build_model(4, LangevinSegmenter(n_lags=0, hidden_size=8,
                                                  decoder_noise=noise).get_params())
        params = list(module.parameters())
        groups = _parameter_groups(module, params)
        if noise == "gaussian":
            assert len(groups) == 1 and groups[0]["lr_factor"] == 1.0
            assert all(a is b for a, b in zip(groups[0]["params"], params))
            continue
        assert [g["lr_factor"] for g in groups] == [1.0, STUDENT_DF_LR_FACTOR]
        assert groups[1]["params"] == [module.dec_log_df]
        assert sum(len(g["params"]) for g in groups) == len(params)
        assert all(p is not module.dec_log_df for p in groups[0]["params"])
