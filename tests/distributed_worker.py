"""Worker of tests/test_distributed.py, launched by torchrun (2 processes, gloo).

``python -m torch.distributed.run --standalone --nproc_per_node=2
tests/distributed_worker.py OUT`` runs three fits on every rank and saves
``OUT/rank<r>.pt``: a data-parallel fit with ``random_state=0`` (parameters,
loss curve, held-out ELBOs, labels), one with ``random_state=None``
(parameters), and the message of the ValueError raised when each rank is
given different data. Each rank prints ``rank <r> saved`` once its file is
written.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences

#: The fit both the workers and the one-process reference run. An odd batch
#: size, so that the ranks' shares differ in size; windows of uneven length.
#: On the CPU in both, so that a GPU machine compares like with like (CUDA's
#: random streams differ from the CPU's).
PARAMS = dict(hidden_size=16, context_size=8, max_iter=8, batch_size=7,
              window_length=25, kl_warmup=4, device="cpu")


def data(seed: int = 0) -> np.ndarray:
    X, _ = make_markov_chain_sequences(24, 60, n_features=4, random_state=seed)
    return X


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seg = LangevinSegmenter(distributed=True, random_state=0, **PARAMS).fit(data())
    saved = {"params": seg.module_.state_dict(), "loss": seg.loss_curve_,
             "scores": seg.validation_scores_, "labels": seg.predict(data()),
             "n_states": seg.n_states_}
    unseeded = LangevinSegmenter(distributed=True, **PARAMS).fit(data())
    saved["unseeded"] = unseeded.module_.state_dict()
    try:
        LangevinSegmenter(distributed=True, random_state=0, **PARAMS).fit(data(rank))
    except ValueError as exc:
        saved["mismatch"] = str(exc)
    torch.save(saved, out / f"rank{rank}.pt")
    print(f"rank {rank} saved", flush=True)
    # Leave together: no rank tears its connections down while another still
    # talks over them.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
