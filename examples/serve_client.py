"""
Serving a fitted model: the command line, HTTP and WebSocket clients
=====================================================================

A model is fitted once and then labels data as it arrives. This example does
what a deployment does, from the command line and with ordinary clients:

1. ``nldseg fit`` fits a model on a ``.npy`` file and saves it in the safe
   ``.nldseg`` format (no pickle);
2. ``nldseg serve`` starts the service on a loopback port (needs
   ``pip install "nldseg[serve]"``);
3. an HTTP client labels whole sequences with ``POST /predict``;
4. a WebSocket client labels one sequence online, one observation per message,
   on ``/stream``, and the answers are compared with a local
   :meth:`~nldseg.LangevinSegmenter.stream`;
5. a malformed message gets an error answer and the stream goes on.

Run ``python examples/serve_client.py`` (about a minute on a CPU: the fit is
kept short with ``--set max_iter=300``; a real model would use the default
budget).
"""

# %%
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from websockets.sync.client import connect

from nldseg import LangevinSegmenter
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import segmentation_accuracy

NLDSEG = [sys.executable, "-m", "nldseg"]  # the same as the `nldseg` command

# %%
# Data: the paper's three-state chain, as files.
work = Path(tempfile.mkdtemp())
X, _ = make_markov_chain_sequences(200, 200, random_state=0, emission_random_state=0)
X_new, y_new = make_markov_chain_sequences(5, 300, random_state=1,
                                           emission_random_state=0)
np.save(work / "train.npy", X)

# %%
# 1. Fit from the command line.
model = work / "model.nldseg"
subprocess.run(NLDSEG + ["fit", str(work / "train.npy"), "--out", str(model),
                         "--set", "max_iter=300", "--set", "kl_warmup=200",
                         "--set", "random_state=0",
                         "--quiet"], check=True)
subprocess.run(NLDSEG + ["info", str(model)], check=True)

# %%
# 2. Serve it on a free loopback port.
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
server = subprocess.Popen(NLDSEG + ["serve", str(model), "--port", str(port)])
base = f"127.0.0.1:{port}"
try:
    for _ in range(600):
        try:
            if httpx.get(f"http://{base}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    print("model:", {k: v for k, v in httpx.get(f"http://{base}/model").json().items()
                     if k in ("n_states", "n_features", "state_occupancy")})

    # %%
    # 3. Label whole sequences over HTTP.
    answer = httpx.post(f"http://{base}/predict",
                        json={"sequences": X_new.tolist()}, timeout=60).json()
    labels = np.array(answer["labels"])
    print(f"POST /predict: {answer['n_states']} states, accuracy "
          f"{segmentation_accuracy(y_new, labels):.3f}")

    # %%
    # 4. Label one sequence online, one observation per message.
    seg = LangevinSegmenter.load(model)
    local = seg.stream()
    with connect(f"ws://{base}/stream") as ws:
        for t, x in enumerate(X_new[0]):
            ws.send(json.dumps({"x": x.tolist()}))
            reply = json.loads(ws.recv())
            label, proba = local.update(x)
            assert reply["label"] == label and reply["proba"] == proba.tolist()
            if t == 100:
                # 5. A malformed observation is answered with an error and not
                # consumed; the stream goes on where it was.
                ws.send(json.dumps({"x": [1.0, 2.0]}))
                print("bad message ->", json.loads(ws.recv()))
    print(f"/stream: {len(X_new[0])} answers, all equal to a local stream()")
finally:
    server.terminate()
    server.wait(10)
