"""Tests of nldseg._parallel: how many workers, and what they say comes back."""

import warnings

import joblib
import pytest
import torch

from nldseg._parallel import WorkersUnavailable, check_jobs, run_in_workers, worker_count
from nldseg._threads import torch_threads


@pytest.mark.parametrize("bad, err", [(0, ValueError), (1.5, TypeError),
                                      ("all", TypeError), (True, TypeError),
                                      ([2], TypeError)])
def test_bad_n_jobs_raises(bad, err):
    with pytest.raises(err, match="n_jobs must be 'auto', None or a nonzero int"):
        check_jobs(bad)


def test_worker_counts():
    cpus = joblib.cpu_count()
    assert worker_count("auto", 1) == 1  # One task: no worker.
    with torch_threads(1):
        assert worker_count("auto", 3) == min(3, cpus)
    with torch_threads(2):  # Never more threads in all than cores.
        assert worker_count("auto", 3) == max(1, min(3, cpus // 2))
    assert worker_count(None, 3) == 1  # As scikit-learn reads None.
    assert worker_count(1, 3) == 1
    assert worker_count(-1, 3) == min(3, cpus)
    assert worker_count(2, 5) == 2
    assert worker_count(8, 2) == 2  # Never more than the tasks.
    with joblib.parallel_config(n_jobs=2):
        assert worker_count(None, 3) == 2


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_auto_is_one_inside_a_joblib_worker(backend):
    """A grid search's parallel fits already use the cores."""
    counts = joblib.Parallel(n_jobs=2, backend=backend)(
        joblib.delayed(worker_count)("auto", 3) for _ in range(2))
    assert counts == [1, 1]


def _noisy(i):
    print(f"task {i} on {torch.get_num_threads()} thread(s)")
    warnings.warn(f"task {i} warns", RuntimeWarning, stacklevel=2)
    return i * i


def _fails(i):
    raise ValueError(f"bad task {i}")


def test_results_warnings_and_lines_come_back_in_order(capsys):
    with torch_threads(1), pytest.warns(RuntimeWarning) as record:
        out = run_in_workers(_noisy, [(i,) for i in range(3)], 2)
    assert out == [0, 1, 4]
    assert [str(w.message) for w in record] == [f"task {i} warns" for i in range(3)]
    # Each worker ran on the caller's thread count.
    assert capsys.readouterr().out == "".join(f"task {i} on 1 thread(s)\n"
                                              for i in range(3))


def test_lokys_notice_of_a_replaced_worker_is_not_passed_on(monkeypatch):
    """loky warns from its manager thread when it replaces a worker that
    exited cleanly (idle timeout, memory growth) while tasks waited; the
    tasks still run, so the fit's caller is not told. Other warnings raised
    on that thread still reach it."""
    import threading

    from nldseg import _parallel
    real = joblib.Parallel

    class Notifying(real):
        def __call__(self, tasks):
            def manager():
                warnings.warn("A worker stopped while some jobs were given to the "
                              "executor. This can be caused by a too short worker "
                              "timeout or by a memory leak.", UserWarning, stacklevel=1)
                warnings.warn("something else", UserWarning, stacklevel=1)
            thread = threading.Thread(target=manager)
            thread.start()
            thread.join()
            return super().__call__(tasks)

    monkeypatch.setattr(_parallel.joblib, "Parallel", Notifying)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_in_workers(abs, [(-1,), (-2,)], 2) == [1, 2]
    assert [str(w.message) for w in caught] == ["something else"]


def test_an_error_in_a_worker_is_raised_here():
    with pytest.raises(ValueError, match="bad task"):
        run_in_workers(_fails, [(1,), (2,)], 2)


def _dies(i):
    import os

    os._exit(3)  # As a worker killed for memory.


def test_a_worker_that_dies_is_workers_unavailable():
    with pytest.raises(WorkersUnavailable, match="TerminatedWorkerError"):
        run_in_workers(_dies, [(1,), (2,)], 2)
    assert run_in_workers(abs, [(-1,), (-2,)], 2) == [1, 2]  # Workers start again.


def test_auto_is_one_in_a_daemonic_process():
    """A multiprocessing.Pool's workers may not start processes of their own."""
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(1) as pool:
        assert pool.apply(worker_count, ("auto", 3)) == 1
