"""Data-parallel training: shares of a batch, and two processes under torchrun."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nldseg import LangevinSegmenter
from nldseg._distributed import Replicas, fit_fingerprint
from nldseg._model import build_model
from nldseg._training import (
    BatchShare,
    TrainingSettings,
    gradient_step,
    segment_first_rows,
)
from nldseg.datasets import make_markov_chain_sequences

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from distributed_worker import PARAMS, data  # noqa: E402


def _replica(rank: int, world: int) -> Replicas:
    """A replica that takes its share but does not communicate (sum_ is left
    to the test)."""
    r = Replicas()
    r.rank, r.world_size, r.distributed = rank, world, True
    r.sum_ = lambda tensors: None
    return r


@pytest.mark.parametrize("n, world", [(7, 2), (2, 3), (64, 4), (0, 2), (5, 1)])
def test_rows_split_a_batch_exactly(n, world):
    taken = []
    for rank in range(world):
        r = Replicas()
        r.rank, r.world_size = rank, world
        rows = r.rows(n)
        taken.extend(range(n)[rows])
        assert rows.stop - rows.start in (n // world, n // world + 1)
    assert taken == list(range(n))


def _training_setup(n_sequences: int) -> tuple:
    """Sequences of 40 steps end to end, their first rows, and a small model to train."""
    X, _ = make_markov_chain_sequences(n_sequences, 40, n_features=3, random_state=0)
    data = torch.as_tensor(X.reshape(-1, 3), dtype=torch.float32)
    first_rows = segment_first_rows(len(data), [(40 * i, 40) for i in range(n_sequences)])
    settings = TrainingSettings.from_params(LangevinSegmenter().get_params())
    module = build_model(3, dict(LangevinSegmenter(hidden_size=8, n_lags=0).get_params()))
    params = list(module.parameters())
    return data, first_rows, settings, module, params, torch.optim.Adam(params)


@pytest.mark.parametrize("lead", [0, 10])
def test_shares_add_up_to_the_whole_batch(monkeypatch, lead):
    """Two shares' losses and gradients sum to the one-process step's.

    With ``lead``, windows not at a sequence start read up to that many
    earlier observations first (none for (0, 40), 5 for (45, 20)).
    """
    monkeypatch.setattr("nldseg._training.CLIP_NORM", float("inf"))
    data, first_rows, settings, module, params, opt = _training_setup(6)
    windows = [(0, 40), (45, 20), (90, 33), (130, 40), (170, 7), (200, 18), (230, 2)]

    def step(share, replicas):
        gen = torch.Generator().manual_seed(3)
        loss, _, finite = gradient_step(module, params, opt, share, gen, settings,
                                        0.5, replicas)
        assert finite
        return loss, [None if p.grad is None else p.grad.clone() for p in params]

    hold = lead > 0  # As training does: sequence starts do not fit the prior.
    whole = BatchShare.of(data, windows, Replicas(), first_rows, lead, hold)
    assert (whole.lead is None) == (lead == 0)
    if hold:
        assert whole.sequence_starts.tolist() == [True, False, False, False, False,
                                                  True, False]
    loss, grads = step(whole, Replicas())
    total, summed = 0.0, None
    for rank in range(2):
        r = _replica(rank, 2)
        part, g = step(BatchShare.of(data, windows, r, first_rows, lead, hold), r)
        total = total + part
        summed = g if summed is None else [a if a is None else a + b
                                           for a, b in zip(summed, g)]
    torch.testing.assert_close(total, loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, summed):
        if a is None:  # Unused by the loss: no gradient in either.
            assert b is None or not b.any()
        else:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_sequence_starts_fit_the_encoder_but_not_the_prior():
    """Holding the windows that begin a sequence changes the prior's gradient only."""
    data, first_rows, settings, module, params, opt = _training_setup(4)
    windows = [(0, 30), (45, 20), (80, 33), (125, 15)]
    grads = {}
    for hold in (False, True):
        share = BatchShare.of(data, windows, Replicas(), first_rows, 10, hold)
        gradient_step(module, params, opt, share, torch.Generator().manual_seed(3),
                      settings, 1.0)
        grads[hold] = {n: p.grad.clone() for n, p in module.named_parameters()
                       if p.grad is not None}
    assert share.sequence_starts.tolist() == [True, False, True, False]
    for name, g in grads[False].items():
        if name == "energy.out.bias":  # A constant: log Z cancels it (0 both ways).
            continue
        if name.startswith("energy."):
            assert not torch.allclose(grads[True][name], g), name
        else:
            torch.testing.assert_close(grads[True][name], g, rtol=1e-4, atol=1e-7)


def test_fit_needs_a_process_group():
    X = data()
    seg = LangevinSegmenter(distributed=True, **PARAMS)
    with pytest.raises(ValueError, match="process group"):
        seg.fit(X)
    assert not hasattr(seg, "module_")


