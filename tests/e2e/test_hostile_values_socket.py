"""The hostile-value strategies (``tests/strategies.py``) over real sockets.

Each door that reads a body gets requests with one hostile value against a real server
(``lstm-serve serve``) through httpx, some with oversize headers, and the session step's
hostile bodies also go as WebSocket frames. Never a 5xx, never a dropped connection: every
request is answered in its door's format, and a WebSocket answers a hostile frame with an
error frame and keeps serving the next one. A modest number of examples (a few seconds).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from websockets.sync.client import connect

from tests.e2e.server import Server
from tests.strategies import (
    ROW,
    HostileRequest,
    check_answer,
    doors,
    hostile_requests,
    oversize_headers,
)

pytestmark = [pytest.mark.e2e]

SOCKET = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
STEP_DOOR = [d for d in doors() if d.path.endswith("/step")]


@pytest.fixture(scope="module")
def http(tiny_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=30) as client:
        yield client


def session(http: httpx.Client) -> str:
    r = http.post("/v1/sessions", json={"model": "tiny_lstm"})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def send(http: httpx.Client, req: HostileRequest, headers: dict[str, str]) -> httpx.Response:
    path = req.door.path
    if req.door.needs_session:
        path = path.format(sid=session(http))
    what = f"{path} {req.where}"
    try:
        return http.post(
            path, content=req.content, headers={"Content-Type": "application/json", **headers}
        )
    except httpx.TransportError as exc:  # a dropped connection
        raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc


@SOCKET
@given(req=hostile_requests())
def test_hostile_values_over_http_never_5xx(http: httpx.Client, req: HostileRequest) -> None:
    r = send(http, req, {})
    check_answer(r, req.door.v2, f"{req.door.path} {req.where}")
    listing = http.get("/v1/sessions")
    assert listing.status_code == 200, listing.text


@settings(SOCKET, max_examples=10)
@given(req=hostile_requests(), headers=oversize_headers())
def test_oversize_headers_over_http_never_5xx(
    tiny_server: Server, req: HostileRequest, headers: dict[str, str]
) -> None:
    # a client of its own: the server may close a connection whose head it refused
    with httpx.Client(base_url=tiny_server.url, timeout=30) as client:
        r = send(client, req, headers)
    check_answer(r, req.door.v2, f"{req.door.path} with {len(headers)} big headers")


@settings(SOCKET, max_examples=40)
@given(req=hostile_requests(only=STEP_DOOR))
def test_hostile_frames_get_error_frames_and_the_socket_stays_open(
    tiny_server: Server, http: httpx.Client, req: HostileRequest
) -> None:
    sid = session(http)
    url = tiny_server.url.replace("http://", "ws://") + f"/v1/sessions/{sid}/stream"
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        ws.send(req.content.decode("utf-8", "replace"))
        reply = orjson.loads(ws.recv(timeout=10))
        if "error" in reply:
            problem = reply["error"]
            assert isinstance(problem["code"], str) and 400 <= problem["status"] < 500, reply
        else:
            assert reply["id"] == sid, reply
        ws.send(orjson.dumps({"inputs": [ROW]}).decode())
        after = orjson.loads(ws.recv(timeout=10))
        assert after.get("id") == sid, (req.where, after)


def test_v2_needs_no_content_type_and_v1_refuses_text_plain(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 3], "data": ROW}]}
    r = http.post("/v2/models/tiny_lstm/infer", content=orjson.dumps(body))
    assert "content-type" not in r.request.headers
    assert r.status_code == 200, r.text
    sid = session(http)
    form = {"Content-Type": "text/plain"}
    step = orjson.dumps({"inputs": [ROW]})
    r = http.post(f"/v1/sessions/{sid}/step", content=step, headers=form)
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type", r.text
    r = http.post("/v1/sessions", content=b'{"model": "tiny_lstm"}', headers=form)
    assert r.status_code == 415, r.text
    assert http.get(f"/v1/sessions/{sid}").json()["steps"] == 0
