"""The ``nldseg`` command: fit, predict, info and serve, on files.

Usage::

    nldseg fit DATA --out MODEL [--set name=value ...]
    nldseg predict MODEL DATA --out LABELS [--proba]
    nldseg info MODEL [--json]
    nldseg serve MODEL [--host 127.0.0.1] [--port 8000]

DATA is one of:

- ``.npy``: a 3-D array ``(n_sequences, n_timesteps, n_features)`` or a 2-D
  array (one sequence);
- ``.npz``: one 2-D array per sequence (or a single 3-D array), in the file's
  order; the sequence ids are the array names;
- ``.csv``: a header line, then one observation per row. The column named by
  ``--sequence-column`` (default ``sequence``) holds the sequence id; every
  other column is a feature. Rows of one sequence are in time order; without
  that column the whole file is one sequence.

MODEL files are written by :meth:`~nldseg.LangevinSegmenter.save` and read with
:meth:`~nldseg.LangevinSegmenter.load`, which executes no code. Pickles
(``.pkl``, ``.pickle``, ``.joblib``) are refused unless ``--allow-pickle`` is
given, which warns: loading a pickle runs code from the file.

LABELS (``predict --out``) is ``.csv`` (columns ``sequence, step, label`` and,
with ``--proba``, ``proba_0 ...``) or ``.npz`` (``labels`` and ``lengths``, the
sequences' labels end to end and their lengths; ``sequence_ids``; ``proba``
with ``--proba``).

Errors (a missing file, a wrong shape or feature count, a bad parameter) are
printed as ``nldseg <command>: error: <message>`` and exit with status 1;
wrong usage exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from nldseg._estimator import LangevinSegmenter
from nldseg._frontend import label_sequences, model_summary

PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib"})
DATA_SUFFIXES = frozenset({".npy", ".npz", ".csv"})
LABEL_SUFFIXES = frozenset({".npz", ".csv"})


class CommandError(Exception):
    """A problem with the command's files or values, printed without a traceback."""


