"""The gate table: every rule against every door, each answering the contract's error.

Rules: missing key, wrong owner, rate limit, per-key session limit, stream limits (per key
and in all), body or frame size, content type. Doors: two ``/v1`` HTTP routes (fork, a
session route with a body, and predict), the session step, a WebSocket frame, ``/v2``
infer and ``/v2`` sequences, and gRPC: ``ModelInfer`` (stateless and of a sequence) and a
request on a ``ModelStreamInfer`` stream. A cell is left out only where the rule has
nothing to act on at that door: predict and stateless infer (``/v2``, gRPC) own no
session and create none; the step and a frame create no session; only the WebSocket and
``ModelStreamInfer`` hold a stream; a frame and gRPC have no content type; and ``/v2``'s
content-type rule is that it takes requests without one (tritonclient's).

Real apps (``create_app`` on the tiny store) through Starlette's ``TestClient``, which
speaks HTTP and WebSocket to the same app; for the gRPC doors the app's gRPC server
(``service.grpc.server.GrpcDoor``) runs on the app's event loop on a free port, over the
same core, and a real ``grpc`` channel calls it. A gRPC answer is the status code's name
and the error's stable code (the ``lstm-serve-error-code`` trailer, or the
``lstm_serve_error_code`` parameter of a stream's failed response, which answers
``error_message`` and leaves the stream open as Triton does).
"""

from __future__ import annotations

import contextlib
import queue
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from starlette.exceptions import StarletteDeprecationWarning
from starlette.websockets import WebSocketDisconnect
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.grpc.server import GrpcDoor
from service.grpc.servicer import ERROR_CODE
from service.http.app import create_app
from service.settings import Settings

with warnings.catch_warnings():  # starlette would rather have httpx2; httpx works as installed
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings(
    # TestClient works with httpx as installed; starlette would rather have httpx2
    "ignore::starlette.exceptions.StarletteDeprecationWarning"
)

KEY, OTHER = "ka", "kb"
STEP = b'{"inputs": [[1.0, 2.0, 3.0]]}'
PREDICT = STEP
FORK = b"{}"
TENSOR = {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 3], "data": [1.0, 2.0, 3.0]}
PAD = 2000
"""Whitespace that takes a body over the 1024-byte limit the size rule sets."""


@dataclass(frozen=True)
class Answer:
    status: int | str
    """HTTP status, a problem's status in a WebSocket error frame, or a close code; on gRPC
    the status code's name, or ``error_message`` for a stream's failed response."""
    code: str | None
    """The problem's ``code`` (``/v1``), the close reason (a closed socket), None on ``/v2``;
    on gRPC the error's stable code (None where gRPC itself refused the message)."""
    open: bool = False
    """A WebSocket or gRPC stream that answered an error and still steps afterwards."""

    @property
    def refused(self) -> bool:
        if isinstance(self.status, str):
            return self.status != "OK"
        return self.status >= 400


@dataclass
class Env:
    client: TestClient
    sid: str
    """A session of ``KEY``."""
    grpc: Any = None
    """A ``GRPCInferenceService`` stub on the app's gRPC door, where the door is started."""


