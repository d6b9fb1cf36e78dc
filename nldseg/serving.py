"""Serve a fitted segmenter: batch labelling over HTTP, online labelling over WebSocket.

An ASGI application built on FastAPI and run by uvicorn (``pip install
"nldseg[serve]"``); ``nldseg serve MODEL`` starts it from the command line.

Endpoints
---------
``POST /predict``
    Body ``{"sequences": [[[x, ...], ...], ...], "proba": false}``: a list of
    sequences, each a list of observations of ``n_features`` numbers. Answer
    ``{"labels": [[k, ...], ...], "n_states": K}`` (and ``"proba"``, one row of
    ``K`` probabilities per step, when asked for), equal to
    :meth:`~nldseg.LangevinSegmenter.predict` and
    :meth:`~nldseg.LangevinSegmenter.predict_proba` on the same sequences.
``WebSocket /stream``
    One online stream (:meth:`~nldseg.LangevinSegmenter.stream`) per
    connection. Send ``{"x": [x, ...]}`` (one observation) or ``{"x": [[x,
    ...], ...]}`` (several, in order); every observation is answered, in order,
    with ``{"t": t, "label": k, "proba": [...]}``, equal to
    ``stream().update``'s. ``{"reset": true}`` starts a new sequence on the
    same connection. The stream is closed when the client disconnects.
``GET /health``, ``GET /model``
    Liveness with the number of open streams; the model's parameters, states,
    occupancy, feature count and versions.

Replacing the model
-------------------
:func:`replace_model` (``kill -HUP`` on ``nldseg serve``) swaps the model in
a running service: later requests and streams use the new one, streams open
at that moment go on with the model they started with, so no stream is lost
or changes its labelling midway.

Errors
------
Bad input is answered with the library's own error message, and never changes
the model or another client's stream. Over HTTP: 400 (not JSON, missing
fields), 413 (body over ``max_body_bytes``), 422 (data the model rejects: wrong
feature count, NaN, text). On a stream: a message ``{"error": message,
"status": 400 or 422, "t": n}`` (``n`` observations consumed so far); the bad
observation is not consumed, the observations of the same message before it
are, and the stream stays open. A message over ``max_message_bytes`` closes
the connection with code 1009; a connection beyond ``max_streams`` open ones is
refused with code 1013 (try again later).

Concurrency: stream updates (about half a millisecond each) run on the event
loop, one connection's messages in order; ``/predict`` runs in a worker thread
so that long batches do not hold up the streams. Both run on the model's
``n_threads`` torch threads (1 by default).
"""

# No "from __future__ import annotations": FastAPI reads the endpoints'
# annotations (Request, WebSocket), which are imported inside create_app.
import json
import logging
import signal

import numpy as np

from nldseg._frontend import label_sequences, model_summary
from nldseg._validation import check_observation

DEFAULT_MAX_BODY_BYTES = 64 * 2**20
DEFAULT_MAX_MESSAGE_BYTES = 2**20
DEFAULT_MAX_STREAMS = 256
_SEQUENCES_FORMAT = ("a list of sequences, each a list of observations of "
                     "n_features numbers")