def _existing(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CommandError(f"{what} file not found: {path}")
    if p.is_dir():
        raise CommandError(f"{what} is a directory, not a file: {path}")
    return p


def _suffix(path: Path, allowed: frozenset, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise CommandError(f"{what} {path} has suffix {suffix!r}; expected one of "
                           f"{', '.join(sorted(allowed))}.")
    return suffix


def _read_csv(path: Path, sequence_column: str) -> tuple[list, list]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    rows = [row for row in rows if row]
    if len(rows) < 2:
        raise CommandError(f"{path} has no data rows; expected a header line and one "
                           f"observation per row.")
    header = [name.strip() for name in rows[0]]
    id_col = header.index(sequence_column) if sequence_column in header else None
    features = [j for j in range(len(header)) if j != id_col]
    if not features:
        raise CommandError(f"{path} has no feature column besides "
                           f"'{sequence_column}'.")
    groups: dict = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise CommandError(f"{path}, line {line}: {len(row)} fields, but the header "
                               f"has {len(header)}.")
        try:
            values = [float(row[j]) for j in features]
        except ValueError:
            bad = next(j for j in features if not _is_number(row[j]))
            raise CommandError(f"{path}, line {line}, column '{header[bad]}': "
                               f"{row[bad]!r} is not a number.") from None
        key = row[id_col].strip() if id_col is not None else "0"
        groups.setdefault(key, []).append(values)
    return [np.array(v, dtype=np.float64) for v in groups.values()], list(groups)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_sequences(path: str, sequence_column: str = "sequence") -> tuple[list, list]:
    """``(sequences, ids)``: the 2-D arrays in a DATA file and their ids.

    Parameters
    ----------
    path : str
        A ``.npy``, ``.npz`` or ``.csv`` file (see the module docstring).
    sequence_column : str, default="sequence"
        The CSV column holding the sequence ids.

    Returns
    -------
    sequences : list of ndarray of shape (n_timesteps, n_features)
    ids : list of str

    Raises
    ------
    CommandError
        If the file is missing, of an unknown kind, or holds arrays that are
        not sequences.

    Examples
    --------
    >>> import os, tempfile
    >>> from nldseg.cli import read_sequences
    >>> path = os.path.join(tempfile.mkdtemp(), "x.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("sequence,a,b\\nrun1,0.1,0.2\\nrun2,0.3,0.4\\nrun1,0.5,0.6\\n")
    >>> sequences, ids = read_sequences(path)
    >>> ids, [s.shape for s in sequences]
    (['run1', 'run2'], [(2, 2), (1, 2)])
    """
    p = _existing(path, "DATA")
    suffix = _suffix(p, DATA_SUFFIXES, "DATA")
    if suffix == ".csv":
        return _read_csv(p, sequence_column)
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy raises several kinds for a damaged file
        raise CommandError(f"Could not read {path} as {suffix}: {exc}") from exc
    if suffix == ".npy":
        arrays, names = [loaded], [None]
    else:
        with loaded:
            names = list(loaded.files)
            arrays = [loaded[name] for name in names]
        if not arrays:
            raise CommandError(f"{path} holds no arrays.")
    sequences, ids = [], []
    for name, arr in zip(names, arrays):
        where = f"{path}" if name is None else f"{path}['{name}']"
        if arr.ndim == 3:
            sequences.extend(arr)
            ids.extend(f"{name}[{i}]" if name else str(i) for i in range(len(arr)))
        elif arr.ndim == 2:
            sequences.append(arr)
            ids.append(name or "0")
        else:
            raise CommandError(f"{where} has shape {arr.shape}; expected a 2-D array "
                               f"(n_timesteps, n_features) or a 3-D array "
                               f"(n_sequences, n_timesteps, n_features).")
    return sequences, ids


def load_model(path: str, allow_pickle: bool = False) -> LangevinSegmenter:
    """Read a fitted model; pickles only with ``allow_pickle=True``, with a warning.

    Parameters
    ----------
    path : str
        A file written by :meth:`~nldseg.LangevinSegmenter.save`, or with
        ``allow_pickle`` a ``.pkl``/``.pickle``/``.joblib`` file.
    allow_pickle : bool, default=False
        Accept a pickle. Loading one executes code from the file: only for
        files you trust.

    Returns
    -------
    estimator : LangevinSegmenter

    Raises
    ------
    CommandError
        If the file is missing or damaged, or is a pickle and
        ``allow_pickle`` is False.

    Examples
    --------
    >>> from nldseg.cli import CommandError, load_model
    >>> try:
    ...     load_model("model.pkl")
    ... except CommandError as exc:
    ...     print(exc)
    MODEL file not found: model.pkl
    """
    p = _existing(path, "MODEL")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise CommandError(f"{path} is a pickle, and loading a pickle runs code "
                               f"from the file. Save the model with "
                               f"LangevinSegmenter.save instead, or pass "
                               f"--allow-pickle for a file you trust.")
        import joblib

        warnings.warn(f"Loading the pickle {path}: this runs code from the file; do it "
                      f"only with files you trust.", UserWarning, stacklevel=2)
        model = joblib.load(p)
        if not isinstance(model, LangevinSegmenter):
            raise CommandError(f"{path} holds a {type(model).__name__}, not a "
                               f"LangevinSegmenter.")
        return model
    try:
        return LangevinSegmenter.load(p)
    except ValueError as exc:
        raise CommandError(f"{path}: {exc}") from exc


def _parse_value(text: str):
    """A ``--set`` value: JSON (``3``, ``0.5``, ``null``, ``"diag"``), else the text."""
    spelled = {"None": None, "True": True, "False": False}
    if text in spelled:
        return spelled[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_settings(pairs: list) -> dict:
    """``name=value`` strings to a dict of :class:`LangevinSegmenter` parameters.

    Values are read as JSON (``3``, ``0.5``, ``null``, ``false``, ``"x"``),
    Python's ``None``/``True``/``False`` too, and else kept as text.

    Examples
    --------
    >>> from nldseg.cli import parse_settings
    >>> parse_settings(["max_iter=500", "dynamics=underdamped", "n_states=None"])
    {'max_iter': 500, 'dynamics': 'underdamped', 'n_states': None}
    """
    valid = LangevinSegmenter().get_params()
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CommandError(f"--set expects name=value, got {pair!r}.")
        if name not in valid:
            raise CommandError(f"Unknown parameter {name!r} in --set; valid ones: "
                               f"{', '.join(sorted(valid))}.")
        settings[name] = _parse_value(value.strip())
    return settings


def _format_occupancy(occupancy) -> str:
    return " ".join(f"{p:.3f}" for p in occupancy)


def _fit(args) -> None:
    sequences, _ = read_sequences(args.data, args.sequence_column)
    chosen = parse_settings(args.set)
    settings = dict({"verbose": 0 if args.quiet else 1}, **chosen)
    out = Path(args.out)
    if out.suffix.lower() in PICKLE_SUFFIXES:
        raise CommandError(f"--out {out} has a pickle suffix, but the model is saved "
                           f"in nldseg's own format; name it *.nldseg.")
    if not out.parent.exists():
        raise CommandError(f"The directory of --out does not exist: {out.parent}")
    n_steps = sum(len(s) for s in sequences)
    print(f"Fitting on {len(sequences)} sequence(s), {n_steps} steps, "
          f"{sequences[0].shape[1]} features.", flush=True)
    start = time.perf_counter()
    model = LangevinSegmenter(**settings).fit(sequences)
    elapsed = time.perf_counter() - start
    if "verbose" not in chosen:  # The progress lines were for this command only.
        model.set_params(verbose=LangevinSegmenter().verbose)
    model.save(out)
    occupancy = _format_occupancy(model.state_occupancy_)
    print(f"Fitted in {elapsed:.1f} s ({model.n_iter_} gradient steps): "
          f"{model.n_states_} states, occupancy {occupancy}.\nSaved to {out}.")


def _write_labels(path: Path, ids: list, labels: list, proba: list | None) -> None:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = {"labels": np.concatenate(labels),
                  "lengths": np.array([len(lab) for lab in labels], dtype=np.int64),
                  "sequence_ids": np.array(ids)}
        if proba is not None:
            arrays["proba"] = np.concatenate(proba)
        np.savez(path, **arrays)
        return
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        n_states = proba[0].shape[1] if proba is not None else 0
        writer.writerow(["sequence", "step", "label"]
                        + [f"proba_{k}" for k in range(n_states)])
        for i, seq_id in enumerate(ids):
            for t, label in enumerate(labels[i]):
                extra = [repr(float(p)) for p in proba[i][t]] if proba is not None else []
                writer.writerow([seq_id, t, int(label)] + extra)


def _predict(args) -> None:
    out = Path(args.out)
    _suffix(out, LABEL_SUFFIXES, "--out")
    model = load_model(args.model, args.allow_pickle)
    sequences, ids = read_sequences(args.data, args.sequence_column)
    try:
        labels, proba = label_sequences(model, sequences, args.proba)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"{args.data}: {exc}") from exc
    _write_labels(out, ids, labels, proba)
    print(f"Labelled {len(sequences)} sequence(s), {sum(len(lab) for lab in labels)} "
          f"steps, with {model.n_states_} states; wrote {out}.")


def _info(args) -> None:
    summary = model_summary(load_model(args.model, args.allow_pickle))
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    params = summary["parameters"]
    lines = [f"model: {args.model}",
             f"features: {summary['n_features']}",
             f"states: {summary['n_states']}",
             f"occupancy: {_format_occupancy(summary['state_occupancy'])}",
             f"training: {summary['n_iter']} gradient steps, "
             f"{'converged' if summary['converged'] else 'not converged'}",
             "parameters: " + ", ".join(f"{k}={v!r}" for k, v in params.items()),
             "versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items())]
    print("\n".join(lines))


def _serve(args) -> None:
    def load():
        model = load_model(args.model, args.allow_pickle)
        if args.threads is not None:
            model.set_params(n_threads=args.threads)
        return model

    from nldseg import serving

    serving.run(load(), host=args.host, port=args.port, reload=load,
                max_body_bytes=args.max_body_bytes,
                max_message_bytes=args.max_message_bytes, max_streams=args.max_streams)


def build_parser() -> argparse.ArgumentParser:
    """The ``nldseg`` argument parser."""
    from nldseg import serving  # FastAPI is imported only when serving starts.

    parser = argparse.ArgumentParser(
        prog="nldseg", description="Unsupervised, online time-series segmentation by "
                                   "Neural Langevin Dynamics.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_options(p):
        p.add_argument("--sequence-column", default="sequence", metavar="NAME",
                       help="CSV column holding the sequence id (default: sequence)")

    def model_options(p):
        p.add_argument("--allow-pickle", action="store_true",
                       help="accept a pickled MODEL (runs code from the file)")

    p = sub.add_parser("fit", help="fit a model on DATA and save it",
                       description="Fit a LangevinSegmenter on DATA and save it to MODEL.")
    p.add_argument("data", metavar="DATA", help=".npy, .npz or .csv file")
    p.add_argument("--out", required=True, metavar="MODEL", help="file to write")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a LangevinSegmenter parameter, e.g. --set max_iter=1000 "
                        "(repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    data_options(p)
    p.set_defaults(handler=_fit)

    p = sub.add_parser("predict", help="label DATA with a fitted model",
                       description="Label every step of DATA (online labels).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("data", metavar="DATA", help=".npy, .npz or .csv file")
    p.add_argument("--out", required=True, metavar="LABELS", help=".csv or .npz file")
    p.add_argument("--proba", action="store_true", help="also write probabilities")
    data_options(p)
    model_options(p)
    p.set_defaults(handler=_predict)

    p = sub.add_parser("info", help="describe a fitted model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--json", action="store_true", help="print JSON")
    model_options(p)
    p.set_defaults(handler=_info)

    p = sub.add_parser("serve", help="serve a fitted model over HTTP and WebSocket",
                       description="Serve MODEL: POST /predict, WebSocket /stream, "
                                   "GET /health, GET /model (needs nldseg[serve]). "
                                   "SIGHUP reads MODEL again and serves it to new "
                                   "requests and streams; open streams keep theirs.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per request or stream update, the model's "
                        "n_threads (default: the saved model's, 1 unless set)")
    p.add_argument("--max-body-bytes", type=int,
                   default=serving.DEFAULT_MAX_BODY_BYTES, metavar="N")
    p.add_argument("--max-message-bytes", type=int,
                   default=serving.DEFAULT_MAX_MESSAGE_BYTES, metavar="N")
    p.add_argument("--max-streams", type=int, default=serving.DEFAULT_MAX_STREAMS,
                   metavar="N")
    model_options(p)
    p.set_defaults(handler=_serve)
    return parser


def main(argv: list | None = None) -> int:
    """Run the ``nldseg`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 on success, 1 when the command failed (the message is printed to
        stderr), 2 for wrong usage.

    Examples
    --------
    >>> from nldseg.cli import main
    >>> main(["info", "no-such-model.nldseg"])
    1
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    def show_warning(message, category, *_args, **_kwargs):
        print(f"nldseg {args.command}: {category.__name__}: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            args.handler(args)
    except (CommandError, ValueError, TypeError, ImportError, OSError) as exc:
        print(f"nldseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nldseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