def _auth(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def _padded(body: bytes, pad: bool) -> bytes:
    return body[:-1] + b" " * PAD + b"}" if pad else body


def _v1(r: Any) -> Answer:
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        problem = r.json()
        assert problem["status"] == r.status_code and isinstance(problem["detail"], str)
        return Answer(r.status_code, problem["code"])
    return Answer(r.status_code, None)


def _v2(r: Any) -> Answer:
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and isinstance(body["error"], str), r.text
    return Answer(r.status_code, None)


Door = Callable[[Env, str | None, bool, str | None], Answer]
"""``(env, key, oversized, content type) -> Answer`` for one request or frame."""


def fork(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    headers = {**_auth(key), **({"content-type": ctype} if ctype else {})}
    return _v1(
        env.client.post(f"/v1/sessions/{env.sid}/fork", content=_padded(FORK, big), headers=headers)
    )


def predict(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    headers = {**_auth(key), **({"content-type": ctype} if ctype else {})}
    url = "/v1/models/tiny_lstm/predict"
    return _v1(env.client.post(url, content=_padded(PREDICT, big), headers=headers))


def step(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    headers = {**_auth(key), **({"content-type": ctype} if ctype else {})}
    url = f"/v1/sessions/{env.sid}/step"
    return _v1(env.client.post(url, content=_padded(STEP, big), headers=headers))


def frame(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    """One frame on a fresh socket; an error frame is followed by a good frame, which must
    still be answered (the socket stays open) unless the rule refuses that one too."""
    url = f"/v1/sessions/{env.sid}/stream"
    try:
        with env.client.websocket_connect(url, headers=_auth(key)) as ws:
            ws.send_bytes(_padded(STEP, big))
            reply = orjson.loads(ws.receive_text())
            if "error" not in reply:
                return Answer(200, None)
            problem = reply["error"]
            ws.send_bytes(STEP)
            after = orjson.loads(ws.receive_text())
            still = "outputs" in after or after.get("error", {}).get("code") == problem["code"]
            return Answer(problem["status"], problem["code"], open=still)
    except WebSocketDisconnect as closed:
        return Answer(closed.code, closed.reason)


def _infer(env: Env, key: str | None, big: bool, ctype: str | None, params: Any) -> Answer:
    body: dict[str, Any] = {"inputs": [TENSOR]}
    if params:
        body["parameters"] = params
    headers = {**_auth(key), **({"content-type": ctype} if ctype else {})}
    raw = _padded(orjson.dumps(body), big)
    return _v2(env.client.post("/v2/models/tiny_lstm/infer", content=raw, headers=headers))


def v2_infer(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    return _infer(env, key, big, ctype, None)


def v2_sequence(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    """A request of sequence 7, which ``KEY`` started while setting up."""
    return _infer(env, key, big, ctype, {"sequence_id": 7})


def _metadata(key: str | None) -> list[tuple[str, str]]:
    return [] if key is None else [("authorization", f"Bearer {key}")]


def grpc_request(big: bool = False, **params: int | bool) -> Any:
    """A ``ModelInferRequest`` of one step of tiny_lstm; ``big`` pads its ``id`` past the
    1024-byte limit the size rule sets."""
    request = service_pb2.ModelInferRequest(model_name="tiny_lstm", id=" " * PAD if big else "")
    tensor = request.inputs.add(name="INPUT", datatype="FP32")
    tensor.shape.extend([1, 1, 3])
    request.raw_input_contents.append(np.array([1.0, 2.0, 3.0], dtype=np.float32).tobytes())
    for name, value in params.items():
        if isinstance(value, bool):
            request.parameters[name].bool_param = value
        else:
            request.parameters[name].int64_param = value
    return request


def _rpc_error(err: grpc.RpcError) -> Answer:
    call: Any = err  # a failed call is raised as its grpc.Call
    trailers = {str(k): str(v) for k, v in call.trailing_metadata() or ()}
    return Answer(call.code().name, trailers.get("lstm-serve-error-code"))


def _model_infer(env: Env, key: str | None, request: Any) -> Answer:
    try:
        env.grpc.ModelInfer(request, metadata=_metadata(key), timeout=20)
    except grpc.RpcError as err:
        return _rpc_error(err)
    return Answer("OK", None)


def grpc_infer(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    return _model_infer(env, key, grpc_request(big))


def grpc_sequence(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    """A ``ModelInfer`` of sequence 7, which ``KEY`` started while setting up."""
    return _model_infer(env, key, grpc_request(big, sequence_id=7))


class Stream:
    """A ``ModelStreamInfer`` call: ``send`` one request and read its response."""

    def __init__(self, env: Env, key: str | None) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()
        self.call = env.grpc.ModelStreamInfer(
            iter(self.requests.get, None), metadata=_metadata(key), timeout=30
        )

    def send(self, request: Any) -> Any:
        self.requests.put(request)
        return next(self.call)

    def close(self) -> None:
        self.requests.put(None)
        for _ in self.call:  # the server ends the call once the requests have ended
            pass


@contextmanager
def stream(env: Env, key: str | None) -> Iterator[Stream]:
    s = Stream(env, key)
    try:
        yield s
    finally:
        with contextlib.suppress(grpc.RpcError):  # a refused or failed call: nothing to close
            s.close()


def _failed(response: Any) -> str | None:
    """A stream response's error code, or None for an answer with outputs."""
    if not response.error_message:
        assert response.infer_response.raw_output_contents
        return None
    code: str = response.infer_response.parameters[ERROR_CODE].string_param
    assert code, response
    return code


def on_stream(s: Stream, first: Any) -> Answer:
    """``first`` on an open stream; after an error, a good request of sequence 7, which
    must still be answered (the stream stays open) unless the rule refuses it too."""
    code = _failed(s.send(first))
    if code is None:
        return Answer("OK", None)
    after = _failed(s.send(grpc_request(sequence_id=7)))
    return Answer("error_message", code, open=after in (None, code))


def grpc_stream(env: Env, key: str | None, big: bool, ctype: str | None) -> Answer:
    """A request of sequence 7 on a fresh ``ModelStreamInfer`` stream."""
    try:
        with stream(env, key) as s:
            return on_stream(s, grpc_request(big, sequence_id=7))
    except grpc.RpcError as err:
        return _rpc_error(err)


DOORS: dict[str, Door] = {
    "v1 fork": fork,
    "v1 predict": predict,
    "v1 step": step,
    "ws frame": frame,
    "v2 infer": v2_infer,
    "v2 sequence": v2_sequence,
    "grpc infer": grpc_infer,
    "grpc sequence": grpc_sequence,
    "grpc stream": grpc_stream,
}
GRPC_DOORS = {d for d in DOORS if d.startswith("grpc")}


@contextmanager
def grpc_door(client: TestClient, app: Any, settings: Settings) -> Iterator[Any]:
    """The app's gRPC server on its event loop (the client's portal), on a free port; a
    stub of the inference service on a channel to it."""
    door = GrpcDoor(settings, "127.0.0.1", 1.0, lambda: app.state.core)

    async def start() -> int:
        port = door.bind()
        await door.start()
        return port

    portal = client.portal
    assert portal is not None, "inside the client's context"
    port = portal.call(start)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    finally:
        portal.call(door.stopped)


@contextmanager
def env_for(tiny_store: Path, with_grpc: bool = False, **settings: Any) -> Iterator[Env]:
    config = Settings(
        model_store=tiny_store,
        request_log=False,
        model_process=False,
        api_keys=f"{KEY},{OTHER}",
        grpc_port=0,  # the door, where started, binds a free port
        **settings,
    )
    app = create_app(config)
    with TestClient(app) as client, contextlib.ExitStack() as doors:
        r = client.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=_auth(KEY))
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        seq = {"inputs": [TENSOR], "parameters": {"sequence_id": 7, "sequence_start": True}}
        r = client.post("/v2/models/tiny_lstm/infer", json=seq, headers=_auth(KEY))
        assert r.status_code == 200, r.text
        stub = doors.enter_context(grpc_door(client, app, config)) if with_grpc else None
        yield Env(client, sid, stub)


JSON = "application/json"
UNAUTHORIZED = {"v2 infer": Answer(401, None), "v2 sequence": Answer(401, None)}
TOO_LARGE = {"v2 infer": Answer(413, None), "v2 sequence": Answer(413, None)}
RATE = {"v2 infer": Answer(429, None), "v2 sequence": Answer(429, None)}
UNARY = ("grpc infer", "grpc sequence")

TABLE: list[tuple[str, str, Answer]] = [
    # missing key
    *[
        ("missing key", d, Answer(401, "unauthorized"))
        for d in ("v1 fork", "v1 predict", "v1 step")
    ],
    ("missing key", "ws frame", Answer(4401, "unauthorized")),
    *[("missing key", d, a) for d, a in UNAUTHORIZED.items()],
    *[("missing key", d, Answer("UNAUTHENTICATED", "unauthorized")) for d in sorted(GRPC_DOORS)],
    # wrong owner: another key's session is not found; its /v2 sequence is unknown (400)
    ("wrong owner", "v1 fork", Answer(404, "session_not_found")),
    ("wrong owner", "v1 step", Answer(404, "session_not_found")),
    ("wrong owner", "ws frame", Answer(4404, "session_not_found")),
    ("wrong owner", "v2 sequence", Answer(400, None)),
    # over gRPC, Triton's INVALID_ARGUMENT for a sequence not started (on a stream: that
    # request's error_message, the stream open)
    ("wrong owner", "grpc sequence", Answer("INVALID_ARGUMENT", "unknown_sequence")),
    ("wrong owner", "grpc stream", Answer("error_message", "unknown_sequence", open=True)),
    # rate limit: the request (or frame) past the burst
    *[("rate limit", d, Answer(429, "rate_limited")) for d in ("v1 fork", "v1 predict", "v1 step")],
    ("rate limit", "ws frame", Answer(429, "rate_limited", open=True)),
    *[("rate limit", d, a) for d, a in RATE.items()],
    *[("rate limit", d, Answer("RESOURCE_EXHAUSTED", "rate_limited")) for d in UNARY],
    ("rate limit", "grpc stream", Answer("error_message", "rate_limited", open=True)),
    # per-key session limit (1, already held): the doors that create sessions
    ("session limit", "v1 fork", Answer(429, "session_capacity_reached")),
    ("session limit", "v2 sequence", Answer(429, None)),
    ("session limit", "grpc sequence", Answer("RESOURCE_EXHAUSTED", "session_capacity_reached")),
    ("session limit", "grpc stream", Answer("error_message", "session_capacity_reached", True)),
    # per-key stream limit (1, already held by a stream of the same door)
    ("stream limit", "ws frame", Answer(1013, "too_many_streams")),
    ("stream limit", "grpc stream", Answer("RESOURCE_EXHAUSTED", "too_many_streams")),
    # streams on the replica, over all keys (1, already held by another key's WebSocket)
    ("total stream limit", "ws frame", Answer(1013, "too_many_streams")),
    ("total stream limit", "grpc stream", Answer("RESOURCE_EXHAUSTED", "too_many_streams")),
    # body or frame size
    *[
        ("body size", d, Answer(413, "request_too_large"))
        for d in ("v1 fork", "v1 predict", "v1 step")
    ],
    ("body size", "ws frame", Answer(413, "request_too_large", open=True)),
    *[("body size", d, a) for d, a in TOO_LARGE.items()],
    # gRPC's own message limit (grpc.max_receive_message_length), before the servicer; on a
    # stream it ends the call
    *[("body size", d, Answer("RESOURCE_EXHAUSTED", None)) for d in sorted(GRPC_DOORS)],
    # content type: /v1 bodies are JSON; /v2 takes requests without a content type
    *[
        ("content type", d, Answer(415, "unsupported_media_type"))
        for d in ("v1 fork", "v1 predict", "v1 step")
    ],
    ("content type", "v2 infer", Answer(200, None)),
    ("content type", "v2 sequence", Answer(200, None)),
]


def stream_until_refused(env: Env) -> Answer:
    with stream(env, KEY) as s:
        for _ in range(10):
            answer = on_stream(s, grpc_request(sequence_id=7))
            if answer.refused:
                return answer
    raise AssertionError("stream requests were never rate limited")


def held_stream(
    env: Env, key: str, sid: str, grpc_door: bool
) -> contextlib.AbstractContextManager[Any]:
    """An open stream of ``key`` that has answered one step: a gRPC stream or a WebSocket
    on session ``sid``."""

    @contextmanager
    def hold() -> Iterator[None]:
        if grpc_door:
            with stream(env, key) as s:
                assert on_stream(s, grpc_request()) == Answer("OK", None)
                yield
            return
        with env.client.websocket_connect(f"/v1/sessions/{sid}/stream", headers=_auth(key)) as ws:
            ws.send_bytes(STEP)
            assert "outputs" in orjson.loads(ws.receive_text())
            yield

    return hold()


def frames_until_refused(env: Env) -> Answer:
    url = f"/v1/sessions/{env.sid}/stream"
    with env.client.websocket_connect(url, headers=_auth(KEY)) as ws:
        for _ in range(10):
            ws.send_bytes(STEP)
            reply = orjson.loads(ws.receive_text())
            if "error" in reply:
                problem = reply["error"]
                ws.send_bytes(STEP)  # refused again, but answered: the socket is open
                again = orjson.loads(ws.receive_text())["error"]["code"] == problem["code"]
                return Answer(problem["status"], problem["code"], open=again)
    raise AssertionError("frames were never rate limited")


def attempt(rule: str, door: str, tiny_store: Path) -> Answer:
    send = DOORS[door]
    on_grpc = door in GRPC_DOORS
    if rule == "missing key":
        with env_for(tiny_store, on_grpc) as env:
            return send(env, None, False, JSON)
    if rule == "wrong owner":
        with env_for(tiny_store, on_grpc) as env:
            return send(env, OTHER, False, JSON)
    if rule == "rate limit":
        limits = {"rate_limit_per_second": 0.001, "rate_limit_burst": 6}
        with env_for(tiny_store, on_grpc, **limits) as env:
            if door == "ws frame":  # frames on one socket: each takes its own token
                return frames_until_refused(env)
            if door == "grpc stream":  # requests on one stream: each takes its own token
                return stream_until_refused(env)
            for _ in range(10):
                answer = send(env, KEY, False, JSON)
                if answer.refused:
                    return answer
            raise AssertionError("never rate limited")
    if rule == "session limit":
        with env_for(tiny_store, on_grpc, max_sessions_per_key=1) as env:
            if door == "v2 sequence":
                seq = {"inputs": [TENSOR], "parameters": {"sequence_id": 8, "sequence_start": True}}
                r = env.client.post("/v2/models/tiny_lstm/infer", json=seq, headers=_auth(KEY))
                return _v2(r)
            if door == "grpc sequence":
                return _model_infer(env, KEY, grpc_request(sequence_id=8, sequence_start=True))
            if door == "grpc stream":
                with stream(env, KEY) as s:
                    return on_stream(s, grpc_request(sequence_id=8, sequence_start=True))
            return send(env, KEY, False, JSON)
    if rule == "stream limit":
        with (
            env_for(tiny_store, on_grpc, max_streams_per_key=1) as env,
            held_stream(env, KEY, env.sid, on_grpc),
        ):
            return send(env, KEY, False, JSON)
    if rule == "total stream limit":
        with env_for(tiny_store, on_grpc, max_streams=1) as env:
            other_sid = env.client.post(
                "/v1/sessions", json={"model": "tiny_lstm"}, headers=_auth(OTHER)
            ).json()["id"]
            with held_stream(env, OTHER, other_sid, False):
                return send(env, KEY, False, JSON)
    if rule == "body size":
        with env_for(tiny_store, on_grpc, max_body_bytes=1024) as env:
            return send(env, KEY, True, JSON)
    if rule == "content type":
        with env_for(tiny_store) as env:
            return send(env, KEY, False, "text/plain" if door.startswith("v1") else None)
    raise AssertionError(rule)


@pytest.mark.parametrize(
    ("rule", "door", "expected"), TABLE, ids=[f"{r} @ {d}" for r, d, _ in TABLE]
)
def test_every_rule_at_every_door(rule: str, door: str, expected: Answer, tiny_store: Path) -> None:
    assert attempt(rule, door, tiny_store) == expected


def test_the_table_covers_every_rule_and_door() -> None:
    rules = {r for r, _, _ in TABLE}
    assert rules == {
        "missing key",
        "wrong owner",
        "rate limit",
        "session limit",
        "stream limit",
        "total stream limit",
        "body size",
        "content type",
    }
    assert {d for _, d, _ in TABLE} == set(DOORS)
    for door in DOORS:  # the rules every door has
        for rule in ("missing key", "rate limit", "body size"):
            assert (rule, door) in {(r, d) for r, d, _ in TABLE}
