"""What the scripts of cases drawn at random share: their options and their run.

``fresh_cases.py`` and ``motion_recordings.py`` each draw configurations from
a seed and score every one as a suite case; both take the same options and
run the draw the same way, side by side in worker processes, printing one
table row per case and method (:func:`draw_main`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from joblib import Parallel, delayed
from suite import commit, machine, write_csv


def _arguments(argv: list | None, description: str, noun: str,
               plural: str) -> argparse.Namespace:
    """A draw's options parsed from ``argv``, the count and ``--only`` checked.

    The count of ``plural`` is ``--n-<plural>``, read as ``a.n``.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--draw-seed", type=int, default=0,
                   help=f"seed of the {plural}' configurations")
    p.add_argument(f"--n-{plural}", type=int, default=6, dest="n")
    p.add_argument("--only", type=int, nargs="*", default=None,
                   help=f"run only these {noun} indices of the draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the fits")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-hmm", action="store_true", help="skip hmmlearn's HMM")
    p.add_argument("--list", action="store_true", help=f"print the {plural} and stop")
    p.add_argument("--out", default=None,
                   help="also write every row (the suite's columns) to this CSV file")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n-{plural} must be at least 1")
    if a.only is not None and not set(a.only) <= set(range(a.n)):
        p.error(f"--only takes {noun} indices 0-{a.n - 1} of the draw")
    return a


def _run_draw(task: Callable, a: argparse.Namespace, header: str,
             format_row: Callable[[dict], str]) -> None:
    """Run ``task(draw_seed, n, index, seed, with_hmm)`` for the chosen indices.

    ``task`` returns ``(rows, seconds)``; the rows are printed as a markdown
    table under ``header`` as they come, and written to ``a.out`` at the end.
    """
    chosen = range(a.n) if a.only is None else a.only
    print(f"# {a.jobs} job(s) side by side, one torch thread each; times are "
          f"wall-clock seconds under that load", flush=True)
    results = Parallel(n_jobs=a.jobs, return_as="generator")(
        delayed(task)(a.draw_seed, a.n, i, a.seed, not a.no_hmm) for i in chosen)
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    every = []
    for rows, took in results:
        every.extend(rows)
        for r in rows:
            print(format_row(r), flush=True)
        print(f"# {rows[0]['case']} done in {took:.0f} s; nldseg steps "
              f"{rows[0].get('steps')}, lags {rows[0].get('n_lags')}"
              + (f"; warnings: {rows[0]['warnings']}" if rows[0].get("warnings") else ""),
              flush=True)
    if a.out:
        write_csv(every, a.out)
        print(f"# wrote {a.out}")


def draw_main(argv: list | None, *, description: str, noun: str, plural: str,
              draw: Callable, describe: Callable, setting: str, task: Callable,
              header: str, format_row: Callable[[dict], str]) -> None:
    """A draw script's ``main``.

    ``draw(draw_seed, n)`` gives the cases, ``describe(case, seed)`` what the
    line listing a case adds to its note, ``setting`` what the methods are
    given, ``task`` one case's run (see :func:`_run_draw`).
    """
    a = _arguments(argv, description, noun, plural)
    print(f"# machine: {machine()}; commit {commit()}")
    print(f"# nldseg parameters: library defaults{setting}")
    for c in draw(a.draw_seed, a.n):
        print(f"# {c.name}: {c.note}; {describe(c, a.seed)}")
    if not a.list:
        _run_draw(task, a, header, format_row)
