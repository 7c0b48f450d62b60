"""`WS /v1/sessions/{id}/stream` against a real uvicorn process and the websockets client."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.server import Server, running_server

pytestmark = pytest.mark.e2e

KEY_A = "key-a-123"
KEY_B = "key-b-456"


def ws_url(server: Server, session_id: str, query: str = "") -> str:
    url = server.url.replace("http://", "ws://", 1) + f"/v1/sessions/{session_id}/stream"
    return url + (f"?{query}" if query else "")


@pytest.fixture
async def http(tiny_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=10.0) as client:
        yield client


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[Server]:
    env = {"LSTM_SERVE_MODEL_STORE": str(tiny_store), "LSTM_SERVE_API_KEYS": f"{KEY_A},{KEY_B}"}
    with running_server(env, tmp_path_factory.mktemp("logs")) as server:
        yield server


async def new_session(http: httpx.AsyncClient, model: str = "tiny_lstm", **extra: Any) -> str:
    r = await http.post("/v1/sessions", json={"model": model, **extra})
    assert r.status_code == 201, r.text
    session_id: str = r.json()["id"]
    return session_id


async def step(ws: ClientConnection, body: Any) -> dict[str, Any]:
    await ws.send(body if isinstance(body, str | bytes) else orjson.dumps(body).decode())
    reply: dict[str, Any] = orjson.loads(await ws.recv())
    return reply


async def closed_code(ws: ClientConnection, within: float = 5.0) -> int | None:
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def state_arrays(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(base64.b64decode(t["data_b64"]), dtype="<f4").reshape(t["shape"])
        for name, t in doc["state"].items()
    }


async def test_per_step_outputs_equal_whole_sequence_predict(
    tiny_server: Server, http: httpx.AsyncClient
) -> None:
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(23, 3)).round(4).tolist()
    whole = await http.post("/v1/models/tiny_lstm/predict", json={"inputs": seq, "return": "all"})
    expected = whole.json()["outputs"]
    sid = await new_session(http)
    streamed: list[Any] = []
    async with connect(ws_url(tiny_server, sid)) as ws:
        # one step per frame, then chunks of several steps per frame
        for i in range(10):
            reply = await step(ws, {"inputs": [seq[i]]})
            assert reply["steps"] == i + 1 and reply["id"] == sid
            streamed += reply["outputs"]
        for start in (10, 15, 21):
            end = {10: 15, 15: 21, 21: 23}[start]
            reply = await step(ws, {"inputs": seq[start:end]})
            assert reply["steps"] == end
            streamed += reply["outputs"]
    assert len(streamed) == len(expected) == 23
    np.testing.assert_allclose(np.array(streamed), np.array(expected), atol=1e-5)


async def test_text_model_over_the_socket(tiny_server: Server, http: httpx.AsyncClient) -> None:
    text = "hello world."
    whole = await http.post("/v1/models/tiny_char/predict", json={"text": text, "return": "all"})
    expected = whole.json()["outputs"]
    sid = await new_session(http, "tiny_char")
    outputs: list[Any] = []
    async with connect(ws_url(tiny_server, sid)) as ws:
        for ch in text:
            outputs += (await step(ws, {"text": ch}))["outputs"]
    assert [[t["token"] for t in o["top"]] for o in outputs] == [
        [t["token"] for t in o["top"]] for o in expected
    ]
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(
            [t["p"] for t in got["top"]], [t["p"] for t in want["top"]], atol=1e-5
        )


async def test_pipelined_frames_are_answered_in_order(
    tiny_server: Server, http: httpx.AsyncClient
) -> None:
    sid = await new_session(http, "tiny_gru")
    n = 200
    async with connect(ws_url(tiny_server, sid)) as ws:
        for i in range(n):
            await ws.send(orjson.dumps({"inputs": [[i / n, 0.0, 1.0]], "offset": i}).decode())
        replies = [orjson.loads(await ws.recv()) for _ in range(n)]
    assert [r["steps"] for r in replies] == list(range(1, n + 1))
    assert (await http.get(f"/v1/sessions/{sid}")).json()["steps"] == n


async def test_binary_frames_are_accepted(tiny_server: Server, http: httpx.AsyncClient) -> None:
    sid = await new_session(http)
    async with connect(ws_url(tiny_server, sid)) as ws:
        reply = await step(ws, orjson.dumps({"inputs": [[1.0, 2.0, 3.0]]}))
    assert reply["steps"] == 1


async def test_error_frames_keep_the_socket_open(
    tiny_server: Server, http: httpx.AsyncClient
) -> None:
    sid = await new_session(http)
    async with connect(ws_url(tiny_server, sid)) as ws:
        bad: list[tuple[Any, int, str | None]] = [
            ("not json", 400, "malformed_request"),
            ("[1, 2]", 400, "malformed_request"),
            ({"inputs": [[1.0, 2.0]]}, 422, "wrong_feature_count"),
            ('{"inputs": [[NaN, 1.0, 2.0]]}', 422, None),
            ({"text": "abc"}, 422, None),
            ({"inputs": [[1.0, 2.0, 3.0]], "offset": 5}, 409, "offset_conflict"),
            ({"inputs": [[1.0, 2.0, 3.0]], "offset": -1}, 422, "invalid_input"),
        ]
        for body, status, code in bad:
            reply = await step(ws, body)
            assert set(reply) == {"error"}, reply
            problem = reply["error"]
            assert problem["status"] == status, (body, problem)
            assert problem["code"] == (code or problem["code"]), (body, problem)
            assert isinstance(problem["code"], str)
            assert problem["title"] and problem["detail"]
        conflict = await step(ws, {"inputs": [[1.0, 2.0, 3.0]], "offset": 9})
        assert conflict["error"]["steps"] == 0
        ok = await step(ws, {"inputs": [[1.0, 2.0, 3.0]], "offset": 0})
        assert ok["steps"] == 1
    assert (await http.get(f"/v1/sessions/{sid}")).json()["steps"] == 1


async def test_retried_frame_with_same_offset_is_replayed(
    tiny_server: Server, http: httpx.AsyncClient
) -> None:
    sid = await new_session(http)
    frame = {"inputs": [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]], "offset": 0}
    async with connect(ws_url(tiny_server, sid)) as ws:
        first = await step(ws, frame)
    async with connect(ws_url(tiny_server, sid)) as ws:
        again = await step(ws, frame)
    assert first["steps"] == again["steps"] == 2
    assert again["replayed"] is True and "replayed" not in first
    assert again["outputs"] == first["outputs"]
    assert (await http.get(f"/v1/sessions/{sid}")).json()["steps"] == 2


async def test_unknown_session_closes_with_4404(tiny_server: Server) -> None:
    async with connect(ws_url(tiny_server, "no-such-session")) as ws:
        assert await closed_code(ws) == 4404
        assert ws.close_reason == "session_not_found"


async def test_deleted_session_closes_an_idle_socket_with_4404(
    tiny_server: Server, http: httpx.AsyncClient
) -> None:
    sid = await new_session(http)
    async with connect(ws_url(tiny_server, sid)) as ws:
        assert (await step(ws, {"inputs": [[1.0, 2.0, 3.0]]}))["steps"] == 1
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
        # no frame sent: the handler's idle check notices
        assert await closed_code(ws, within=5.0) == 4404


async def test_deleted_session_closes_on_the_next_frame_with_4404(
    tiny_server: Server, http: httpx.AsyncClient
) -> None:
    sid = await new_session(http)
    async with connect(ws_url(tiny_server, sid)) as ws:
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
        await ws.send('{"inputs": [[1.0, 2.0, 3.0]]}')
        assert await closed_code(ws, within=1.0) == 4404


async def test_expired_session_closes_with_4410(
    tiny_server: Server, http: httpx.AsyncClient
) -> None:
    sid = await new_session(http, ttl_seconds=1)
    async with connect(ws_url(tiny_server, sid)) as ws:
        assert (await step(ws, {"inputs": [[1.0, 2.0, 3.0]]}))["steps"] == 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await closed_code(ws, within=4.0) == 4410
        assert ws.close_reason == "session_expired"
        # well before the server's 5 s sweeper: the socket's own check found it
        assert loop.time() - started < 3.0
    # and an expired session refuses new sockets with 4410 too
    async with connect(ws_url(tiny_server, sid)) as ws:
        assert await closed_code(ws) == 4410


async def test_short_default_ttl_from_settings(
    tmp_path_factory: pytest.TempPathFactory, tiny_store: Path
) -> None:
    env = {"LSTM_SERVE_MODEL_STORE": str(tiny_store), "LSTM_SERVE_SESSION_TTL_SECONDS": "1"}
    with running_server(env, tmp_path_factory.mktemp("logs")) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            sid = await new_session(http)
            async with connect(ws_url(server, sid)) as ws:
                # steps keep it alive: each touches the session
                for _ in range(3):
                    assert "steps" in await step(ws, {"inputs": [[1.0, 2.0, 3.0]]})
                    await asyncio.sleep(0.4)
                assert await closed_code(ws, within=4.0) == 4410
            r = await http.post(f"/v1/sessions/{sid}/step", json={"inputs": [[1.0, 2.0, 3.0]]})
            assert r.status_code == 410


async def test_disconnect_mid_stream_leaves_a_consistent_session(
    tiny_server: Server, http: httpx.AsyncClient
) -> None:
    rng = np.random.default_rng(1)
    chunk = 64
    frames = [rng.normal(size=(chunk, 3)).round(3).tolist() for _ in range(40)]
    sid = await new_session(http)
    ws = await connect(ws_url(tiny_server, sid))
    received = 0
    for f in frames:
        await ws.send(orjson.dumps({"inputs": f}).decode())
    for _ in range(3):
        await ws.recv()
        received += 1
    # drop the connection without a closing handshake while steps are in flight
    ws.transport.abort()
    await ws.wait_closed()
    await asyncio.sleep(0.3)

    steps = (await http.get(f"/v1/sessions/{sid}")).json()["steps"]
    assert steps % chunk == 0, "a frame was applied partly"
    applied = steps // chunk
    assert received <= applied <= len(frames)
    # the state equals a replay of exactly the applied frames
    replay = await new_session(http)
    for f in frames[:applied]:
        r = await http.post(f"/v1/sessions/{replay}/step", json={"inputs": f})
        assert r.status_code == 200
    got = state_arrays((await http.get(f"/v1/sessions/{sid}/state")).json())
    want = state_arrays((await http.get(f"/v1/sessions/{replay}/state")).json())
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5)
    # the session is still usable, and the offset picks up where it was left
    async with connect(ws_url(tiny_server, sid)) as ws2:
        reply = await step(ws2, {"inputs": [[0.0, 0.0, 0.0]], "offset": steps})
        assert reply["steps"] == steps + 1


async def test_auth_by_header_subprotocol_and_query(
    keyed_server: Server,
) -> None:
    async with httpx.AsyncClient(
        base_url=keyed_server.url, headers={"Authorization": f"Bearer {KEY_A}"}
    ) as http:
        sid = await new_session(http)
    one = '{"inputs": [[1.0, 2.0, 3.0]]}'
    async with connect(
        ws_url(keyed_server, sid), additional_headers={"Authorization": f"Bearer {KEY_A}"}
    ) as ws:
        assert (await step(ws, one))["steps"] == 1
    async with connect(ws_url(keyed_server, sid), subprotocols=[f"bearer.{KEY_A}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == f"bearer.{KEY_A}"
        assert (await step(ws, one))["steps"] == 2
    async with connect(ws_url(keyed_server, sid, f"api_key={KEY_A}")) as ws:
        assert (await step(ws, one))["steps"] == 3


@pytest.mark.parametrize(
    ("headers", "query", "code"),
    [
        ({}, "", 4401),
        ({"Authorization": "Bearer wrong"}, "", 4401),
        ({}, "api_key=wrong", 4401),
        ({"Authorization": f"Bearer {KEY_B}"}, "", 4404),
    ],
    ids=["missing", "wrong-header", "wrong-query", "other-owner"],
)
async def test_unauthorized_sockets_are_closed(
    keyed_server: Server, headers: dict[str, str], query: str, code: int
) -> None:
    async with httpx.AsyncClient(
        base_url=keyed_server.url, headers={"Authorization": f"Bearer {KEY_A}"}
    ) as http:
        sid = await new_session(http)
    async with connect(ws_url(keyed_server, sid, query), additional_headers=headers) as ws:
        assert await closed_code(ws) == code
