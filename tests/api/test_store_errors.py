"""What clients see of a damaged session record, a broken or unreachable Redis, another
key's gone session and an oversized restored step count: a clear problem, never a 500.

The app runs in process (ASGI) on a Redis database of the test's own (``redis_url``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from service.http.app import create_app
from service.settings import Settings
from tests.api.test_stream import Closed, websocket
from tests.e2e.server import free_port

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
ONE = {"inputs": [[1.0, 2.0, 3.0]]}


@asynccontextmanager
async def serving(
    tiny_store: Path, **settings: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(
        Settings(
            model_store=tiny_store,
            request_log=False,
            model_process=False,
            api_keys="key-a,key-b",
            **settings,
        )
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        yield app, http


async def _create(http: httpx.AsyncClient, **body: Any) -> str:
    r = await http.post("/v1/sessions", json={"model": "tiny_lstm", **body}, headers=A)
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


@pytest.mark.redis
@pytest.mark.parametrize("damage", ["short x:h", "r is xyz", "m is junk", "not a hash"])
async def test_a_damaged_record_is_410_session_corrupt_and_deletable(
    tiny_store: Path, redis_url: str, raw_redis: aioredis.Redis, damage: str
) -> None:
    async with serving(tiny_store, session_store=redis_url) as (app, http):
        good, bad = await _create(http), await _create(http)
        key = f"lstm:s:{bad}"
        if damage == "short x:h":
            await raw_redis.hset(key, "x:h", b"\x00\x01")
        elif damage == "r is xyz":
            await raw_redis.hset(key, "r", b"xyz")
        elif damage == "m is junk":
            await raw_redis.hset(key, "m", b"{]")
        else:
            await raw_redis.delete(key)
            await raw_redis.set(key, b"WRONGTYPE for every hash command")

        for method, path, body in [
            ("GET", f"/v1/sessions/{bad}", None),
            ("GET", f"/v1/sessions/{bad}/state", None),
            ("POST", f"/v1/sessions/{bad}/step", ONE),
            ("POST", f"/v1/sessions/{bad}/reset", None),
            ("POST", f"/v1/sessions/{bad}/fork", None),
            ("POST", f"/v1/sessions/{bad}/generate", {"steps": 2}),
        ]:
            r = await http.request(method, path, json=body, headers=A)
            assert r.status_code == 410, (method, path, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            problem = r.json()
            assert problem["code"] == "session_corrupt"
            assert "Retry-After" not in r.headers
            assert "x:h" not in problem["detail"] and "lstm:" not in problem["detail"]
            # to another key it is not found, exactly as an id that never existed
            other = await http.request(method, path, json=body, headers=B)
            assert other.status_code == 404, (method, path, other.text)

        listed = await http.get("/v1/sessions", headers=A)
        assert listed.status_code == 200
        assert [s["id"] for s in listed.json()["sessions"]] == [good]

        with pytest.raises(Closed) as closed:
            async with websocket(app, f"/v1/sessions/{bad}/stream", headers=A) as ws:
                await ws.recv()
        assert (closed.value.code, closed.value.reason) == (4410, "session_corrupt")

        assert (await http.delete(f"/v1/sessions/{bad}", headers=B)).status_code == 404
        assert (await http.delete(f"/v1/sessions/{bad}", headers=A)).status_code == 204
        assert (await http.get(f"/v1/sessions/{bad}", headers=A)).status_code == 404
        assert (
            await http.post(f"/v1/sessions/{good}/step", json=ONE, headers=A)
        ).status_code == 200


@pytest.mark.redis
async def test_a_websocket_on_a_session_damaged_while_open_gets_an_answer_not_1011(
    tiny_store: Path, redis_url: str, raw_redis: aioredis.Redis
) -> None:
    async with serving(tiny_store, session_store=redis_url) as (app, http):
        sid = await _create(http)
        async with websocket(app, f"/v1/sessions/{sid}/stream", headers=A) as ws:
            assert (await ws.step(ONE))["steps"] == 1
            # The revision is damaged too: with only another field damaged, this replica's
            # copy of the record (written by the last step) would answer the step and its
            # save would rewrite the whole record.
            await raw_redis.hset(f"lstm:s:{sid}", mapping={"m": b"junk", "r": b"junk"})
            try:
                reply = await ws.step(ONE)
            except Closed as exc:
                assert (exc.code, exc.reason) == (4410, "session_corrupt")
            else:
                assert reply["error"]["code"] == "session_corrupt", reply


async def test_an_unreachable_redis_is_503_with_retry_after_and_no_internals(
    tiny_store: Path,
) -> None:
    port = free_port()
    async with serving(tiny_store, session_store=f"redis://127.0.0.1:{port}/0") as (_, http):
        for method, path, body in [
            ("POST", "/v1/sessions", {"model": "tiny_lstm"}),
            ("GET", "/v1/sessions", None),
            ("GET", "/v1/sessions/abc", None),
            ("POST", "/v1/sessions/abc/step", ONE),
            ("DELETE", "/v1/sessions/abc", None),
        ]:
            r = await http.request(method, path, json=body, headers=A)
            assert r.status_code == 503, (method, path, r.text)
            assert r.headers["Retry-After"]
            assert r.json()["code"] == "session_store_unavailable"
            for leak in ("127.0.0.1", str(port), "111", "HGETALL", "EVALSHA", "lstm:", "abc"):
                assert leak not in r.text, (leak, r.text)


@pytest.mark.redis
async def test_a_broken_shared_key_is_503_without_retry_after_and_no_internals(
    tiny_store: Path, redis_url: str, raw_redis: aioredis.Redis
) -> None:
    async with serving(tiny_store, session_store=redis_url) as (_, http):
        await raw_redis.set("lstm:live", b"not a sorted set")
        r = await http.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=A)
        assert r.status_code == 503, r.text
        assert "Retry-After" not in r.headers
        assert "WRONGTYPE" not in r.text and "lstm:" not in r.text


@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_another_keys_expired_session_is_404_not_410(
    tiny_store: Path, request: pytest.FixtureRequest, store: str
) -> None:
    url = "memory" if store == "memory" else request.getfixturevalue("redis_url")
    async with serving(tiny_store, session_store=url) as (_, http):
        sid = await _create(http, ttl_seconds=1)
        await asyncio.sleep(1.3)
        mine = await http.get(f"/v1/sessions/{sid}", headers=A)
        assert (mine.status_code, mine.json()["code"]) == (410, "session_expired")
        theirs = await http.get(f"/v1/sessions/{sid}", headers=B)
        made_up = await http.get("/v1/sessions/made-up-id", headers=B)
        assert theirs.status_code == made_up.status_code == 404
        assert theirs.json()["code"] == made_up.json()["code"] == "session_not_found"


@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize(
    "steps", [2**53, 18446744073709551615, 10**400], ids=["2^53", "2^64-1", "10^400"]
)
async def test_a_huge_restored_step_count_is_422_and_listing_still_works(
    tiny_store: Path, request: pytest.FixtureRequest, store: str, steps: int
) -> None:
    url = "memory" if store == "memory" else request.getfixturevalue("redis_url")
    async with serving(tiny_store, session_store=url) as (_, http):
        sid = await _create(http)
        state = (await http.get(f"/v1/sessions/{sid}/state", headers=A)).json()["state"]
        body = (
            f'{{"model": "tiny_lstm", "state": {orjson.dumps(state).decode()}, "steps": {steps}}}'
        )
        r = await http.post(
            "/v1/sessions",
            content=body,
            headers={**A, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text
        listed = await http.get("/v1/sessions", headers=A)
        assert listed.status_code == 200 and len(listed.json()["sessions"]) == 1

        largest = (1 << 53) - 1
        r = await http.post(
            "/v1/sessions",
            json={"model": "tiny_lstm", "state": state, "steps": largest},
            headers=A,
        )
        assert r.status_code == 201, r.text
        big = r.json()["id"]
        r = await http.post(f"/v1/sessions/{big}/step", json={**ONE, "offset": largest}, headers=A)
        assert r.status_code == 200 and r.json()["steps"] == largest + 1
        assert (await http.get("/v1/sessions", headers=A)).status_code == 200


@pytest.mark.redis
@pytest.mark.parametrize("damage", ["other state names", "other state shape", "last output size"])
async def test_a_consistent_record_that_does_not_fit_its_model_is_corrupt(
    tiny_store: Path, redis_url: str, raw_redis: aioredis.Redis, damage: str
) -> None:
    """Metadata and tensors agree with each other, but not with the model: 410, not a 500
    from inside the model run."""
    async with serving(tiny_store, session_store=redis_url) as (_, http):
        sid = await _create(http)
        assert (await http.post(f"/v1/sessions/{sid}/step", json=ONE, headers=A)).status_code == 200
        key = f"lstm:s:{sid}"
        got = await raw_redis.hget(key, "m")
        assert got is not None
        meta = orjson.loads(got)
        one = np.zeros(1, "<f4").tobytes()
        # A writer elsewhere advances the revision, so this replica's copy of the record is
        # no longer trusted and the next request loads what was written.
        revision = await raw_redis.hget(key, "r")
        assert revision is not None
        await raw_redis.hset(key, "r", str(int(revision) + 1))
        if damage == "other state names":
            meta["state"] = {"z": [1]}
            await raw_redis.hset(key, mapping={"m": orjson.dumps(meta), "x:z": one})
        elif damage == "other state shape":
            meta["state"]["h"] = [1]
            await raw_redis.hset(key, mapping={"m": orjson.dumps(meta), "x:h": one})
        else:
            meta["last_output"] = [1]
            await raw_redis.hset(key, mapping={"m": orjson.dumps(meta), "lo": one})
        for path, body in [
            (f"/v1/sessions/{sid}/step", ONE),
            (f"/v1/sessions/{sid}/generate", {"steps": 2}),
            (f"/v1/sessions/{sid}/fork", None),
        ]:
            r = await http.post(path, json=body, headers=A)
            assert r.status_code == 410, (path, r.text)
            assert r.json()["code"] == "session_corrupt"
        assert (await http.delete(f"/v1/sessions/{sid}", headers=A)).status_code == 204
