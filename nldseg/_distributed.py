"""Data-parallel training over a ``torch.distributed`` process group.

Every process (rank) holds the whole training data and draws the same windows,
batches and noise from the same seeds; each takes a contiguous share of the
rows of every batch (:meth:`Replicas.rows`), and the sums of the losses and
gradients over the ranks (:meth:`Replicas.sum_`) make every rank take the same
optimiser step as one process training on the whole batch would, to float
tolerance. The parameters therefore stay identical on every rank without being
broadcast after the start. :data:`SINGLE` stands for one process, with the
same interface and no communication.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


class Replicas:
    """The processes training one model: ``rank`` out of ``world_size``.

    Parameters
    ----------
    group : ProcessGroup or None
        The ``torch.distributed`` group to train over; ``None`` with
        ``distributed=True`` is the default group, with ``distributed=False``
        a single process.
    distributed : bool
        Whether to communicate at all.
    device : torch.device or str, default="cpu"
        Where the tensors of :meth:`broadcast_seeds` and :meth:`check_same`
        travel: the fit's device under a backend that communicates CUDA
        tensors only (NCCL), the CPU otherwise.
    """

    def __init__(self, group=None, *, distributed: bool = False,
                 device: torch.device | str = "cpu") -> None:
        self.distributed = distributed
        self.group = group
        self.device = torch.device(device)
        if distributed:
            import torch.distributed as dist
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)
        else:
            self.rank, self.world_size = 0, 1

    @classmethod
    def from_default_group(cls, device: torch.device) -> Replicas:
        """The default process group, training on ``device``.

        Raises :class:`ValueError` when there is no group, or when its backend
        communicates CUDA tensors only (NCCL) and ``device`` is not a GPU.
        """
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process "
                "group: launch the script with torchrun and call "
                "torch.distributed.init_process_group() (backend 'gloo' on CPUs, "
                "'nccl' on GPUs) before fit.")
        device = torch.device(device)
        if str(dist.get_backend()).lower() != "nccl":
            return cls(distributed=True)
        if device.type != "cuda":
            raise ValueError(
                "The process group's backend is 'nccl', which carries CUDA tensors "
                f"only, but the fit runs on {device}: set device='cuda:<local "
                "rank>' (one GPU per process), or use the 'gloo' backend on CPUs.")
        return cls(distributed=True, device=device)

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (possibly empty).

        The first ``n % world_size`` ranks take one row more than the others.
        """
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum_(self, tensors: list) -> None:
        """Replace each tensor by its sum over the ranks, in place.

        The tensors are flattened into one buffer per dtype, so that one
        all-reduce carries them all.
        """
        if not self.distributed or not tensors:
            return
        import torch.distributed as dist
        by_dtype: dict = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def broadcast_seeds(self, seeds: np.ndarray) -> np.ndarray:
        """Rank 0's ``seeds`` (int64 array) on every rank."""
        if not self.distributed:
            return seeds
        import torch.distributed as dist
        buf = torch.as_tensor(np.asarray(seeds, dtype=np.int64), device=self.device)
        dist.broadcast(buf, src=0, group=self.group)
        return buf.cpu().numpy().copy()

    def check_same(self, name: str, fingerprint: np.ndarray) -> None:
        """Raise the same :class:`ValueError` on every rank when ``fingerprint`` differs.

        ``fingerprint`` is a float64 vector that must be equal on every rank
        (e.g. the data's shape and sums); its minimum and maximum over the
        ranks are compared, so that all ranks decide alike.
        """
        if not self.distributed:
            return
        import torch.distributed as dist
        low = torch.as_tensor(np.asarray(fingerprint, dtype=np.float64),
                              device=self.device)
        high = low.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        if not torch.equal(low, high):
            raise ValueError(
                f"With distributed=True every process must fit the same {name}; "
                f"it differs between the {self.world_size} processes.")


#: One process: no communication.
SINGLE = Replicas()


#: Parameters that may differ between the processes of one fit.
_PER_PROCESS_PARAMS = frozenset({"device", "n_threads", "n_jobs", "random_state",
                                 "verbose"})


def fit_fingerprint(data: np.ndarray, lengths: np.ndarray, params: dict) -> np.ndarray:
    """What must be equal on every process of one fit: data and parameters.

    The data's shape, its sum, sum of squares and sum of rows weighted by
    their position (so that reordered rows differ), the same of the sequence
    lengths, and a checksum of the parameters other than
    :data:`_PER_PROCESS_PARAMS`, as a float64 vector for
    :meth:`Replicas.check_same`.
    """
    shared = {k: v for k, v in sorted(params.items()) if k not in _PER_PROCESS_PARAMS}
    lengths = np.asarray(lengths, dtype=np.float64)
    rows = data.reshape(len(data), -1).sum(1)
    return np.array([*data.shape, float(rows.sum()), float((data * data).sum()),
                     float(rows @ np.arange(1, len(rows) + 1)),
                     len(lengths), float(lengths @ np.arange(1, len(lengths) + 1)),
                     zlib.crc32(repr(shared).encode())], dtype=np.float64)
