"""Hot reload of the model store and the per-key limits."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from service.errors import RateLimited
from service.http.app import create_app, reload_models
from service.http.rate_limit import RateLimiter
from service.settings import Settings
from tests.tiny_models import write_tiny_model

SEQ = [[0.5, 1.0, -2.0], [1.5, 0.0, 3.0]]


async def test_reload_adds_refuses_and_removes_versions(tmp_path: Path, tiny_store: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    app = create_app(Settings(model_store=store, request_log=False))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        core = app.state.core
        old = (await c.post("/v1/sessions", json={"model": "tiny_lstm"})).json()
        assert old["version"] == 2

        write_tiny_model(store, "tiny_lstm", version=3, seed=9)
        await reload_models(core)
        assert (await c.get("/v1/models/tiny_lstm")).json()["versions"] == [1, 2, 3]
        new = (await c.post("/v1/sessions", json={"model": "tiny_lstm"})).json()
        assert new["version"] == 3
        r = await c.post(f"/v1/sessions/{old['id']}/step", json={"inputs": SEQ})
        assert r.status_code == 200
        assert (await c.get(f"/v1/sessions/{old['id']}")).json()["version"] == 2

        write_tiny_model(store, "tiny_lstm", version=4, seed=10)
        (store / "tiny_lstm" / "4" / "model.onnx").write_bytes(b"corrupt")
        await reload_models(core)
        assert any("tiny_lstm/4" in e for e in core.registry.errors)
        assert (await c.get("/v1/models/tiny_lstm")).json()["default_version"] == 3

        shutil.rmtree(store / "tiny_lstm" / "4")
        shutil.rmtree(store / "tiny_lstm" / "2")
        await reload_models(core)
        r = await c.post(f"/v1/sessions/{old['id']}/step", json={"inputs": SEQ})
        assert r.status_code == 410 and r.json()["code"] == "session_evicted"
        assert "version 2" in r.json()["detail"]
        r = await c.post(f"/v1/sessions/{new['id']}/step", json={"inputs": SEQ})
        assert r.status_code == 200


async def test_reload_on_interval(tmp_path: Path, tiny_store: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    app = create_app(Settings(model_store=store, reload_interval_seconds=0.05, request_log=False))
    async with app.router.lifespan_context(app):
        write_tiny_model(store, "tiny_gru", "gru", version=2, seed=11)
        for _ in range(100):
            if app.state.core.registry.versions("tiny_gru") == [1, 2]:
                break
            await asyncio.sleep(0.05)
        assert app.state.core.registry.versions("tiny_gru") == [1, 2]


async def test_sessions_per_key(tiny_store: Path) -> None:
    app = create_app(
        Settings(model_store=tiny_store, api_keys="a,b", max_sessions_per_key=2, request_log=False)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        a = {"Authorization": "Bearer a"}
        b = {"Authorization": "Bearer b"}
        first = (await c.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=a)).json()
        await c.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=a)
        r = await c.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=a)
        assert r.status_code == 429 and r.json()["code"] == "session_capacity_reached"
        assert "retry-after" in r.headers
        r = await c.post(f"/v1/sessions/{first['id']}/fork", headers=a)
        assert r.status_code == 429
        assert (
            await c.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=b)
        ).status_code == 201


async def test_rate_limit_per_key(tiny_store: Path) -> None:
    app = create_app(
        Settings(
            model_store=tiny_store,
            api_keys="a,b",
            rate_limit_per_second=0.001,
            rate_limit_burst=3,
            request_log=False,
        )
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        a = {"Authorization": "Bearer a"}
        for _ in range(3):
            assert (await c.get("/v1/models", headers=a)).status_code == 200
        r = await c.get("/v1/models", headers=a)
        assert r.status_code == 429 and r.json()["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer b"})).status_code == 200
        assert (await c.get("/healthz")).status_code == 200


def test_token_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    limiter.check("k")
    limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")
    now[0] += 0.5
    limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")
