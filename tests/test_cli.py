"""The ``nldseg`` command: file formats, the fit -> predict -> info round trip, errors."""

import csv
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import TINY

from nldseg import LangevinSegmenter
from nldseg.cli import CommandError, load_model, main, parse_settings, read_sequences


def _write_csv(path, sequences, ids, column="sequence"):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        n_features = sequences[0].shape[1]
        writer.writerow([column] + [f"f{j}" for j in range(n_features)])
        for seq, seq_id in zip(sequences, ids):
            for row in seq:
                writer.writerow([seq_id] + [repr(float(v)) for v in row])


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def saved_model(tiny_fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.nldseg"
    tiny_fitted.save(path)
    return path


def _installed() -> bool:
    """Whether nldseg is installed (pip install -e .), not only importable from
    a source tree on PYTHONPATH, where no console script exists."""
    try:
        metadata.distribution("nldseg")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_install = pytest.mark.skipif(
    not _installed(), reason="nldseg is imported from a source tree, not installed: "
    "its console script exists only after pip install -e .")


def test_entry_point_declared_in_pyproject():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'nldseg = "nldseg.cli:main"' in scripts


@needs_install
def test_entry_point_installed():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("nldseg") == "nldseg.cli:main"


@needs_install
def test_round_trip_from_the_installed_command(tiny_data, tmp_path):
    """fit -> predict -> info through the console script, as a user types them."""
    script = Path(sys.executable).with_name("nldseg")
    assert script.exists(), "pip install -e . installs the nldseg command"
    X, X_test, _ = tiny_data
    np.save(tmp_path / "train.npy", X)
    np.savez(tmp_path / "test.npz", first=X_test[0], second=X_test[1, :23])
    settings = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    model, labels = tmp_path / "m.nldseg", tmp_path / "labels.npz"

    def run(*args):
        done = subprocess.run([str(script), *map(str, args)], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    fitted = run("fit", tmp_path / "train.npy", "--out", model, *settings)
    assert "3 states" in fitted and model.exists()
    assert "Step 70/72" in fitted  # the progress lines
    run("predict", model, tmp_path / "test.npz", "--out", labels, "--proba")
    info = json.loads(run("info", model, "--json"))
    seg = LangevinSegmenter.load(model)
    assert info["n_states"] == seg.n_states_ == 3
    assert seg.verbose == 0  # the command's progress setting is not saved
    saved = np.load(labels)
    assert saved["lengths"].tolist() == [50, 23]
    assert saved["sequence_ids"].tolist() == ["first", "second"]
    expected = seg.predict([X_test[0], X_test[1, :23]])
    assert saved["labels"].tolist() == np.concatenate(expected).tolist()
    assert len(set(saved["labels"].tolist())) >= 2
    np.testing.assert_array_equal(
        saved["proba"], np.concatenate(seg.predict_proba([X_test[0], X_test[1, :23]])))


def test_predict_csv_equals_library(saved_model, tiny_fitted, tiny_data, tmp_path,
                                    capsys):
    _, X_test, _ = tiny_data
    seqs = [X_test[2], X_test[3, :30]]
    _write_csv(tmp_path / "x.csv", seqs, ["run-a", "run-b"])
    status, out, _ = _run(capsys, "predict", saved_model, tmp_path / "x.csv", "--out",
                          tmp_path / "labels.csv", "--proba")
    assert status == 0 and "3 states" in out
    with open(tmp_path / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["sequence"] for r in rows] == ["run-a"] * 50 + ["run-b"] * 30
    assert [int(r["step"]) for r in rows[:3]] == [0, 1, 2]
    expected = np.concatenate(tiny_fitted.predict(seqs))
    assert [int(r["label"]) for r in rows] == expected.tolist()
    proba = np.concatenate(tiny_fitted.predict_proba(seqs))
    assert [float(rows[7][f"proba_{k}"]) for k in range(3)] == proba[7].tolist()


def test_read_sequences_forms(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    _write_csv(tmp_path / "x.csv", [a, b], ["s1", "s2"])
    seqs, ids = read_sequences(str(tmp_path / "x.csv"))
    assert ids == ["s1", "s2"]
    np.testing.assert_array_equal(seqs[1], b)
    # Interleaved rows of two sequences keep each one's order.
    with open(tmp_path / "mixed.csv", "w") as handle:
        handle.write("f0,id,f1\n1,x,2\n3,y,4\n5,x,6\n")
    seqs, ids = read_sequences(str(tmp_path / "mixed.csv"), sequence_column="id")
    assert ids == ["x", "y"] and seqs[0].tolist() == [[1, 2], [5, 6]]
    with pytest.raises(CommandError, match="line 2, column 'id': 'x' is not a number"):
        # Without --sequence-column id, "id" is a feature column.
        read_sequences(str(tmp_path / "mixed.csv"))
    # No id column: one sequence of every row.
    (tmp_path / "plain.csv").write_text("f0,f1\n1,2\n3,4\n5,6\n")
    seqs, ids = read_sequences(str(tmp_path / "plain.csv"))
    assert len(seqs) == 1 and seqs[0].tolist() == [[1, 2], [3, 4], [5, 6]]
    np.save(tmp_path / "one.npy", a)
    seqs, _ = read_sequences(str(tmp_path / "one.npy"))
    assert len(seqs) == 1 and seqs[0].shape == (5, 3)
    np.save(tmp_path / "batch.npy", np.stack([a, a]))
    assert len(read_sequences(str(tmp_path / "batch.npy"))[0]) == 2


@pytest.mark.parametrize("make, words", [
    (lambda d: None, "DATA file not found"),
    (lambda d: np.save(d / "x.npy", np.zeros(4)), "has shape (4,)"),
    (lambda d: (d / "x.txt").write_text("1 2"), "expected one of .csv, .npy, .npz"),
    (lambda d: (d / "x.csv").write_text("a,b\n1,oops\n"), "line 2, column 'b'"),
    (lambda d: (d / "x.csv").write_text("a,b\n1\n"), "line 2: 1 fields"),
    (lambda d: (d / "x.csv").write_text("a,b\n"), "no data rows"),
    (lambda d: (d / "x.npy").write_bytes(b"not numpy"), "Could not read"),
])
def test_data_errors_name_the_problem(tmp_path, capsys, saved_model, make, words):
    make(tmp_path)
    name = next((p.name for p in tmp_path.iterdir()), "x.npy")
    status, _, err = _run(capsys, "predict", saved_model, tmp_path / name, "--out",
                          tmp_path / "out.csv")
    assert status == 1
    assert words in err and err.startswith("nldseg predict: error:")


def test_predict_errors(tmp_path, capsys, saved_model, tiny_data):
    np.save(tmp_path / "x.npy", np.zeros((2, 5, 3)))
    status, _, err = _run(capsys, "predict", saved_model, tmp_path / "x.npy", "--out",
                          tmp_path / "out.csv")
    assert status == 1 and "3 features" in err and "expecting 8" in err
    np.save(tmp_path / "x.npy", np.full((1, 5, 8), np.nan))
    status, _, err = _run(capsys, "predict", saved_model, tmp_path / "x.npy", "--out",
                          tmp_path / "out.csv")
    assert status == 1 and "NaN" in err
    status, _, err = _run(capsys, "predict", saved_model, tmp_path / "x.npy", "--out",
                          tmp_path / "out.npy")
    assert status == 1 and "expected one of .csv, .npz" in err
    status, _, err = _run(capsys, "predict", tmp_path / "none.nldseg",
                          tmp_path / "x.npy", "--out", tmp_path / "out.csv")
    assert status == 1 and "MODEL file not found" in err
    (tmp_path / "junk.nldseg").write_bytes(b"junk")
    status, _, err = _run(capsys, "info", tmp_path / "junk.nldseg")
    assert status == 1 and "junk.nldseg" in err
    with pytest.raises(SystemExit) as usage:
        main(["predict", str(saved_model)])  # no DATA, no --out
    assert usage.value.code == 2


def test_pickles_refused_unless_allowed(tiny_fitted, tiny_data, tmp_path, capsys):
    path = tmp_path / "model.pkl"
    joblib.dump(tiny_fitted, path)
    with pytest.raises(CommandError, match="--allow-pickle"):
        load_model(str(path))
    status, _, err = _run(capsys, "info", path)
    assert status == 1 and "runs code" in err
    with pytest.warns(UserWarning, match="runs code from the file"):
        model = load_model(str(path), allow_pickle=True)
    X_test = tiny_data[1]
    np.testing.assert_array_equal(model.predict(X_test), tiny_fitted.predict(X_test))
    joblib.dump({"not": "a model"}, tmp_path / "other.pkl")
    with pytest.warns(UserWarning), pytest.raises(CommandError, match="holds a dict"):
        load_model(str(tmp_path / "other.pkl"), allow_pickle=True)


def test_info_text(saved_model, capsys):
    status, out, _ = _run(capsys, "info", saved_model)
    assert status == 0
    assert "states: 3" in out and "features: 8" in out and "torch" in out


def test_fit_errors(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(4, 20, 3)))
    for args, words in [
        (["--set", "max_iter"], "name=value"),
        (["--set", "speed=3"], "Unknown parameter 'speed'"),
        (["--set", "max_iter=-1"], "max_iter"),
        (["--set", "dynamics=sideways"], "dynamics"),
    ]:
        status, _, err = _run(capsys, "fit", tmp_path / "x.npy", "--out",
                              tmp_path / "m.nldseg", "--quiet", *args)
        assert status == 1 and words in err, err
    status, _, err = _run(capsys, "fit", tmp_path / "x.npy", "--out",
                          tmp_path / "m.pkl")
    assert status == 1 and "*.nldseg" in err
    status, _, err = _run(capsys, "fit", tmp_path / "x.npy", "--out",
                          tmp_path / "no" / "m.nldseg")
    assert status == 1 and "does not exist" in err
    assert not (tmp_path / "m.nldseg").exists()


def test_parse_settings_values():
    assert parse_settings(["max_iter=50", "dt=0.25", "n_states=None", "device=cpu",
                           "early_stopping=false", "decoder_covariance=\"diag\""]) == {
        "max_iter": 50, "dt": 0.25, "n_states": None, "device": "cpu",
        "early_stopping": False, "decoder_covariance": "diag"}