def test_fingerprint_sees_data_and_shared_parameters_only():
    X = data().reshape(-1, 4)
    lengths = np.full(24, 60)
    params = LangevinSegmenter().get_params()
    base = fit_fingerprint(X, lengths, params)
    assert np.array_equal(base, fit_fingerprint(X.copy(), lengths, dict(params)))
    assert np.array_equal(base, fit_fingerprint(X, lengths, {**params, "verbose": 2,
                                                             "device": "cuda:1"}))
    assert not np.array_equal(base, fit_fingerprint(X, lengths, {**params, "beta": 2.0}))
    assert not np.array_equal(base, fit_fingerprint(X[::-1], lengths, params))
    assert not np.array_equal(base, fit_fingerprint(X, np.r_[lengths[:-2], 70, 50],
                                                    params))


def test_nccl_needs_a_gpu_per_process(monkeypatch):
    """NCCL carries CUDA tensors only: a CPU fit over it is refused up front."""
    import torch.distributed as dist
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    with pytest.raises(ValueError, match="'nccl'.*device='cuda:<local rank>'"):
        Replicas.from_default_group(torch.device("cpu"))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    assert Replicas.from_default_group(torch.device("cpu")).device.type == "cpu"


def _torchrun(*args, timeout=300, processes=2, check=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", *map(str, args)]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(HERE.parent)}
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # The GPUs this test may use.
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=HERE.parent)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


#: How torchrun reports a rank killed by a signal (SIGABRT: "exitcode : -6").
_KILLED_BY_SIGNAL = re.compile(r"exitcode\s*:\s*-\d+")


def _run_worker(out: Path, processes: int = 2, attempts: int = 2) -> None:
    """Run tests/distributed_worker.py until every rank has saved its file.

    Once (CI, 2026-12-05; not reproduced in 49 runs here) a rank died of
    SIGABRT in gloo's C++ ("terminate called without an active exception")
    after its fits, with nothing raised in Python. A rank killed by a signal
    before every rank saved is run again, once, with a warning; any other
    failure (a Python exception, a timeout) fails at once.
    """
    for attempt in range(attempts):
        done = _torchrun(HERE / "distributed_worker.py", out, processes=processes,
                         check=False)
        report = done.stdout[-3000:] + done.stderr[-3000:]
        saved = all(f"rank {r} saved" in done.stdout for r in range(processes))
        if done.returncode == 0 or (saved and _KILLED_BY_SIGNAL.search(done.stderr)):
            if done.returncode != 0:
                warnings.warn("a torchrun rank died by a signal after every rank "
                              "saved its results:\n" + report, stacklevel=2)
            return
        assert _KILLED_BY_SIGNAL.search(done.stderr) and attempt + 1 < attempts, report
        warnings.warn("a torchrun rank died by a signal; running the worker again:\n"
                      + report, stacklevel=2)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _run_worker(out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_every_rank_ends_with_the_same_model(two_ranks):
    a, b = two_ranks
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), key
        assert torch.equal(a["unseeded"][key], b["unseeded"][key]), key
    assert a["loss"] == b["loss"]
    assert np.array_equal(a["labels"], b["labels"])
    assert a["n_states"] == b["n_states"]
    # random_state=None: rank 0's seeds, so a different model from seed 0's.
    assert not torch.equal(a["unseeded"]["gru.weight_ih_l0"],
                           a["params"]["gru.weight_ih_l0"])


def test_two_processes_train_as_one(two_ranks):
    """Parameters after the steps equal a one-process fit of the same global batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = LangevinSegmenter(random_state=0, **PARAMS).fit(data())
    ranked = two_ranks[0]
    assert len(ranked["loss"]) == one.n_iter_ == PARAMS["max_iter"]
    np.testing.assert_allclose(ranked["loss"], one.loss_curve_, rtol=1e-5)
    for key, value in one.module_.state_dict().items():
        if key == "energy.out.bias":
            # A constant added to E: log Z cancels its gradient exactly, so Adam
            # steps on rounding noise; it changes no energy difference.
            continue
        torch.testing.assert_close(ranked["params"][key], value, rtol=1e-4, atol=1e-5,
                                   msg=key)


def test_mismatched_data_raises_on_every_rank(two_ranks):
    for saved in two_ranks:
        assert "every process must fit the same data" in saved["mismatch"]


def test_example_runs_under_torchrun(tmp_path):
    out = _torchrun(HERE.parent / "examples" / "distributed_fit.py", "--max-iter", 6,
                    "--out", tmp_path).stdout
    assert "2 processes: fit" in out and "states found" in out
    loaded = LangevinSegmenter.load(tmp_path / "distributed_model.pt")
    assert loaded.distributed and loaded.n_iter_ == 6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_example_trains_over_nccl_on_a_gpu(tmp_path):
    """One process per GPU over NCCL: the seeds and checks travel on the GPU."""
    out = _torchrun(HERE.parent / "examples" / "distributed_fit.py", "--max-iter", 6,
                    "--out", tmp_path, processes=1).stdout
    assert "1 processes: fit" in out and "states found" in out
    assert (tmp_path / "distributed_model.pt").exists()
