"""The service, tested over a real uvicorn server on a loopback port with real clients."""

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402

from nldseg.serving import create_app, make_server, replace_model  # noqa: E402

MAX_BODY = 200_000
MAX_MESSAGE = 20_000


@contextlib.contextmanager
def _running(model, **limits):
    """A real server of ``model`` on a free loopback port; yields ``(host:port, app)``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = make_server(model, port=port, log_level="warning", **limits)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}", srv.config.app
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(tiny_fitted):
    """``host:port`` of a server of the 3-well ``tiny_fitted``."""
    with _running(tiny_fitted, max_body_bytes=MAX_BODY, max_message_bytes=MAX_MESSAGE,
                  max_streams=40) as (base, _):
        yield base


def _local_stream(seg, seq):
    stream = seg.stream()
    return [stream.update(x) for x in seq]


def _remote_stream(base, seq, per_message=1):
    """Stream ``seq`` over a WebSocket; returns the answers as dicts."""
    answers = []
    with ws_client.connect(f"ws://{base}/stream") as ws:
        for start in range(0, len(seq), per_message):
            rows = seq[start:start + per_message]
            x = rows[0].tolist() if per_message == 1 else rows.tolist()
            ws.send(json.dumps({"x": x}))
            answers.extend(json.loads(ws.recv()) for _ in rows)
    return answers


def _assert_same(answers, local):
    assert len(answers) == len(local)
    for t, (answer, (label, proba)) in enumerate(zip(answers, local)):
        assert answer["t"] == t
        assert answer["label"] == label
        assert answer["proba"] == proba.tolist()  # bit for bit through JSON


def test_health_and_model(server, tiny_fitted):
    health = httpx.get(f"http://{server}/health").json()
    assert health["status"] == "ok"
    model = httpx.get(f"http://{server}/model").json()
    assert model["n_states"] == tiny_fitted.n_states_ == 3
    assert model["n_features"] == tiny_fitted.n_features_in_
    assert model["state_occupancy"] == tiny_fitted.state_occupancy_.tolist()
    assert model["parameters"]["hidden_size"] == tiny_fitted.hidden_size
    assert set(model["versions"]) >= {"nldseg", "torch", "numpy", "scikit-learn"}


def test_predict_equals_library(server, tiny_fitted, tiny_data):
    _, X_test, _ = tiny_data
    seqs = [X_test[0], X_test[1, :17], X_test[2, :1]]  # ragged, one of 1 step
    body = {"sequences": [s.tolist() for s in seqs], "proba": True}
    answer = httpx.post(f"http://{server}/predict", json=body, timeout=60).json()
    labels = tiny_fitted.predict(seqs)
    proba = tiny_fitted.predict_proba(seqs)
    assert answer["n_states"] == 3
    assert [np.array(lab).tolist() for lab in answer["labels"]] == \
        [lab.tolist() for lab in labels]
    assert answer["proba"] == [p.tolist() for p in proba]
    assert len(set(np.concatenate(labels).tolist())) >= 2  # labels that can differ
    plain = httpx.post(f"http://{server}/predict",
                       json={"sequences": body["sequences"]}, timeout=60).json()
    assert plain["labels"] == answer["labels"] and "proba" not in plain


@pytest.mark.parametrize("body, status, words", [
    ({"sequences": [[[0.0] * 5] * 4]}, 422, "features"),
    ({"sequences": [[[float("nan")] * 8] * 4]}, 422, "NaN"),
    ({"sequences": [[["a"] * 8] * 4]}, 422, "strings"),
    ({"sequences": [[0.0] * 8]}, 422, "shape (8,)"),
    ({"sequences": []}, 400, "non-empty"),
    ({"x": 1}, 400, "sequences"),
    ({"sequences": [[[0.0] * 8]], "proba": "yes"}, 400, "proba"),
])
def test_predict_bad_input(server, body, status, words):
    r = httpx.post(f"http://{server}/predict", content=json.dumps(body),
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_predict_not_json_and_oversized(server):
    r = httpx.post(f"http://{server}/predict", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    big = json.dumps({"sequences": [[[0.5] * 8] * 5000]})
    assert len(big) > MAX_BODY
    r = httpx.post(f"http://{server}/predict", content=big)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

    def chunks():  # No content-length: the limit is counted while reading.
        for start in range(0, len(big), 10_000):
            yield big[start:start + 10_000].encode()
    r = httpx.post(f"http://{server}/predict", content=chunks())
    assert r.status_code == 413


def test_streams_equal_local_streams_concurrently(server, tiny_fitted, tiny_data):
    """Six concurrent streams, one and several observations per message."""
    _, X_test, _ = tiny_data
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_remote_stream, server, X_test[i], 1 + 4 * (i % 2))
                   for i in range(6)]
        results = [f.result(timeout=120) for f in futures]
    changed = 0
    for i, answers in enumerate(results):
        local = _local_stream(tiny_fitted, X_test[i])
        _assert_same(answers, local)
        changed += len({label for label, _ in local}) > 1
    assert changed >= 2  # streams whose labels change: a wrong answer would show


def test_bad_messages_and_disconnects_leave_other_streams_alone(server, tiny_fitted,
                                                                tiny_data):
    _, X_test, _ = tiny_data
    seq = X_test[3]
    local = _local_stream(tiny_fitted, seq)
    stop = threading.Event()
    rounds = []

    def hostile():
        """Bad messages, oversized ones and abrupt disconnects, in a loop."""
        while not stop.is_set():
            with ws_client.connect(f"ws://{server}/stream") as ws:
                ws.send(json.dumps({"x": seq[0].tolist()}))
                ws.recv()
                ws.send("{oops")
                assert json.loads(ws.recv())["status"] == 400
                ws.send(json.dumps({"x": [1.0, 2.0]}))
                assert "shape" in json.loads(ws.recv())["error"]
                ws.send(json.dumps({"x": ["a"] * 8}))
                assert json.loads(ws.recv())["status"] == 422
                ws.send(json.dumps({"x": [float("nan")] * 8}))
                assert "NaN" in json.loads(ws.recv())["error"]
            # Disconnect mid-stream without a closing handshake.
            with ws_client.connect(f"ws://{server}/stream") as ws:
                ws.send(json.dumps({"x": seq[:3].tolist()}))
                ws.socket.shutdown(socket.SHUT_RDWR)
            with ws_client.connect(f"ws://{server}/stream") as ws:
                ws.send(json.dumps({"x": [[0.5] * 8] * 1000}))  # > max_message_bytes
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv()
                assert closed.value.rcvd.code == 1009
            rounds.append(1)

    with ThreadPoolExecutor(3) as pool:
        bad = pool.submit(hostile)
        honest = [pool.submit(_remote_stream, server, seq) for _ in range(2)]
        answers = [f.result(timeout=120) for f in honest]
        stop.set()
        bad.result(timeout=60)
    assert rounds  # the hostile client ran while the honest ones streamed
    for a in answers:
        _assert_same(a, local)
    assert httpx.get(f"http://{server}/health").json()["status"] == "ok"


def test_bad_message_is_not_consumed(server, tiny_fitted, tiny_data):
    """An error mid-stream answers the steps before it and keeps the stream's state."""
    _, X_test, _ = tiny_data
    seq = X_test[4]
    local = _local_stream(tiny_fitted, seq)
    answers = []
    with ws_client.connect(f"ws://{server}/stream") as ws:
        ws.send(json.dumps({"x": seq[:4].tolist() + [[float("nan")] * 8]}))
        answers.extend(json.loads(ws.recv()) for _ in range(4))
        error = json.loads(ws.recv())
        assert error["t"] == 4 and error["status"] == 422
        for x in seq[4:]:
            ws.send(json.dumps({"x": x.tolist()}))
            answers.append(json.loads(ws.recv()))
        ws.send(json.dumps({"reset": True}))
        assert json.loads(ws.recv()) == {"reset": True, "t": 0}
        ws.send(json.dumps({"x": seq[:3].tolist()}))
        again = [json.loads(ws.recv()) for _ in range(3)]
    _assert_same(answers, local)
    _assert_same(again, local[:3])


