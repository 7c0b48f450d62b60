"""The WebSocket adapter in process: the ASGI app driven directly, no server, no sockets.

(``starlette.testclient`` wants the ``httpx2`` package; a small ASGI driver does instead.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI

from service.http.app import create_app
from service.settings import Settings

ONE = {"inputs": [[1.0, 2.0, 3.0]]}


class Closed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code, self.reason = code, reason


class FakeSocket:
    """One WebSocket connection to an ASGI app, as a test client sees it."""

    def __init__(self, app: FastAPI, path: str, headers: dict[str, str], subprotocols: list[str]):
        path, _, query = path.partition("?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "scheme": "ws",
            "server": ("test", 80),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "subprotocols": subprotocols,
        }
        self.app = app
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.subprotocol: str | None = None

    async def connect(self) -> None:
        async def send(message: MutableMapping[str, Any]) -> None:
            await self.from_app.put(dict(message))

        self.task = asyncio.create_task(self.app(self.scope, self.to_app.get, send))
        await self.to_app.put({"type": "websocket.connect"})
        message = await self._next()
        assert message["type"] == "websocket.accept", message
        self.subprotocol = message.get("subprotocol")

    async def _next(self, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            return await self.from_app.get()

    async def send(self, body: Any) -> None:
        if isinstance(body, bytes):
            await self.to_app.put({"type": "websocket.receive", "bytes": body})
        else:
            text = body if isinstance(body, str) else orjson.dumps(body).decode()
            await self.to_app.put({"type": "websocket.receive", "text": text})

    async def recv(self, within: float = 5.0) -> Any:
        message = await self._next(within)
        if message["type"] == "websocket.close":
            raise Closed(message.get("code", 1000), message.get("reason", ""))
        assert message["type"] == "websocket.send", message
        return orjson.loads(message.get("text") or message["bytes"])

    async def step(self, body: Any) -> Any:
        await self.send(body)
        return await self.recv()

    async def close(self) -> None:
        await self.to_app.put({"type": "websocket.disconnect", "code": 1000})
        if self.task is not None:
            async with asyncio.timeout(5):
                await self.task


@contextlib.asynccontextmanager
async def websocket(
    app: FastAPI,
    path: str,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[FakeSocket]:
    ws = FakeSocket(app, path, headers or {}, subprotocols or [])
    await ws.connect()
    try:
        yield ws
    finally:
        await ws.close()


async def close_code(app: FastAPI, path: str, **kwargs: Any) -> tuple[int, str]:
    async with websocket(app, path, **kwargs) as ws:
        with pytest.raises(Closed) as info:
            await ws.recv()
    return info.value.code, info.value.reason


async def create(client: httpx.AsyncClient, key: str | None = None, **body: Any) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = await client.post("/v1/sessions", json={"model": "tiny_lstm", **body}, headers=headers)
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


@contextlib.asynccontextmanager
async def app_with(tiny_store: Path, **settings: Any) -> AsyncIterator[tuple[FastAPI, Any]]:
    app = create_app(Settings(model_store=tiny_store, request_log=False, **settings))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        yield app, http


async def test_steps_and_error_frames(app: FastAPI, client: httpx.AsyncClient) -> None:
    sid = await create(client)
    async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
        assert (await ws.step(ONE))["steps"] == 1
        assert (await ws.step("{"))["error"]["code"] == "malformed_request"
        assert (await ws.step("42"))["error"]["status"] == 400
        replay = await ws.step({**ONE, "offset": 0})  # the last applied request, again
        assert replay["replayed"] is True and replay["steps"] == 1
        err = (await ws.step({"inputs": [[9.0, 9.0, 9.0]], "offset": 0}))["error"]
        assert err["status"] == 409 and err["steps"] == 1
        reply = await ws.step(b'{"inputs": [[0.0, 0.0, 0.0]], "offset": 1}')
        assert reply["steps"] == 2 and reply["id"] == sid and len(reply["outputs"]) == 1
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 2


async def test_step_response_equals_the_http_step(app: FastAPI, client: httpx.AsyncClient) -> None:
    a, b = await create(client), await create(client)
    async with websocket(app, f"/v1/sessions/{a}/stream") as ws:
        over_ws = await ws.step({**ONE, "offset": 0})
        replay = await ws.step({**ONE, "offset": 0})
    over_http = (await client.post(f"/v1/sessions/{b}/step", json={**ONE, "offset": 0})).json()
    assert over_ws == {**over_http, "id": a}
    assert replay == {**over_ws, "replayed": True}


async def test_oversized_frame_is_an_error_frame(tiny_store: Path) -> None:
    async with app_with(tiny_store, max_body_bytes=1024) as (app, http):
        sid = await create(http)
        async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
            assert (await ws.step({"inputs": [[1.0, 2.0, 3.0]] * 200}))["error"]["status"] == 413
            assert (await ws.step(ONE))["steps"] == 1


async def test_unknown_session_closes_4404(app: FastAPI) -> None:
    assert await close_code(app, "/v1/sessions/missing/stream") == (4404, "session_not_found")


async def test_deleted_session_closes_4404_on_the_next_frame(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sid = await create(client)
    async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
        assert (await client.delete(f"/v1/sessions/{sid}")).status_code == 204
        await ws.send(ONE)
        with pytest.raises(Closed) as info:
            await ws.recv(within=1.0)
    assert info.value.code == 4404


async def test_expired_idle_socket_closes_4410(app: FastAPI, client: httpx.AsyncClient) -> None:
    sid = await create(client, ttl_seconds=1)
    async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
        with pytest.raises(Closed) as info:
            await ws.recv(within=3.0)  # nothing sent: the idle check closes it at expiry
    assert (info.value.code, info.value.reason) == (4410, "session_expired")


async def test_auth_variants(tiny_store: Path) -> None:
    async with app_with(tiny_store, api_keys="secret,other") as (app, http):
        sid = await create(http, "secret")
        path = f"/v1/sessions/{sid}/stream"
        async with websocket(app, path, headers={"Authorization": "Bearer secret"}) as ws:
            assert (await ws.step(ONE))["steps"] == 1
        async with websocket(app, path, subprotocols=["json", "bearer.secret"]) as ws:
            assert ws.subprotocol == "bearer.secret"
            assert (await ws.step(ONE))["steps"] == 2
        async with websocket(app, path + "?api_key=secret") as ws:
            assert (await ws.step(ONE))["steps"] == 3
        assert await close_code(app, path) == (4401, "unauthorized")
        assert (await close_code(app, path + "?api_key=nope"))[0] == 4401
        assert (await close_code(app, path, subprotocols=["bearer.nope"]))[0] == 4401
        other = {"Authorization": "Bearer other"}
        assert (await close_code(app, path, headers=other))[0] == 4404


async def test_a_vanished_client_stops_the_handler(app: FastAPI, client: httpx.AsyncClient) -> None:
    sid = await create(client)
    ws = FakeSocket(app, f"/v1/sessions/{sid}/stream", {}, [])
    await ws.connect()
    await ws.send(ONE)
    await ws.to_app.put({"type": "websocket.disconnect", "code": 1006})
    assert ws.task is not None
    async with asyncio.timeout(5):
        await ws.task  # the handler returns, its idle watcher cancelled
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 1


async def _frames_in_one_read(ws: FakeSocket, bodies: list[Any]) -> list[Any]:
    """Queue every frame before the app runs, so they wait together, then read the replies."""
    for body in bodies:
        await ws.send(body)
    return [await ws.recv() for _ in bodies]


async def test_waiting_plain_frames_share_one_step_with_per_frame_replies(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sid, ref = await create(client), await create(client)
    sizes = [1, 3, 1, 2, 5, 1, 1, 4]
    steps = [[0.1 * i, -0.05 * i, 0.5] for i in range(sum(sizes))]
    bodies, at = [], 0
    for n in sizes:
        bodies.append({"inputs": steps[at : at + n]})
        at += n
    async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
        replies = await _frames_in_one_read(ws, bodies)
    assert [r["steps"] for r in replies] == [sum(sizes[: i + 1]) for i in range(len(sizes))]
    assert [len(r["outputs"]) for r in replies] == sizes
    assert all(r["id"] == sid and "replayed" not in r for r in replies)
    # the frames were applied as one step: one store write, not one per frame
    record = await app.state.core.store.load(sid)
    assert record.revision == 1 and record.steps == sum(sizes)
    # and the outputs are those of one frame at a time over HTTP
    want = []
    for body in bodies:
        r = await client.post(f"/v1/sessions/{ref}/step", json=body)
        want.extend(r.json()["outputs"])
    got = [out for r in replies for out in r["outputs"]]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
    state = (await client.get(f"/v1/sessions/{sid}/state")).json()
    ref_state = (await client.get(f"/v1/sessions/{ref}/state")).json()
    assert state["steps"] == ref_state["steps"] and state["state"] == ref_state["state"]


async def test_a_bad_frame_among_waiting_frames_fails_alone(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sid = await create(client)
    bodies: list[Any] = [ONE, ONE, {"inputs": [[1.0, 2.0]]}, ONE, "{", ONE, {**ONE, "offset": 4}]
    async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
        replies = await _frames_in_one_read(ws, bodies)
    assert replies[2]["error"]["code"] == "wrong_feature_count"
    assert replies[4]["error"]["code"] == "malformed_request"
    assert [r.get("steps") for r in replies] == [1, 2, None, 3, None, 4, 5]
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 5


async def test_waiting_frames_share_a_step_only_up_to_the_step_limit(tiny_store: Path) -> None:
    async with app_with(tiny_store, max_steps_per_request=4) as (app, http):
        sid = await create(http)
        bodies = [{"inputs": [[0.5, 0.5, 0.5]] * n} for n in (2, 2, 3, 1, 4)]
        async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
            replies = await _frames_in_one_read(ws, bodies)
        assert [r["steps"] for r in replies] == [2, 4, 7, 8, 12]
        # (2+2), (3+1), (4): three writes
        assert (await app.state.core.store.load(sid)).revision == 3


async def test_waiting_text_frames_share_a_step(app: FastAPI, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/sessions", json={"model": "tiny_char"})
    sid = r.json()["id"]
    r = await client.post("/v1/sessions", json={"model": "tiny_char"})
    ref = r.json()["id"]
    texts = ["ab", "c", "abc", "a"]
    async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
        replies = await _frames_in_one_read(ws, [{"text": t} for t in texts])
    assert [r["steps"] for r in replies] == [2, 3, 6, 7]
    assert (await app.state.core.store.load(sid)).revision == 1
    want = (await client.post(f"/v1/sessions/{ref}/step", json={"text": "".join(texts)})).json()
    got = [out for r in replies for out in r["outputs"]]
    assert got == want["outputs"]


async def test_frames_beyond_the_read_ahead_limits_are_all_answered_in_order(
    tiny_store: Path,
) -> None:
    from service.http.websocket import MAX_WAITING_FRAMES

    # a small body limit makes the reader pause after a few frames, many times over
    async with app_with(tiny_store, max_body_bytes=1024) as (app, http):
        sid = await create(http)
        n = 3 * MAX_WAITING_FRAMES
        bodies = [{"inputs": [[i / n, 0.0, 1.0]]} for i in range(n)]
        async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
            replies = await _frames_in_one_read(ws, bodies)
        assert [r["steps"] for r in replies] == list(range(1, n + 1))
        assert (await http.get(f"/v1/sessions/{sid}")).json()["steps"] == n


async def test_the_last_of_frames_that_shared_a_step_is_replayed_like_a_lone_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sid = await create(client)
    bodies = [{"inputs": [[0.1, 0.2, 0.3]]}, {"inputs": [[0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]}]
    async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
        replies = await _frames_in_one_read(ws, bodies)
        assert (await app.state.core.store.load(sid)).revision == 1  # they shared a step
        # a retry of the last frame, now with its offset, gets its own reply again
        replay = await ws.step({**bodies[1], "offset": 1})
        assert replay == {**replies[1], "replayed": True}
        # the first frame is not the last applied request any more: a conflict
        err = (await ws.step({**bodies[0], "offset": 0}))["error"]
        assert err["code"] == "offset_conflict" and err["steps"] == 3
    r = await client.post(f"/v1/sessions/{sid}/step", json={**bodies[1], "offset": 1})
    assert r.json() == {**replies[1], "replayed": True}
