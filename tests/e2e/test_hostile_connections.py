"""Hostile connections against a real server: huge headers, slow headers, keys in URLs.

Each test talks to a real ``lstm-serve serve`` process over real sockets. Outcomes are
functional (a status, a closed socket, a log without the key); the only times are
generous client timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from service.redaction import RedactSecrets, install
from tests.e2e.server import Server, running_server

pytestmark = pytest.mark.e2e

SECRET_KEY = "secret-key-0123456789"


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[Server]:
    env = {
        "LSTM_SERVE_MODEL_STORE": str(tiny_store),
        "LSTM_SERVE_MAX_CONNECTIONS": "100",
        "LSTM_SERVE_HEADER_TIMEOUT_SECONDS": "1",
    }
    with running_server(env, tmp_path_factory.mktemp("logs")) as server:
        yield server


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            if not chunk.startswith(b"HTTP/1.1 408"):
                return False
        return True  # EOF
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _healthy(server: Server) -> bool:
    try:
        r = httpx.get(f"{server.url}/healthz", timeout=5.0)
    except httpx.TransportError:
        return False
    return r.status_code == 200 and r.json() == {"status": "ok"}


def test_a_64_kib_header_answers_431_and_closes(limited_server: Server) -> None:
    with _connect(limited_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        answer = _read_until_closed(sock, 10)
    assert answer.startswith(b"HTTP/1.1 431 ")
    # a head within the limit (16 KiB) is served as usual
    with _connect(limited_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 16384 + b"\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_healthz_answers_while_a_96_mib_header_is_sent(limited_server: Server) -> None:
    total = 96 * 2**20
    sent = 0
    answer = b""

    def attack() -> None:
        nonlocal sent, answer
        chunk = b"a" * 2**20
        with _connect(limited_server) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
                while sent < total:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = _read_until_closed(sock, 5)

    attacker = threading.Thread(target=attack)
    attacker.start()
    answered = []
    while attacker.is_alive():
        answered.append(_healthy(limited_server))
    attacker.join()
    answered.append(_healthy(limited_server))
    assert all(answered)
    # refused early, not buffered whole
    assert sent < total
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_half_sent_headers_are_closed_and_connections_capped(limited_server: Server) -> None:
    pid = limited_server.process.pid
    assert _healthy(limited_server)
    before = _open_fds(pid)
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = _connect(limited_server)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Half: ")
            slow.append(sock)
        time.sleep(0.5)
        # at most the connection cap is held open by the server; the rest wait unread
        assert _open_fds(pid) <= before + 100 + 5
        # every half-open socket is closed by the server once its header time is up
        # (1 s each, 100 at a time)
        deadline = time.monotonic() + 60
        for sock in slow:
            assert _closed_by_server(sock, max(0.1, deadline - time.monotonic()))
    finally:
        for sock in slow:
            sock.close()
    # and a well-behaved client is answered as before
    assert _healthy(limited_server)


def test_a_well_behaved_client_is_answered_beside_slow_headers(limited_server: Server) -> None:
    slow = []
    try:
        for _ in range(150):
            sock = _connect(limited_server)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            slow.append(sock)
        r = httpx.get(f"{limited_server.url}/healthz", timeout=30.0)
        assert r.status_code == 200
    finally:
        for sock in slow:
            sock.close()


@pytest.fixture
def keyed_server(tmp_path: Path, tiny_store: Path) -> Iterator[Server]:
    env = {
        "LSTM_SERVE_MODEL_STORE": str(tiny_store),
        "LSTM_SERVE_API_KEYS": f"{SECRET_KEY},other-key-0000",
    }
    with running_server(env, tmp_path) as server:
        yield server


async def test_api_keys_never_reach_the_log(keyed_server: Server) -> None:
    auth = {"Authorization": f"Bearer {SECRET_KEY}"}
    async with httpx.AsyncClient(base_url=keyed_server.url, headers=auth) as client:
        r = await client.post("/v1/sessions", json={"model": "tiny_lstm"})
        assert r.status_code == 201
        sid = r.json()["id"]
        # a key in the query string of an HTTP route, and a bad bearer
        await client.get(f"/v1/sessions/{sid}?api_key={SECRET_KEY}")
        await client.get("/v1/sessions", headers={"Authorization": f"Bearer {SECRET_KEY}x"})
    url = keyed_server.url.replace("http://", "ws://") + f"/v1/sessions/{sid}/stream"
    async with connect(f"{url}?api_key={SECRET_KEY}") as ws:
        await ws.send(json.dumps({"inputs": [[0.5, 1.0, -2.0]]}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["steps"] == 1
    async with connect(url, subprotocols=[f"bearer.{SECRET_KEY}"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"inputs": [[0.5, 1.0, -2.0]]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["steps"] == 2
    keyed_server.stop()
    log = keyed_server.log()
    paths = [json.loads(line).get("path") for line in log.splitlines() if line.startswith("{")]
    assert f"/v1/sessions/{sid}" in paths  # requests were logged, without the query
    assert "secret" not in log


def test_the_filter_redacts_whatever_logger_writes(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    handler = logging.FileHandler(path)
    logger = logging.getLogger("tests.redaction")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        install(logger)
        assert any(isinstance(f, RedactSecrets) for f in handler.filters)
        logger.warning(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/s/x/stream?api_key={SECRET_KEY}"
        )
        logger.warning("headers", extra={"auth": f"Bearer {SECRET_KEY}"})
        logger.warning("Authorization: Bearer %s", SECRET_KEY)
        try:
            raise ValueError(f"bad key bearer.{SECRET_KEY}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "secret" not in text and text.count("[redacted]") >= 3
