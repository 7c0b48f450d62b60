"""The session step on the wire, over raw sockets against a real server.

The step is the hot path and a route of its own (``service.http.v1.step``); these tests
hold it, as the HTTP server serves it, to what HTTP/1.1 clients rely on.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.e2e.server import Server

pytestmark = pytest.mark.e2e

STEP = json.dumps({"inputs": [[0.5, 1.0, -2.0]]}).encode()


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.body)
        return doc


class Wire:
    """One raw HTTP/1.1 connection."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed mid-response: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = [(k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
        length = int(next((v for k, v in headers if k == "content-length"), "0"))
        while len(self.buf) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(status, headers, body)

    def closed_by_server(self) -> bool:
        try:
            return not self.buf and not self._fill()
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def head(session_id: str, body: bytes = STEP, extra: str = "") -> bytes:
    """A step request's head, for a body sent apart from it."""
    return (
        f"POST /v1/sessions/{session_id}/step HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode()


def request(session_id: str, body: bytes = STEP, extra: str = "") -> bytes:
    return head(session_id, body, extra) + body


@pytest.fixture
def session(tiny_server: Server) -> str:
    r = httpx.post(f"{tiny_server.url}/v1/sessions", json={"model": "tiny_lstm"})
    assert r.status_code == 201
    sid: str = r.json()["id"]
    return sid


def steps_of(server: Server, session_id: str) -> int:
    steps: int = httpx.get(f"{server.url}/v1/sessions/{session_id}").json()["steps"]
    return steps


def test_keep_alive_steps_carry_the_same_headers_as_other_routes(
    tiny_server: Server, session: str
) -> None:
    with Wire(tiny_server) as wire:
        for n in (1, 2, 3):
            wire.send(request(session, extra=f"X-Request-ID: wire-{n}\r\n"))
            r = wire.read()
            assert r.status == 200 and r.json()["steps"] == n
            assert r.header("x-request-id") == f"wire-{n}"
            assert r.header("content-type") == "application/json"
            assert r.header("connection") is None
        wire.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        other = wire.read()
        assert other.status == 200
        # the step answers with uvicorn's default headers (date, server) like any route
        assert {"date", "server"} <= {k for k, _ in r.headers}
        assert {"date", "server"} <= {k for k, _ in other.headers}
        wire.send(request("no-such-session"))
        missing = wire.read()
        assert missing.status == 404 and missing.json()["code"] == "session_not_found"
        assert missing.header("content-type") == "application/problem+json"


def test_pipelined_steps_are_answered_in_order(tiny_server: Server, session: str) -> None:
    with Wire(tiny_server) as wire:
        # the second and third wait behind the first and are served through ASGI
        wire.send(request(session) + request(session) + request("nope") + request(session))
        answers = [wire.read() for _ in range(4)]
        assert [a.status for a in answers] == [200, 200, 404, 200]
        assert [answers[i].json()["steps"] for i in (0, 1, 3)] == [1, 2, 3]
        names = [sorted(k for k, _ in a.headers if k != "date") for a in answers]
        assert names[0] == names[1] == names[3]
    assert steps_of(tiny_server, session) == 3


def test_connection_close_and_http_1_0_close_after_the_answer(
    tiny_server: Server, session: str
) -> None:
    with Wire(tiny_server) as wire:
        wire.send(request(session, extra="Connection: close\r\n"))
        r = wire.read()
        assert r.status == 200 and r.header("connection") == "close"
        assert wire.closed_by_server()

    with Wire(tiny_server) as wire:
        wire.send(request(session).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        r = wire.read()
        assert r.status == 200 and r.json()["steps"] == 2
        assert wire.closed_by_server()


def test_a_body_that_arrives_late_in_pieces_or_chunked_is_read_whole(
    tiny_server: Server, session: str
) -> None:
    with Wire(tiny_server) as wire:
        wire.send(head(session))
        time.sleep(0.05)
        wire.send(STEP[:5])
        time.sleep(0.05)
        wire.send(STEP[5:])
        assert wire.read().json()["steps"] == 1

        chunked = (
            f"POST /v1/sessions/{session}/step HTTP/1.1\r\nHost: test\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunked += b"%x\r\n%s\r\n" % (10, STEP[:10])
        chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(STEP) - 10, STEP[10:])
        wire.send(chunked)
        assert wire.read().json()["steps"] == 2


def test_expect_100_continue_gets_a_continue_before_the_body(
    tiny_server: Server, session: str
) -> None:
    with Wire(tiny_server) as wire:
        wire.send(head(session, extra="Expect: 100-continue\r\n"))
        interim = wire.read()
        assert interim.status == 100
        wire.send(STEP)
        r = wire.read()
        assert r.status == 200 and r.json()["steps"] == 1


def test_too_large_and_abandoned_bodies_change_nothing(tiny_server: Server, session: str) -> None:
    with Wire(tiny_server) as wire:
        wire.send(
            f"POST /v1/sessions/{session}/step HTTP/1.1\r\nHost: test\r\n"
            "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n".encode()
        )
        r = wire.read()  # answered before the body is sent
        assert r.status == 413 and r.json()["code"] == "request_too_large"

    with Wire(tiny_server) as wire:
        wire.send(head(session) + STEP[:4])  # headers and part of the body
        time.sleep(0.05)
    time.sleep(0.1)  # gone mid-body

    assert steps_of(tiny_server, session) == 0
    with Wire(tiny_server) as wire:
        wire.send(request(session))
        assert wire.read().json()["steps"] == 1
