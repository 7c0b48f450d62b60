"""``service.client`` against a real server: calls, typed errors, exactly-once retries."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.client import (
    AsyncClient,
    Client,
    InvalidInput,
    NotFound,
    OffsetConflict,
    RetryPolicy,
    SessionGone,
    TransportError,
    Unauthorized,
)
from tests.e2e.server import Server, running_server

pytestmark = pytest.mark.e2e

FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)


@pytest.fixture
def client(tiny_server: Server) -> Iterator[Client]:
    with Client(tiny_server.url, timeout=10.0, retry=FAST) as c:
        yield c


def seq(n: int, seed: int = 0) -> list[list[float]]:
    rows: list[list[float]] = np.random.default_rng(seed).normal(size=(n, 3)).round(4).tolist()
    return rows


class DropResponses(httpx.BaseTransport):
    """Lets the request reach the server, then loses the answer (the first ``drops`` times)."""

    def __init__(self, drops: int = 1, path_suffix: str = "/step") -> None:
        self.inner = httpx.HTTPTransport()
        self.drops = drops
        self.path_suffix = path_suffix
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        if request.url.path.endswith(self.path_suffix):
            self.sent += 1
            if self.drops > 0:
                self.drops -= 1
                resp.read()
                resp.close()
                raise httpx.ReadError("connection reset after the request was sent")
        return resp

    def close(self) -> None:
        self.inner.close()


class Answer503First(httpx.BaseTransport):
    """Answers 503 with Retry-After without reaching the server, then passes through."""

    def __init__(self, times: int = 1) -> None:
        self.inner = httpx.HTTPTransport()
        self.times = times

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.times > 0:
            self.times -= 1
            return httpx.Response(
                503,
                headers={"Retry-After": "0", "Content-Type": "application/problem+json"},
                json={"status": 503, "code": "session_store_unavailable", "detail": "down"},
            )
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_predict_and_models(client: Client) -> None:
    names = {m["name"] for m in client.models()}
    assert {"tiny_lstm", "tiny_gru", "tiny_char"} <= names
    assert client.model("tiny_lstm")["input"]["names"] == ["f0", "f1", "f2"]
    x = seq(6)
    all_steps = client.predict("tiny_lstm", x, return_="all")
    assert len(all_steps) == 6
    assert client.predict("tiny_lstm", x) == all_steps[-1]
    assert client.predict("tiny_lstm", x, version=1) != all_steps[-1]
    top = client.predict("tiny_char", text="hello")
    assert len(top["top"]) == 5


def test_session_steps_equal_whole_sequence_and_delete_on_exit(client: Client) -> None:
    x = seq(10, seed=1)
    whole = client.predict("tiny_lstm", x, return_="all")
    outputs: list[Any] = []
    with client.session("tiny_lstm") as s:
        assert s.steps == 0 and s.model == "tiny_lstm" and s.version == 2
        outputs += s.step(x[0]).outputs  # one step as a flat vector
        outputs += s.step(np.asarray(x[1:4])).outputs  # numpy arrays are fine
        result = s.step(x[4:])
        outputs += result.outputs
        assert result.steps == s.steps == 10 and not result.replayed
        sid = s.id
    np.testing.assert_allclose(outputs, whole, atol=1e-5)
    with pytest.raises(NotFound) as info:
        client.get_session(sid)
    assert info.value.code == "session_not_found" and info.value.status == 404


def test_reset_fork_state_and_restore(client: Client) -> None:
    x = seq(5, seed=2)
    with client.session("tiny_gru") as s:
        s.step(x[:3])
        with s.fork() as f:
            assert f.id != s.id and f.steps == 3
            a = f.step(x[3:]).outputs
        state = s.state()
        assert state["steps"] == 3 and set(state["state"]) == {"h"}
        with client.session("tiny_gru", state=state["state"], steps=3) as restored:
            b = restored.step(x[3:]).outputs
        np.testing.assert_allclose(a, b, atol=1e-6)
        s.reset()
        assert s.steps == 0
        assert s.step(x[:1]).steps == 1


def test_exactly_once_at_the_http_level(tiny_server: Server) -> None:
    """A lost response, retried with the same offset and body: replayed, not re-applied."""
    with httpx.Client(base_url=tiny_server.url) as http:
        sid = http.post("/v1/sessions", json={"model": "tiny_lstm"}).json()["id"]
        body = {"inputs": seq(2), "offset": 0}
        first = http.post(f"/v1/sessions/{sid}/step", json=body).json()
        retry = http.post(f"/v1/sessions/{sid}/step", json=body)
        assert retry.status_code == 200
        assert retry.json()["replayed"] is True
        assert retry.json()["steps"] == first["steps"] == 2
        assert retry.json()["outputs"] == first["outputs"]
        assert http.get(f"/v1/sessions/{sid}").json()["steps"] == 2
        # a different body at the old offset is a conflict, not a replay
        other = http.post(f"/v1/sessions/{sid}/step", json={"inputs": seq(2, 9), "offset": 0})
        assert other.status_code == 409 and other.json()["steps"] == 2


def test_client_retry_after_a_lost_response_applies_the_step_once(tiny_server: Server) -> None:
    transport = DropResponses(drops=0)
    x = seq(3, seed=4)
    with (
        Client(tiny_server.url, retry=FAST, transport=transport) as flaky,
        Client(tiny_server.url) as plain,
    ):
        with flaky.session("tiny_lstm") as s:
            s.step(x[:1])
            transport.drops = 1
            result = s.step(x[1:])
            assert transport.sent == 3  # first step, the lost attempt, the retry
            assert result.replayed is True
            assert result.steps == s.steps == 3
            assert plain.get_session(s.id).steps == 3
        expected = plain.predict("tiny_lstm", x, return_="all")[1:]
        np.testing.assert_allclose(result.outputs, expected, atol=1e-5)


def test_client_gives_up_after_its_attempts(tiny_server: Server) -> None:
    transport = DropResponses(drops=100)
    with Client(tiny_server.url, retry=FAST, transport=transport) as flaky:
        s = flaky.session("tiny_lstm")
        with pytest.raises(TransportError):
            s.step(seq(1))
        assert transport.sent == FAST.attempts
        with Client(tiny_server.url) as plain:
            assert plain.get_session(s.id).steps == 1  # applied once, however often sent
        s.delete()


def test_client_retries_503_with_retry_after(tiny_server: Server) -> None:
    with Client(tiny_server.url, retry=FAST, transport=Answer503First(2)) as c:
        assert len(c.models()) >= 3
    with (
        Client(tiny_server.url, retry=RetryPolicy(attempts=1), transport=Answer503First(1)) as c,
        pytest.raises(Exception) as info,
    ):
        c.models()
    assert getattr(info.value, "status", None) == 503
    assert getattr(info.value, "code", None) == "session_store_unavailable"


def test_connection_refused_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", retry=FAST) as c, pytest.raises(TransportError):
        c.models()


def test_typed_errors_carry_code_and_status(client: Client) -> None:
    with pytest.raises(NotFound) as nf:
        client.predict("no_such_model", seq(1))
    assert nf.value.code == "model_not_found"
    with pytest.raises(InvalidInput) as bad:
        client.predict("tiny_lstm", [[1.0, 2.0]])
    assert bad.value.status == 422 and bad.value.code == "wrong_feature_count"
    with client.session("tiny_lstm") as s:
        s.step(seq(1))
        other = client.get_session(s.id)
        other.step(seq(2))  # someone else advanced it
        with pytest.raises(OffsetConflict) as conflict:
            s.step(seq(1))
        assert conflict.value.steps == 3 and conflict.value.code == "offset_conflict"


def test_expired_session_raises_session_gone(client: Client) -> None:
    s = client.session("tiny_lstm", ttl_seconds=1)
    time.sleep(1.2)
    with pytest.raises(SessionGone) as gone:
        s.step(seq(1))
    assert gone.value.reason == "expired" and gone.value.status == 410
    s.delete()  # already gone: not an error


def test_generate_list_and_stream_agree(client: Client) -> None:
    plain = client.generate("tiny_char", "hello ", 30, seed=5, temperature=0.9)
    with client.generate("tiny_char", "hello ", 30, seed=5, temperature=0.9, stream=True) as st:
        streamed = list(st)
    assert streamed == plain
    assert st.end is not None and st.end["text"] == "".join(o["token"] for o in plain)
    rows = client.generate("tiny_lstm", seq(4), 6)
    assert len(rows) == 6 and all(len(r) == 3 for r in rows)
    with pytest.raises(InvalidInput):
        client.generate("tiny_char", "a", 0, stream=True)


def test_session_generate_advance(client: Client) -> None:
    with client.session("tiny_char") as s:
        s.step(text="abc")
        out = s.generate(5, seed=1)
        assert s.steps == 3 and len(out) == 5
        again = s.generate(5, seed=1, advance=True)
        assert again == out and s.steps == 8


def test_stream_steps_match_http_steps(client: Client) -> None:
    x = seq(12, seed=6)
    whole = client.predict("tiny_lstm", x, return_="all")
    with client.session("tiny_lstm") as s, s.stream() as ws:
        outputs = [ws.step(row).output for row in x[:4]]
        for row in x[4:8]:
            ws.send(row)
        outputs += [ws.recv().output for _ in range(4)]
        outputs += ws.step(x[8:]).outputs
        assert s.steps == 12
        with pytest.raises(InvalidInput):
            ws.step([[1.0, 2.0]])
        assert ws.step(x[0]).steps == 13  # the socket stayed open
    np.testing.assert_allclose(outputs, whole, atol=1e-5)


def test_stream_reconnects_and_resends_exactly_once(client: Client) -> None:
    x = seq(2, seed=7)
    with client.session("tiny_lstm") as s, s.stream() as ws:
        ws.step(x[0])
        # the frame reaches the server, and the connection dies before its answer is read
        ws.send(x[1], offset=1)
        time.sleep(0.2)
        ws._ws.socket.shutdown(socket.SHUT_RDWR)
        result = ws.step(x[1])
        assert result.replayed is True and result.steps == 2
        assert client.get_session(s.id).steps == 2


def test_stream_on_deleted_session_raises_not_found(client: Client) -> None:
    s = client.session("tiny_lstm")
    with s.stream() as ws:
        ws.step(seq(1))
        s.delete()
        with pytest.raises(NotFound) as info:
            ws.step(seq(1))
        assert info.value.code == "session_not_found"


async def test_async_client(tiny_server: Server) -> None:
    async with AsyncClient(tiny_server.url, retry=FAST) as client:
        x = seq(6, seed=8)
        whole = await client.predict("tiny_lstm", x, return_="all")
        async with client.session("tiny_lstm") as s:
            outputs = (await s.step(x[:2])).outputs
            async with await s.stream() as ws:
                outputs += (await ws.step(x[2])).outputs
                await ws.send(x[3])
                await ws.send(x[4:])
                outputs += (await ws.recv()).outputs + (await ws.recv()).outputs
            assert s.steps == 6
            fork = await s.fork()
            assert fork.steps == 6
            await fork.delete()
        np.testing.assert_allclose(outputs, whole, atol=1e-5)
        plain = await client.generate("tiny_char", "abc", 10, seed=2)
        stream = await client.generate("tiny_char", "abc", 10, seed=2, stream=True)
        assert [o async for o in stream] == plain
        s2 = await client.session("tiny_gru")
        await s2.delete()
        with pytest.raises(NotFound):
            await client.get_session(s2.id)


async def test_async_client_retry_after_a_lost_response(tiny_server: Server) -> None:
    class DropOnce(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.dropped = False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            resp = await self.inner.handle_async_request(request)
            if request.url.path.endswith("/step") and not self.dropped:
                self.dropped = True
                await resp.aread()
                await resp.aclose()
                raise httpx.ReadError("lost")
            return resp

        async def aclose(self) -> None:
            await self.inner.aclose()

    async with (
        AsyncClient(tiny_server.url, retry=FAST, transport=DropOnce()) as client,
        client.session("tiny_lstm") as s,
    ):
        result = await s.step(seq(3))
        assert result.replayed and result.steps == 3
        assert (await client.get_session(s.id)).steps == 3


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[Server]:
    env = {"LSTM_SERVE_MODEL_STORE": str(tiny_store), "LSTM_SERVE_API_KEYS": "k1,k2"}
    with running_server(env, tmp_path_factory.mktemp("logs")) as server:
        yield server


def test_api_key(keyed_server: Server) -> None:
    with Client(keyed_server.url, api_key="k1") as c, c.session("tiny_lstm") as s:
        with s.stream() as ws:
            assert ws.step(seq(1)).steps == 1
        with Client(keyed_server.url, api_key="k2") as other, pytest.raises(NotFound):
            other.get_session(s.id)
    with Client(keyed_server.url) as anonymous, pytest.raises(Unauthorized) as info:
        anonymous.models()
    assert info.value.code == "unauthorized"
