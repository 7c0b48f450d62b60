"""The session manager on each store: what another key learns, the per-key limit under
parallel creates, bounded step counts on restore, and what a damaged record allows.

Memory runs on a fake clock; Redis on one Redis (a database of the test's own), Redis
Cluster and Sentinel (a key prefix of the test's own; ``tests/redis_topologies.py``).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from service.errors import (
    CapacityReached,
    InvalidInput,
    SessionCorrupt,
    SessionGone,
    SessionNotFound,
)
from service.inference.runner import Runner
from service.models.registry import ModelRegistry
from service.sessions.limits import MAX_RESTORED_STEPS
from service.sessions.manager import SessionManager
from service.sessions.memory import MemoryStore
from service.sessions.redis_store import RedisStore
from service.sessions.store import SessionStore
from service.settings import Settings
from tests.redis_topologies import REDIS_KINDS, redis_target

TTL = 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    kind: str
    manager: SessionManager
    store: SessionStore
    redis_url: str | None
    replicas: Callable[[], SessionManager]
    """Another manager on the same data (a second replica, for Redis)."""


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def env(
    request: pytest.FixtureRequest, registry: ModelRegistry, tiny_store: Path
) -> AsyncIterator[Env]:
    cfg = Settings(
        model_store=tiny_store, session_ttl_seconds=60, max_sessions_per_key=10, max_sessions=1000
    )
    runner = Runner()
    opened: list[RedisStore] = []
    if request.param == "memory":
        clock = FakeClock()
        store: SessionStore = MemoryStore(clock=clock)
        manager = SessionManager(store, registry, runner, cfg, clock=clock)
        url = None

        def replicas() -> SessionManager:
            return manager

    else:
        url, prefix = redis_target(request, request.param)

        def open_store() -> RedisStore:
            s = RedisStore.from_url(url, prefix=prefix)
            opened.append(s)
            return s

        store = open_store()
        manager = SessionManager(store, registry, runner, cfg)

        def replicas() -> SessionManager:
            return SessionManager(open_store(), registry, runner, cfg)

    try:
        yield Env(request.param, manager, store, url, replicas)
    finally:
        for s in opened:
            await s.close()
        await runner.close()


async def test_another_keys_gone_session_is_not_found(env: Env) -> None:
    """Only the owner learns that a session expired or was evicted; to anyone else it is
    exactly an id that never existed."""
    rec = await env.manager.create("alice", "tiny_lstm")
    assert await env.store.evict(rec.id)
    with pytest.raises(SessionGone) as gone:
        await env.manager.get("alice", rec.id)
    assert gone.value.code == "session_evicted"
    for call in (
        env.manager.get("bob", rec.id),
        env.manager.advance("bob", rec.id, np.zeros((1, 3), np.float32)),
        env.manager.reset("bob", rec.id),
        env.manager.delete("bob", rec.id),
    ):
        with pytest.raises(SessionNotFound) as info:
            await call
        assert info.value.detail == f"no session {rec.id!r}"
    with pytest.raises(SessionNotFound) as made_up:
        await env.manager.get("bob", "made-up")
    assert type(made_up.value) is SessionNotFound


async def test_another_keys_expired_session_is_not_found(env: Env) -> None:
    ttl = TTL if env.kind != "memory" else 5
    rec = await env.manager.create("alice", "tiny_lstm", ttl=ttl)
    if isinstance(env.manager.clock, FakeClock):
        env.manager.clock.now += ttl + 0.5
    else:
        await asyncio.sleep(ttl + 0.2)
    with pytest.raises(SessionGone) as gone:
        await env.manager.get("alice", rec.id)
    assert gone.value.code == "session_expired"
    with pytest.raises(SessionNotFound):
        await env.manager.get("bob", rec.id)


async def test_the_per_key_limit_holds_under_40_parallel_creates(env: Env) -> None:
    managers = [env.manager, env.replicas(), env.replicas(), env.replicas()]
    results = await asyncio.gather(
        *(managers[i % 4].create("alice", "tiny_lstm") for i in range(40)),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 10
    assert all(isinstance(r, CapacityReached) for r in refused), refused
    assert len(await env.manager.list("alice")) == 10
    await env.manager.create("bob", "tiny_lstm")  # the limit is per key
    with pytest.raises(CapacityReached):
        await env.manager.fork("alice", made[0].id)
    await env.manager.delete("alice", made[0].id)
    await env.manager.fork("alice", made[1].id)


def _state(registry: ModelRegistry) -> dict[str, Any]:
    model = registry.get("tiny_lstm")
    return {
        name: {
            "shape": list(arr.shape),
            "dtype": "float32",
            "data_b64": base64.b64encode(arr.astype("<f4").tobytes()).decode(),
        }
        for name, arr in model.zero_state().items()
    }


@pytest.mark.parametrize(
    "steps", [MAX_RESTORED_STEPS + 1, 2**64 - 1, 10**400], ids=["2^53", "2^64-1", "10^400"]
)
async def test_a_restored_step_count_is_bounded(
    env: Env, registry: ModelRegistry, steps: int
) -> None:
    with pytest.raises(InvalidInput):
        await env.manager.create("alice", "tiny_lstm", state=_state(registry), steps=steps)
    assert await env.manager.list("alice") == []


async def test_the_largest_restored_step_count_steps_and_lists(
    env: Env, registry: ModelRegistry
) -> None:
    rec = await env.manager.create(
        "alice", "tiny_lstm", state=_state(registry), steps=MAX_RESTORED_STEPS
    )
    done = await env.manager.advance(
        "alice", rec.id, np.zeros((2, 3), np.float32), offset=rec.steps
    )
    assert done.steps == MAX_RESTORED_STEPS + 2
    assert [r.steps for r in await env.manager.list("alice")] == [MAX_RESTORED_STEPS + 2]


@pytest.mark.redis
async def test_a_corrupt_session_is_deletable_by_its_owner_only(
    registry: ModelRegistry, tiny_store: Path, redis_url: str
) -> None:
    store = RedisStore.from_url(redis_url)
    runner = Runner()
    manager = SessionManager(store, registry, runner, Settings(model_store=tiny_store))
    raw = aioredis.Redis.from_url(redis_url)
    try:
        rec = await manager.create("alice", "tiny_lstm")
        await raw.hset(f"lstm:s:{rec.id}", "x:h", b"short")
        with pytest.raises(SessionCorrupt):
            await manager.get("alice", rec.id)
        with pytest.raises(SessionCorrupt):
            await manager.advance("alice", rec.id, np.zeros((1, 3), np.float32))
        assert await manager.list("alice") == []
        with pytest.raises(SessionNotFound):
            await manager.delete("bob", rec.id)
        await manager.delete("alice", rec.id)
        with pytest.raises(SessionNotFound):
            await manager.get("alice", rec.id)
    finally:
        await raw.aclose()
        await store.close()
        await runner.close()