def test_too_many_streams_refused(tiny_fitted):
    with _running(tiny_fitted, max_streams=1) as (base, _), \
            ws_client.connect(f"ws://{base}/stream") as first:
        first.send(json.dumps({"reset": True}))
        first.recv()
        with ws_client.connect(f"ws://{base}/stream") as second, \
                pytest.raises(ConnectionClosed) as refused:
            second.recv()
        assert refused.value.rcvd.code == 1013


def test_create_app_rejects(tiny_fitted):
    from nldseg import LangevinSegmenter

    with pytest.raises(TypeError, match="LangevinSegmenter"):
        create_app(object())
    with pytest.raises(Exception, match="not fitted"):
        create_app(LangevinSegmenter())
    with pytest.raises(ValueError, match="max_streams"):
        create_app(tiny_fitted, max_streams=0)


def _send_all(ws, seq):
    answers = []
    for x in seq:
        ws.send(json.dumps({"x": x.tolist()}))
        answers.append(json.loads(ws.recv()))
    return answers


def test_replace_model_keeps_open_streams(tiny_fitted, tiny_underdamped, tiny_data):
    _, X_test, _ = tiny_data
    seq = X_test[5]
    old_local = _local_stream(tiny_fitted, seq)
    new_local = _local_stream(tiny_underdamped, seq)
    assert [lab for lab, _ in old_local] != [lab for lab, _ in new_local] or \
        any(a.tolist() != b.tolist() for (_, a), (_, b) in zip(old_local, new_local))
    with _running(tiny_fitted) as (base, app), \
            ws_client.connect(f"ws://{base}/stream") as old:
        answers = _send_all(old, seq[:20])
        with pytest.raises(TypeError):
            replace_model(app, "not a model")
        replace_model(app, tiny_underdamped)
        answers += _send_all(old, seq[20:])
        _assert_same(answers, old_local)  # the open stream kept its model
        with ws_client.connect(f"ws://{base}/stream") as new:
            _assert_same(_send_all(new, seq), new_local)
        model = httpx.get(f"http://{base}/model").json()
        assert model["parameters"]["dynamics"] == "underdamped"
        got = httpx.post(f"http://{base}/predict",
                         json={"sequences": [seq.tolist()]}).json()["labels"]
        assert got == [tiny_underdamped.predict(seq).tolist()]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