class _BadInput(Exception):
    """A request the service answers with ``status`` and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"nldseg's service needs FastAPI and uvicorn ({module} is "
                          f"missing): pip install 'nldseg[serve]'") from exc


def _parse_json(text) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _BadInput(400, f"The message is not valid JSON: {exc}") from exc


def _batch_request(payload) -> tuple[list, bool]:
    """``(sequences, with_proba)`` of a ``/predict`` body; raises :class:`_BadInput`."""
    if not isinstance(payload, dict) or "sequences" not in payload:
        raise _BadInput(400, f"Expected a JSON object with a 'sequences' field: "
                             f"{_SEQUENCES_FORMAT}.")
    unknown = sorted(set(payload) - {"sequences", "proba"})
    if unknown:
        raise _BadInput(400, f"Unknown field(s) {unknown}; expected 'sequences' and "
                             f"optionally 'proba'.")
    with_proba = payload.get("proba", False)
    if not isinstance(with_proba, bool):
        raise _BadInput(400, f"'proba' must be true or false, got {with_proba!r}.")
    raw = payload["sequences"]
    if not isinstance(raw, list) or not raw:
        raise _BadInput(400, f"'sequences' must be a non-empty list: {_SEQUENCES_FORMAT}.")
    sequences = []
    for i, seq in enumerate(raw):
        try:
            arr = np.asarray(seq)
        except ValueError as exc:
            raise _BadInput(422, f"Sequence {i} could not be read as an array "
                                 f"({exc}).") from exc
        if arr.ndim != 2:
            raise _BadInput(422, f"Sequence {i} has shape {arr.shape}; each sequence "
                                 f"must be a list of observations, each a list of "
                                 f"n_features numbers.")
        sequences.append(arr)
    return sequences, with_proba


def _predict(estimator, sequences: list, with_proba: bool) -> dict:
    """The answer of ``/predict``: ``predict``/``predict_proba`` on ``sequences``."""
    try:
        labels, proba = label_sequences(estimator, sequences, with_proba)
    except (ValueError, TypeError) as exc:
        raise _BadInput(422, str(exc)) from exc
    answer = {"labels": [lab.tolist() for lab in labels],
              "n_states": int(estimator.n_states_)}
    if proba is not None:
        answer["proba"] = [p.tolist() for p in proba]
    return answer


def _stream_rows(payload, n_features: int) -> np.ndarray | None:
    """The observations of a stream message (2-D), or ``None`` for a reset."""
    if isinstance(payload, dict) and payload.get("reset") is True and len(payload) == 1:
        return None
    if not isinstance(payload, dict) or set(payload) != {"x"}:
        raise _BadInput(400, 'Expected {"x": [x_1, ..., x_d]} (one observation), '
                             '{"x": [[...], ...]} (several) or {"reset": true}.')
    try:
        rows = np.asarray(payload["x"])
    except ValueError as exc:
        raise _BadInput(422, f"Could not read the observation as an array: "
                             f"{exc}") from exc
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[0] == 0:
        # Let the library name the problem (shape, dtype) of the first row.
        try:
            check_observation(rows, n_features)
        except (ValueError, TypeError) as exc:
            raise _BadInput(422, str(exc)) from exc
    return rows


class _Served:
    """The model in service: the estimator, its summary and feature count."""

    def __init__(self, estimator) -> None:
        from nldseg._estimator import LangevinSegmenter

        if not isinstance(estimator, LangevinSegmenter):
            raise TypeError(f"The service needs a fitted LangevinSegmenter, got "
                            f"{type(estimator).__name__}.")
        self.estimator = estimator
        self.summary = model_summary(estimator)  # Also checks that it is fitted.
        self.n_features = self.summary["n_features"]


def replace_model(app, estimator) -> None:
    """Serve ``estimator`` from now on in ``app`` (made by :func:`create_app`).

    Requests and streams that start later use ``estimator``; streams already
    open keep the model they started with until they close. The swap is one
    assignment: no request sees half of each model.

    Parameters
    ----------
    app : fastapi.FastAPI
        A running or not yet started service.
    estimator : LangevinSegmenter
        A fitted model; it may have another number of states or features.

    Raises
    ------
    TypeError, sklearn.exceptions.NotFittedError
        If ``estimator`` is not a fitted :class:`~nldseg.LangevinSegmenter`;
        the service keeps its model.

    Examples
    --------
    >>> from nldseg import LangevinSegmenter
    >>> from nldseg.datasets import make_markov_chain_sequences
    >>> from nldseg.serving import create_app, replace_model
    >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
    >>> old = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
    >>> new = LangevinSegmenter(hidden_size=16, max_iter=3, random_state=1).fit(X)
    >>> app = create_app(old)
    >>> replace_model(app, new)
    >>> app.state.served.estimator is new
    True
    """
    app.state.served = _Served(estimator)


def create_app(estimator, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
               max_streams: int = DEFAULT_MAX_STREAMS):
    """The service's ASGI application for a fitted :class:`~nldseg.LangevinSegmenter`.

    Parameters
    ----------
    estimator : LangevinSegmenter
        A fitted model (e.g. from :meth:`~nldseg.LangevinSegmenter.load`).
        The service only reads it.
    max_body_bytes : int, default=64 MiB
        Largest ``/predict`` body; larger ones get 413.
    max_message_bytes : int, default=1 MiB
        Largest stream message; a larger one closes its connection (1009).
    max_streams : int, default=256
        Streams open at once; more connections are refused (1013).

    Returns
    -------
    app : fastapi.FastAPI
        Run it with any ASGI server, or use :func:`make_server`.

    Examples
    --------
    >>> from nldseg import LangevinSegmenter
    >>> from nldseg.datasets import make_markov_chain_sequences
    >>> from nldseg.serving import create_app
    >>> X, _ = make_markov_chain_sequences(20, 60, n_features=5, random_state=0)
    >>> seg = LangevinSegmenter(hidden_size=16, max_iter=2, random_state=0).fit(X)
    >>> app = create_app(seg)
    >>> sorted(r.path for r in app.routes if r.path in ("/predict", "/stream"))
    ['/predict', '/stream']
    """
    fastapi = _require("fastapi")
    from fastapi import HTTPException, Request, WebSocket, WebSocketDisconnect
    from starlette.concurrency import run_in_threadpool

    served = _Served(estimator)
    for name, value in [("max_body_bytes", max_body_bytes),
                        ("max_message_bytes", max_message_bytes),
                        ("max_streams", max_streams)]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    app = fastapi.FastAPI(title="nldseg", version=served.summary["versions"]["nldseg"])
    app.state.served = served
    app.state.open_streams = 0

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "open_streams": app.state.open_streams}

    @app.get("/model")
    def model() -> dict:
        return app.state.served.summary

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        try:
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and \
                    int(declared) > max_body_bytes:
                raise _BadInput(413, f"The body ({declared} bytes) is larger than "
                                     f"max_body_bytes={max_body_bytes}.")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    raise _BadInput(413, f"The body is larger than "
                                         f"max_body_bytes={max_body_bytes}.")
            sequences, with_proba = _batch_request(_parse_json(bytes(body)))
            return await run_in_threadpool(_predict, app.state.served.estimator,
                                           sequences, with_proba)
        except _BadInput as exc:
            raise HTTPException(exc.status, detail=exc.message) from None

    @app.websocket("/stream")
    async def stream(ws: WebSocket) -> None:
        if app.state.open_streams >= max_streams:
            await ws.accept()  # Closing before accepting would only say HTTP 403.
            await ws.close(code=1013, reason=f"max_streams={max_streams} streams are "
                                             f"open; try again later")
            return
        await ws.accept()
        app.state.open_streams += 1
        served = app.state.served  # This stream's model, even after a replacement.
        labeller = served.estimator.stream()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    await ws.send_text(json.dumps(
                        {"error": "Send JSON text messages, not binary ones.",
                         "status": 400, "t": labeller.n_steps_}))
                    continue
                if len(text) > max_message_bytes or \
                        len(text.encode("utf-8")) > max_message_bytes:
                    await ws.close(code=1009, reason=f"message larger than "
                                                     f"max_message_bytes="
                                                     f"{max_message_bytes}")
                    break
                try:
                    rows = _stream_rows(_parse_json(text), served.n_features)
                    if rows is None:
                        labeller.reset()
                        await ws.send_text('{"reset": true, "t": 0}')
                        continue
                    for row in rows:
                        t = labeller.n_steps_
                        try:
                            label, proba = labeller.update(row)
                        except (ValueError, TypeError) as exc:
                            raise _BadInput(422, str(exc)) from exc
                        await ws.send_text(json.dumps(
                            {"t": t, "label": label, "proba": proba.tolist()}))
                except _BadInput as exc:
                    await ws.send_text(json.dumps(
                        {"error": exc.message, "status": exc.status,
                         "t": labeller.n_steps_}))
        except WebSocketDisconnect:
            pass
        finally:
            app.state.open_streams -= 1

    return app


def make_server(estimator, *, host: str = "127.0.0.1", port: int = 8000,
                log_level: str = "info", **limits):
    """A ``uvicorn.Server`` running :func:`create_app` (``**limits`` go to it).

    uvicorn's own WebSocket message limit is set to ``max_message_bytes``.
    Start it with ``server.run()``, or ``server.run(sockets=[sock])`` on a
    socket bound beforehand.
    """
    uvicorn = _require("uvicorn")
    app = create_app(estimator, **limits)
    max_message = limits.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            ws_max_size=max_message, lifespan="off")
    return uvicorn.Server(config)


def run(estimator, *, host: str = "127.0.0.1", port: int = 8000,
        log_level: str = "info", reload=None, **limits) -> None:
    """Serve ``estimator`` until interrupted (what ``nldseg serve`` calls).

    Parameters
    ----------
    estimator : LangevinSegmenter
        A fitted model.
    host : str, default="127.0.0.1"
        Address to listen on; the default takes connections from this machine
        only.
    port : int, default=8000
        Port to listen on.
    log_level : str, default="info"
        uvicorn's log level.
    reload : callable, default=None
        Returns a fitted model; called on ``SIGHUP`` (POSIX), and its model
        replaces the served one (:func:`replace_model`). If it raises, the
        error is logged and the service keeps its model.
    **limits
        ``max_body_bytes``, ``max_message_bytes``, ``max_streams`` of
        :func:`create_app`.
    """
    server = make_server(estimator, host=host, port=port, log_level=log_level, **limits)
    if reload is not None and hasattr(signal, "SIGHUP"):
        log = logging.getLogger("uvicorn.error")

        def on_hangup(*_):
            try:
                replace_model(server.config.app, reload())
            except Exception as exc:  # A bad file must not stop the service.
                log.error("Reload failed, still serving the previous model: %s", exc)
                return
            log.info("Reloaded the model; streams already open keep the previous one.")

        signal.signal(signal.SIGHUP, on_hangup)
    server.run()
