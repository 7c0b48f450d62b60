"""The gate table: every rule against every door, each answering the contract's error.

Rules: missing key, wrong owner, rate limit, per-key session limit, stream limits (per key
and in all), body or frame size, content type. Doors: two ``/v1`` HTTP routes (fork, a
session route with a body, and predict), the session step, a WebSocket frame, ``/v2``
infer and ``/v2`` sequences. A cell is left out only where the rule has nothing to act on
at that door: predict and stateless ``/v2`` infer own no session and create none; the step
and a frame create no session; only the WebSocket holds a stream; a frame has no content
type; and ``/v2``'s content-type rule is that it takes requests without one
(tritonclient's).

Real apps (``create_app`` on the tiny store) through Starlette's ``TestClient``, which
speaks HTTP and WebSocket to the same app.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.exceptions import StarletteDeprecationWarning
from starlette.websockets import WebSocketDisconnect

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
    status: int
    """HTTP status, a problem's status in a WebSocket error frame, or a close code."""
    code: str | None
    """The problem's ``code`` (``/v1``), the close reason (a closed socket), None on ``/v2``."""
    open: bool = False
    """A WebSocket that answered with an error frame and still steps afterwards."""


@dataclass
class Env:
    client: TestClient
    sid: str
    """A session of ``KEY``."""


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


DOORS: dict[str, Door] = {
    "v1 fork": fork,
    "v1 predict": predict,
    "v1 step": step,
    "ws frame": frame,
    "v2 infer": v2_infer,
    "v2 sequence": v2_sequence,
}


@contextmanager
def env_for(tiny_store: Path, **settings: Any) -> Iterator[Env]:
    app = create_app(
        Settings(
            model_store=tiny_store,
            request_log=False,
            model_process=False,
            api_keys=f"{KEY},{OTHER}",
            **settings,
        )
    )
    with TestClient(app) as client:
        r = client.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=_auth(KEY))
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        seq = {"inputs": [TENSOR], "parameters": {"sequence_id": 7, "sequence_start": True}}
        r = client.post("/v2/models/tiny_lstm/infer", json=seq, headers=_auth(KEY))
        assert r.status_code == 200, r.text
        yield Env(client, sid)


JSON = "application/json"
UNAUTHORIZED = {"v2 infer": Answer(401, None), "v2 sequence": Answer(401, None)}
TOO_LARGE = {"v2 infer": Answer(413, None), "v2 sequence": Answer(413, None)}
RATE = {"v2 infer": Answer(429, None), "v2 sequence": Answer(429, None)}

TABLE: list[tuple[str, str, Answer]] = [
    # missing key
    *[
        ("missing key", d, Answer(401, "unauthorized"))
        for d in ("v1 fork", "v1 predict", "v1 step")
    ],
    ("missing key", "ws frame", Answer(4401, "unauthorized")),
    *[("missing key", d, a) for d, a in UNAUTHORIZED.items()],
    # wrong owner: another key's session is not found; its /v2 sequence is unknown (400)
    ("wrong owner", "v1 fork", Answer(404, "session_not_found")),
    ("wrong owner", "v1 step", Answer(404, "session_not_found")),
    ("wrong owner", "ws frame", Answer(4404, "session_not_found")),
    ("wrong owner", "v2 sequence", Answer(400, None)),
    # rate limit: the request (or frame) past the burst
    *[("rate limit", d, Answer(429, "rate_limited")) for d in ("v1 fork", "v1 predict", "v1 step")],
    ("rate limit", "ws frame", Answer(429, "rate_limited", open=True)),
    *[("rate limit", d, a) for d, a in RATE.items()],
    # per-key session limit (1, already held): the doors that create sessions
    ("session limit", "v1 fork", Answer(429, "session_capacity_reached")),
    ("session limit", "v2 sequence", Answer(429, None)),
    # per-key stream limit (1, already held)
    ("stream limit", "ws frame", Answer(1013, "too_many_streams")),
    # streams on the replica, over all keys (1, already held by another key)
    ("total stream limit", "ws frame", Answer(1013, "too_many_streams")),
    # body or frame size
    *[
        ("body size", d, Answer(413, "request_too_large"))
        for d in ("v1 fork", "v1 predict", "v1 step")
    ],
    ("body size", "ws frame", Answer(413, "request_too_large", open=True)),
    *[("body size", d, a) for d, a in TOO_LARGE.items()],
    # content type: /v1 bodies are JSON; /v2 takes requests without a content type
    *[
        ("content type", d, Answer(415, "unsupported_media_type"))
        for d in ("v1 fork", "v1 predict", "v1 step")
    ],
    ("content type", "v2 infer", Answer(200, None)),
    ("content type", "v2 sequence", Answer(200, None)),
]


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
    if rule == "missing key":
        with env_for(tiny_store) as env:
            return send(env, None, False, JSON)
    if rule == "wrong owner":
        with env_for(tiny_store) as env:
            return send(env, OTHER, False, JSON)
    if rule == "rate limit":
        with env_for(tiny_store, rate_limit_per_second=0.001, rate_limit_burst=6) as env:
            if door == "ws frame":  # frames on one socket: each takes its own token
                return frames_until_refused(env)
            for _ in range(10):
                answer = send(env, KEY, False, JSON)
                if answer.status >= 400:
                    return answer
            raise AssertionError("never rate limited")
    if rule == "session limit":
        with env_for(tiny_store, max_sessions_per_key=1) as env:
            if door == "v2 sequence":
                seq = {"inputs": [TENSOR], "parameters": {"sequence_id": 8, "sequence_start": True}}
                r = env.client.post("/v2/models/tiny_lstm/infer", json=seq, headers=_auth(KEY))
                return _v2(r)
            return send(env, KEY, False, JSON)
    if rule == "stream limit":
        with env_for(tiny_store, max_streams_per_key=1) as env:
            url = f"/v1/sessions/{env.sid}/stream"
            with env.client.websocket_connect(url, headers=_auth(KEY)) as held:
                held.send_bytes(STEP)
                assert "outputs" in orjson.loads(held.receive_text())
                return send(env, KEY, False, JSON)
    if rule == "total stream limit":
        with env_for(tiny_store, max_streams=1) as env:
            other_sid = env.client.post(
                "/v1/sessions", json={"model": "tiny_lstm"}, headers=_auth(OTHER)
            ).json()["id"]
            url = f"/v1/sessions/{other_sid}/stream"
            with env.client.websocket_connect(url, headers=_auth(OTHER)) as held:
                held.send_bytes(STEP)
                assert "outputs" in orjson.loads(held.receive_text())
                return send(env, KEY, False, JSON)
    if rule == "body size":
        with env_for(tiny_store, max_body_bytes=1024) as env:
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
