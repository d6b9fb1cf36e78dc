"""The training loop's pieces, tested directly: windows, schedule, KL weight, rollback."""

import numpy as np
import pytest
import torch

from nldseg._model import NeuralLangevinVAE
from nldseg._training import (
    LR_FLOOR,
    RollbackSnapshot,
    _ProgressBar,
    kl_weight,
    lr_multiplier,
    sample_windows,
)


@pytest.mark.parametrize("window", [7, 50, None])
def test_windows_tile_every_sequence_without_overlap(window):
    lengths = np.array([30, 1, 2, 55, 7])
    windows = sample_windows(lengths, window, np.random.default_rng(0))
    covered = np.zeros(lengths.sum(), dtype=int)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for start, n in windows:
        covered[start:start + n] += 1
        seq = np.searchsorted(starts, start, side="right") - 1
        assert start + n <= starts[seq] + lengths[seq]  # Never crosses sequences.
        if window is not None and lengths[seq] > window:
            assert 2 <= n <= window
    assert covered.max() == 1  # No step twice.
    if window is None:
        assert sorted(windows) == sorted(zip(starts, lengths))
    else:
        # Only pieces of one step (no transition) of a cut sequence are left out.
        assert covered.sum() >= lengths.sum() - 2 * (lengths > window).sum()


def test_windows_are_shuffled_and_reproducible():
    lengths = np.full(20, 100)
    a = sample_windows(lengths, 10, np.random.default_rng(3))
    b = sample_windows(lengths, 10, np.random.default_rng(3))
    c = sample_windows(lengths, 10, np.random.default_rng(4))
    assert a == b and a != c
    assert [s for s, _ in a] != sorted(s for s, _ in a)


def test_learning_rate_schedules():
    assert lr_multiplier("cosine", 0.0) == 1.0
    assert lr_multiplier("cosine", 1.0) == pytest.approx(LR_FLOOR)
    assert lr_multiplier("cosine", 0.5) == pytest.approx(LR_FLOOR + (1 - LR_FLOOR) / 2)
    grid = np.linspace(0, 1, 11)
    values = [lr_multiplier("cosine", p) for p in grid]
    assert all(b < a for a, b in zip(values, values[1:]))
    assert {lr_multiplier("constant", p) for p in grid} == {1.0}


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
    bar.show(0, 3, 5, 10, 1.5, elapsed=0.5)  # Short epochs show no bar.
    assert capsys.readouterr().err == ""
    bar.show(0, 3, 5, 10, 1.5, elapsed=2.0)
    err = capsys.readouterr().err
    assert "Epoch 1/3 [" + "#" * 15 + "." * 15 + "] 5/10 batches" in err
    bar.clear()
    assert capsys.readouterr().err.startswith("\r ")
    # verbose=1 draws the bar only on a terminal (pytest's stderr is not one).
    assert not _ProgressBar(1).enabled and not _ProgressBar(0).enabled
