"""The benchmark suite's reader of recorded data (``benchmarks/_recorded.py``).

The recorded files themselves ship in the aeon wheel, which is not a test
dependency; these tests write small files of the same format.
"""

import importlib.util
import os

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "_recorded.py")
_spec = importlib.util.spec_from_file_location("_recorded", _PATH)
recorded = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorded)

_TS = """#A comment line
@problemName Tiny
@univariate false
@dimensions 2
@seriesLength 3
@classLabel true Standing Running
@data
1.0,2.0,3.0:4.0,5.0,6.0:Running
0.5,0.25,0:1,1,1:Standing
"""


def test_read_ts_gives_clips_time_by_channel_and_class_order(tmp_path):
    path = tmp_path / "tiny.ts"
    path.write_text(_TS)
    X, y, classes = recorded.read_ts(str(path))
    assert classes == ("Standing", "Running")
    assert X.shape == (2, 3, 2)
    np.testing.assert_array_equal(X[0], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(X[1, :, 0], [0.5, 0.25, 0])
    np.testing.assert_array_equal(y, [1, 0])


def test_basic_motions_recording_joins_permuted_clips(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    lines = ["@dimensions 6", "@classLabel true " + " ".join(
        recorded.BASIC_MOTIONS_CLASSES), "@data"]
    clips = rng.normal(size=(8, 6, 100))
    labels = [0, 1, 2, 3, 3, 2, 1, 0]
    for clip, k in zip(clips, labels):
        lines.append(":".join(",".join(repr(float(v)) for v in ch) for ch in clip)
                     + ":" + recorded.BASIC_MOTIONS_CLASSES[k])
    (tmp_path / "BasicMotions_TRAIN.ts").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(recorded, "data_dir", lambda name: str(tmp_path))
    X, y = recorded.basic_motions_recording("train", random_state=3)
    assert X.shape == (800, 6) and y.shape == (800,)
    order = np.random.default_rng(3).permutation(8)
    for i, j in enumerate(order):  # clip i of the recording is file clip j
        np.testing.assert_array_equal(X[100 * i:100 * (i + 1)], clips[j].T)
        assert (y[100 * i:100 * (i + 1)] == labels[j]).all()
    X2, _ = recorded.basic_motions_recording("train", random_state=3)
    np.testing.assert_array_equal(X, X2)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps aeon"):
        recorded.data_dir("BasicMotions")
