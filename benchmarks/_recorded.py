"""Recorded (not simulated) data for the benchmark suite.

**BasicMotions** (UEA multivariate time-series classification archive,
Bagnall et al. 2018, "The UEA multivariate time series classification
archive, 2018", arXiv:1811.00075; recorded by J. Clements for a student
project): four students wore a smart watch (3-D accelerometer and 3-D
gyroscope, sampled at 10 Hz) and each recorded four activities (standing,
walking, running, badminton) five times, for 10 s each; 80 clips of 100
steps, 6 channels, split 40 / 40 into a training and a test file with 10
clips of each activity in each.

The files ship inside the ``aeon`` and ``sktime`` wheels on PyPI (the same
bytes); nothing is downloaded at run time. Only the data files are read, so
``pip install --no-deps aeon`` (6 MB) is enough: the package is located with
:func:`importlib.util.find_spec`, never imported.

**JapaneseVowels** (UCI machine learning repository; Kudo, Toyama and
Shimbo 1999, "Multidimensional curve classification using passing-through
regions", Pattern Recognition Letters 20(11-13):1103-1111; also in the UEA
archive): nine Japanese men each said the vowel pair /ae/ several times;
each utterance is 7-29 frames of 12 LPC cepstrum coefficients (a 12-degree
linear prediction analysis of the sound). The training file has 30
utterances per speaker (270), the test file 24-88 per speaker (370). Here
the speaker is the state: a recording of utterances end to end is a
conversation of nine voices taking short turns (about 16 frames each).

A recording is the clips of one file in a random order, end to end, as the
Time Series Segmentation Benchmark builds its series from classification
archives (Ermshaus et al. 2023): each clip is one class (an activity, a
speaker), so the true segmentation is known, and clips of the same class
that come one after the other make one longer segment. The joins are where
one recording ends and another begins (often a jump in the readings).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

#: Activities in the files' class order.
BASIC_MOTIONS_CLASSES = ("Standing", "Running", "Walking", "Badminton")
#: Speakers in the files' class order.
JAPANESE_VOWELS_CLASSES = tuple(str(k) for k in range(1, 10))

_PACKAGES = ("aeon", "sktime")


def data_dir(name: str) -> str:
    """The folder of data set ``name`` inside an installed aeon or sktime."""
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            folder = os.path.join(root, "datasets", "data", name)
            if os.path.isdir(folder):
                return folder
    raise RuntimeError(
        f"the recorded data set {name} ships inside the aeon (or sktime) wheel; "
        "install the files with: pip install --no-deps aeon")


def read_ts(path: str) -> tuple:
    """Clips and class labels of a multivariate ``.ts`` file.

    Returns ``(X, y, classes)``: ``X`` a list of one array (length,
    n_channels) per clip (lengths may differ between clips), ``y`` integer
    labels in the order of the file's ``@classLabel`` line.
    """
    classes: list = []
    clips, labels = [], []
    in_data = False
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if line.lower().startswith("@classlabel"):
                    classes = line.split()[2:]
                in_data = line.lower() == "@data"
                continue
            *channels, label = line.split(":")
            clips.append(np.array([[float(v) for v in c.split(",")] for c in channels]).T)
            labels.append(classes.index(label))
    return clips, np.array(labels), tuple(classes)


def _recording(name: str, split: str, expected: tuple, random_state: int) -> tuple:
    """The clips of ``name``'s ``split`` file in a permuted order, end to end.

    Returns ``(X (n_steps, n_channels), y (n_steps,))``, ``y`` in the order of
    ``expected`` (the file's class labels, checked).
    """
    X, y, classes = read_ts(os.path.join(data_dir(name), f"{name}_{split.upper()}.ts"))
    if classes != expected:
        raise RuntimeError(f"unexpected classes in {name}: {classes}")
    order = np.random.default_rng(random_state).permutation(len(X))
    return (np.concatenate([X[i] for i in order]).astype(np.float64),
            np.concatenate([np.full(len(X[i]), y[i]) for i in order]))


def basic_motions_recording(split: str, random_state: int) -> tuple:
    """One recording of BasicMotions ``split`` (``"train"`` or ``"test"``).

    The split's 40 clips in the order of a permutation drawn with
    ``random_state``, end to end: ``(X (4000, 6), y (4000,))``; ``y`` in
    :data:`BASIC_MOTIONS_CLASSES` order.
    """
    return _recording("BasicMotions", split, BASIC_MOTIONS_CLASSES, random_state)


def japanese_vowels_recording(split: str, random_state: int) -> tuple:
    """One recording of JapaneseVowels ``split`` (``"train"`` or ``"test"``).

    The split's utterances (270 for training, 370 for test; 7-29 frames of
    12 LPC cepstrum coefficients each) in the order of a permutation drawn
    with ``random_state``, end to end: ``(X (n_steps, 12), y (n_steps,))``,
    4,274 training and 5,687 test frames; ``y`` is the speaker, 0-8.
    """
    return _recording("JapaneseVowels", split, JAPANESE_VOWELS_CLASSES, random_state)
