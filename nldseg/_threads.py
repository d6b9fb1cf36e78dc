"""The torch thread count while nldseg computes: chosen per call, the caller's restored.

nldseg's loops (the training kernels, the inference stepper, the stream, the
energy's gradient flows) are hundreds of small operations per step. A second
intra-op thread gains little on them on an idle machine, and on a machine
whose cores are busy with other work it makes them 15 to 80 times slower
(measured: a stream update 0.29 ms -> 24 ms with torch's default threads on 2
busy cores). So nldseg runs on one thread unless told otherwise
(``n_threads``), and gives the caller's setting back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def check_threads(n_threads) -> int | None:
    """The thread count to run with: ``None`` -> 1, ``-1`` -> ``None`` (torch's own)."""
    if n_threads is None:
        return 1
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or \
            not (n_threads == -1 or n_threads >= 1):
        raise ValueError(f"n_threads must be None, -1 or a positive int, got "
                         f"{n_threads!r}.")
    return None if n_threads == -1 else int(n_threads)


@contextmanager
def torch_threads(n_threads) -> Iterator[None]:
    """Run the ``with`` block on ``n_threads`` torch threads (:func:`check_threads`).

    The calling thread's previous setting (``torch.get_num_threads()``) is
    restored on exit, also after an error; with ``-1``, or when the setting
    already matches, nothing is changed.
    """
    n = check_threads(n_threads)
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
