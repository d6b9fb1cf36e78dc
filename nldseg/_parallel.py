"""Independent work side by side in worker processes: how many, and what they say.

nldseg trains its candidate models (the ``n_init`` restarts, and the lag
candidates of ``n_lags="auto"``) independently up to the point where they
are compared. Each runs on one torch thread by default (see
:mod:`nldseg._threads`), so on a machine with a second idle core a second
candidate can train at full speed beside the first. Threads would not do:
the training step is hundreds of small operators whose Python overhead holds
the interpreter lock (two fits in two threads of one process took 1.6 times
as long as one, against 1.0 times in two processes, on the 2-core machine of
``benchmarks/RESULTS.md``). So the work goes to joblib's ``loky`` worker
processes, reused from one fit to the next.

A worker computes exactly what the caller would: it runs on the caller's
torch thread count, and the warnings it raises and the lines it prints are
raised and printed again by the caller, in the order of the tasks.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import pickle
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import BrokenExecutor

import joblib
import numpy as np
import torch

from nldseg._threads import torch_threads

#: What joblib raises when its workers cannot run a call at all: they could
#: not start (no semaphores, no processes left), a task could not be sent,
#: or a worker died (killed for memory, a crash).
_WORKER_FAILURES = (OSError, BrokenExecutor, pickle.PicklingError)


#: loky's notice that a worker had exited while tasks waited: it exits
#: cleanly after its idle timeout, or after a task once its memory has grown
#: by 300 MB (with psutil installed), as training's can. loky starts another
#: and no task is lost (a worker that dies is an error instead:
#: ``_WORKER_FAILURES``). It told nothing about the fit, only alarmed (once
#: in 14 suite fits).
_WORKER_REPLACED = "A worker stopped while some jobs were given to the executor"


class WorkersUnavailable(RuntimeError):
    """The worker processes could not run the calls (see :func:`run_in_workers`)."""


def check_jobs(n_jobs) -> None:
    """Raise unless ``n_jobs`` is "auto", None or a nonzero int.

    A :class:`TypeError` for another type, a :class:`ValueError` for 0.
    """
    if n_jobs is None or (isinstance(n_jobs, str) and n_jobs == "auto"):
        return
    if isinstance(n_jobs, (bool, np.bool_)) or not isinstance(n_jobs, (int, np.integer)):
        raise TypeError(f"n_jobs must be 'auto', None or a nonzero int (-1: all CPUs), "
                        f"got {n_jobs!r} of type {type(n_jobs).__name__}.")
    if n_jobs == 0:
        raise ValueError("n_jobs must be 'auto', None or a nonzero int (-1: all CPUs), "
                         "got 0.")


def worker_count(n_jobs, n_tasks: int) -> int:
    """How many processes run ``n_tasks`` independent tasks (1: the caller alone).

    ``"auto"``: one per task, at most as many as the CPUs this process may
    use (``joblib.cpu_count()``) hold workers on the caller's torch thread
    count each, and 1 inside a joblib worker (a grid search's parallel fits
    already use the cores) or a daemonic process (a ``multiprocessing.Pool``
    worker, which may not start processes). More threads than cores make
    these small-operator loops many times slower, not faster: 80 steps of a
    tiny model took 11-12 s in each of two workers of two threads on 2
    cores, 0.4-1.2 s in one alone (measured).
    ``None`` or an int: as ``joblib.effective_n_jobs`` reads it (``None`` is
    1 outside a ``joblib.parallel_config`` block, ``-1`` all CPUs), at most
    one per task.
    """
    check_jobs(n_jobs)
    if n_tasks <= 1:
        return 1
    if isinstance(n_jobs, str):
        if _inside_joblib_worker() or multiprocessing.current_process().daemon:
            return 1  # A daemonic process (a multiprocessing.Pool's) has no children.
        fit = joblib.cpu_count() // max(1, torch.get_num_threads())
        return int(max(1, min(n_tasks, fit)))
    return int(max(1, min(n_tasks, joblib.effective_n_jobs(int(n_jobs)
                                                           if n_jobs is not None
                                                           else None))))


def _inside_joblib_worker() -> bool:
    """Whether this code runs in a task of a joblib ``Parallel`` call."""
    try:
        from joblib.parallel import get_active_backend
    except ImportError:  # pragma: no cover - an older or newer joblib
        return False
    backend, _ = get_active_backend()
    return getattr(backend, "nesting_level", 0) > 0


def run_in_workers(fn: Callable, calls: list, n_jobs: int) -> list:
    """``[fn(*args) for args in calls]``, computed in ``n_jobs`` worker processes.

    ``fn`` must be a module-level function and its arguments picklable. Each
    call runs on the caller's torch thread count; its warnings are raised
    again here and its printed lines printed here, call by call in order,
    once all are done. loky's notice that it replaced a worker that had
    exited cleanly is not passed on (``_WORKER_REPLACED``). An exception in a
    call is raised here;
    :class:`WorkersUnavailable` when the workers could not run the calls
    (they did not start, a call could not be sent, a worker died), so that
    the caller may run them itself; an ``OSError`` raised by a call itself
    is taken for one too.
    """
    n_threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():  # loky warns from its manager thread.
            warnings.filterwarnings("ignore", message=_WORKER_REPLACED,
                                    category=UserWarning)
            done = joblib.Parallel(n_jobs=min(n_jobs, len(calls)), backend="loky")(
                joblib.delayed(_captured)(fn, args, n_threads) for args in calls)
    except _WORKER_FAILURES as exc:
        raise WorkersUnavailable(f"{type(exc).__name__}: {exc}") from exc
    results = []
    for result, caught, printed in done:
        if printed:
            sys.stdout.write(printed)
            sys.stdout.flush()
        for message, category in caught:
            warnings.warn(message, category, stacklevel=2)
        results.append(result)
    return results


def _captured(fn: Callable, args: tuple, n_threads: int) -> tuple:
    """In a worker: ``(fn(*args), [(warning, category), ...], printed text)``."""
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(printed), torch_threads(n_threads):
        warnings.simplefilter("always")
        result = fn(*args)
    return result, [(w.message, w.category) for w in caught], printed.getvalue()
