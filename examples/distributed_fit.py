"""
Data-parallel training on several processes with torchrun
==========================================================

Every process reads the same training data; each trains on its share of every
batch of windows, the gradients are summed across processes, and all end with
the same fitted model, equal to a one-process fit to float rounding.
On CPUs the processes communicate over ``gloo``; on a machine with several
GPUs use ``nccl`` and give each process its own device (below).

Run on 2 CPU processes::

    torchrun --nproc_per_node=2 examples/distributed_fit.py

(``python -m torch.distributed.run`` is the same command.) Rank 0 prints the
results and saves the model to ``examples/output/distributed_model.pt``.
"""

# %%
import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import segmentation_accuracy

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--max-iter", type=int, default=600,
                    help="gradient steps (default: 600)")
parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
args = parser.parse_args()

# %%
# torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; the
# default process group reads them. One GPU per process (NCCL) when the machine
# has a GPU for every process it runs; the CPUs (gloo) otherwise.
local_rank = int(os.environ.get("LOCAL_RANK", 0))
use_cuda = torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", 1))
if use_cuda:
    torch.cuda.set_device(local_rank)
dist.init_process_group("nccl" if use_cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = f"cuda:{local_rank}" if use_cuda else "cpu"

# %%
# The same data on every process (here generated from the same seeds; with
# recorded data, every process loads the same files). The paper's three-state
# chain: 15 features, switching with probability 0.025 per step.
X_train, y_train = make_markov_chain_sequences(
    150, 200, n_states=3, n_features=15, switch_prob=0.025, random_state=1000,
    emission_random_state=0)
X_test, y_test = make_markov_chain_sequences(
    100, 500, n_states=3, n_features=15, switch_prob=0.025, random_state=2000,
    emission_random_state=0)

# %%
# ``distributed=True``: training is shared by the processes of the default
# group. ``batch_size`` is the batch of all processes together, so the model
# trains as a one-process fit with the same parameters would.
t0 = time.perf_counter()
# A short budget: the KL term warms up over its first third (the default
# 1,000-step warm-up is for the default 3,000-step budget).
seg = LangevinSegmenter(distributed=True, device=device, max_iter=args.max_iter,
                        kl_warmup=args.max_iter // 3, random_state=0).fit(X_train)
t_fit = time.perf_counter() - t0

# %%
# Every process holds the same model; rank 0 reports and saves it.
if rank == 0:
    y_pred = seg.predict(X_test)
    acc = segmentation_accuracy(y_test, y_pred)
    print(f"{world} processes: fit {t_fit:.0f} s, {seg.n_iter_} gradient steps")
    print(f"online accuracy {acc:.4f} with {seg.n_states_} states found "
          f"(true: 3)")
    args.out.mkdir(parents=True, exist_ok=True)
    seg.save(args.out / "distributed_model.pt")
    print(f"saved {args.out / 'distributed_model.pt'}")
dist.destroy_process_group()
