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
    assert [x.shape for x in X] == [(3, 2), (3, 2)]
    np.testing.assert_array_equal(X[0], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(X[1][:, 0], [0.5, 0.25, 0])
    np.testing.assert_array_equal(y, [1, 0])


def _write_ts(path, clips, labels, classes):
    """A ``.ts`` file of ``clips`` (each channels x length) with ``labels``."""
    lines = [f"@dimensions {len(clips[0])}", "@classLabel true " + " ".join(classes),
             "@data"]
    for clip, k in zip(clips, labels):
        lines.append(":".join(",".join(repr(float(v)) for v in ch) for ch in clip)
                     + ":" + classes[k])
    path.write_text("\n".join(lines) + "\n")


def test_basic_motions_recording_joins_permuted_clips(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(8, 6, 100))
    labels = [0, 1, 2, 3, 3, 2, 1, 0]
    _write_ts(tmp_path / "BasicMotions_TRAIN.ts", clips, labels,
              recorded.BASIC_MOTIONS_CLASSES)
    monkeypatch.setattr(recorded, "data_dir", lambda name: str(tmp_path))
    X, y = recorded.basic_motions_recording("train", random_state=3)
    assert X.shape == (800, 6) and y.shape == (800,)
    order = np.random.default_rng(3).permutation(8)
    for i, j in enumerate(order):  # clip i of the recording is file clip j
        np.testing.assert_array_equal(X[100 * i:100 * (i + 1)], clips[j].T)
        assert (y[100 * i:100 * (i + 1)] == labels[j]).all()
    X2, _ = recorded.basic_motions_recording("train", random_state=3)
    np.testing.assert_array_equal(X, X2)


def test_japanese_vowels_recording_joins_clips_of_unequal_length(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    lengths = [7, 29, 12, 15, 9, 20]
    clips = [rng.normal(size=(12, n)) for n in lengths]
    labels = [0, 8, 3, 3, 5, 1]
    _write_ts(tmp_path / "JapaneseVowels_TEST.ts", clips, labels,
              recorded.JAPANESE_VOWELS_CLASSES)
    monkeypatch.setattr(recorded, "data_dir", lambda name: str(tmp_path))
    X, y = recorded.japanese_vowels_recording("test", random_state=5)
    assert X.shape == (sum(lengths), 12) and y.shape == (sum(lengths),)
    start = 0
    for j in np.random.default_rng(5).permutation(len(clips)):
        np.testing.assert_array_equal(X[start:start + lengths[j]], clips[j].T)
        assert (y[start:start + lengths[j]] == labels[j]).all()
        start += lengths[j]


def test_unexpected_classes_are_refused(tmp_path, monkeypatch):
    _write_ts(tmp_path / "JapaneseVowels_TRAIN.ts", [np.zeros((12, 7))], [0],
              ("a", "b"))
    monkeypatch.setattr(recorded, "data_dir", lambda name: str(tmp_path))
    with pytest.raises(RuntimeError, match="unexpected classes in JapaneseVowels"):
        recorded.japanese_vowels_recording("train", random_state=0)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps aeon"):
        recorded.data_dir("BasicMotions")