def test_nldseg_serve_reloads_on_sighup(tiny_fitted, tiny_underdamped, tiny_data,
                                        tmp_path):
    """The command's SIGHUP: a new model file is served; a damaged one is refused."""
    _, X_test, _ = tiny_data
    seq = X_test[5]
    path = tmp_path / "model.nldseg"
    tiny_fitted.save(path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nldseg", "serve", str(path),
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"127.0.0.1:{port}"

    def dynamics():
        return httpx.get(f"http://{base}/model").json()["parameters"]["dynamics"]

    def wait_for(predicate):
        deadline = time.monotonic() + 60
        while True:
            try:
                if predicate():
                    return
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)

    try:
        wait_for(lambda: dynamics() == "overdamped")
        with ws_client.connect(f"ws://{base}/stream") as old:
            answers = _send_all(old, seq[:10])
            tiny_underdamped.save(path)
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: dynamics() == "underdamped")
            answers += _send_all(old, seq[10:])
        _assert_same(answers, _local_stream(tiny_fitted, seq))
        path.write_bytes(b"damaged")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert dynamics() == "underdamped" and proc.poll() is None
    finally:
        proc.terminate()
        err = proc.communicate(timeout=20)[1]
    assert "Reload failed, still serving the previous model" in err


@pytest.mark.slow
def test_32_streams_of_1000(server, tiny_fitted):
    """The issue's load: 32 concurrent streams of 1,000 observations, all equal."""
    from nldseg.datasets import make_markov_chain_sequences

    X, _ = make_markov_chain_sequences(32, 1000, n_states=3, n_features=8,
                                       switch_prob=0.025, random_state=3,
                                       emission_random_state=1)
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(_remote_stream, server, seq) for seq in X]
        results = [f.result(timeout=600) for f in futures]
    for seq, answers in zip(X, results):
        _assert_same(answers, _local_stream(tiny_fitted, seq))
