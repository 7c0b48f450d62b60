"""The Redis store's copies of recently written records never answer stale.

Two ``RedisStore`` instances on one database are two replicas; each has its own
``SessionManager`` over one runner and the tiny model. Each case lets replica A hold a
trusted copy of a session, lets replica B write the session, and then asks A for what its
copy would answer wrongly: a step (must be recomputed from B's record), a replay (the copy
says "replay", the truth is an offset conflict), an offset check (the copy says
"conflict", the truth is "apply"), and a session replaced under the same id and stepped to
the same revision (only the incarnation tells the copies apart). Every output is checked
against one whole-sequence run (1e-5).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from service.errors import OffsetConflict, SessionNotFound
from service.inference.runner import Runner, run_sync
from service.models.registry import ModelRegistry
from service.sessions.cache import RecordCache, record_bytes
from service.sessions.coalesce import TickBatch
from service.sessions.manager import SessionManager
from service.sessions.record import SessionRecord
from service.sessions.redis_store import RedisStore
from service.settings import Settings

TOL = 1e-5
MODEL = "tiny_lstm"


@dataclass
class Replica:
    store: RedisStore
    manager: SessionManager


@pytest.fixture
async def replicas(
    redis_url: str, registry: ModelRegistry, tiny_store: Path
) -> AsyncIterator[tuple[Replica, Replica]]:
    prefix = f"test:{uuid.uuid4().hex}:"
    runner = Runner()
    cfg = Settings(model_store=tiny_store, max_sessions=100, session_ttl_seconds=60)
    made = []
    for _ in range(2):
        store = RedisStore.from_url(redis_url, prefix=prefix)
        made.append(Replica(store, SessionManager(store, registry, runner, cfg)))
    try:
        yield made[0], made[1]
    finally:
        await runner.close()
        for r in made:
            await r.store.close()


def inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)


def whole(registry: ModelRegistry, x: np.ndarray) -> np.ndarray:
    model = registry.get(MODEL)
    (res,) = run_sync(model, [x], [model.zero_state()])
    assert res.wire is not None
    return res.wire


async def trusted_copy(a: Replica, sid: str, x: np.ndarray, start: int) -> int:
    """Step ``sid`` on A from offset ``start`` until A holds a trusted copy; the offset."""
    offset = start
    while a.store.recent(sid) is None:
        await a.manager.advance("alice", sid, x[offset : offset + 1], offset=offset)
        offset += 1
        assert offset < start + 3, "the copy never became trusted"
    return offset


async def test_a_step_from_a_stale_copy_is_recomputed_on_the_fresh_record(
    replicas: tuple[Replica, Replica], registry: ModelRegistry
) -> None:
    a, b = replicas
    x = inputs(12, seed=1)
    sid = (await a.manager.create("alice", MODEL)).id
    outputs: list[np.ndarray] = []
    offset = 0
    for _ in range(3):  # A steps until it trusts its copy, B steps, A steps again
        while a.store.recent(sid) is None:
            done = await a.manager.advance("alice", sid, x[offset : offset + 1], offset=offset)
            assert done.wire is not None
            outputs.append(done.wire)
            offset += 1
        stale = a.store.recent(sid)
        assert stale is not None and stale.steps == offset
        done = await b.manager.advance("alice", sid, x[offset : offset + 2], offset=offset)
        assert done.wire is not None
        outputs.append(done.wire)
        offset += 2
        assert a.store.recent(sid) is stale, "A's copy is stale now, and offered"
        done = await a.manager.advance("alice", sid, x[offset : offset + 1], offset=offset)
        assert done.wire is not None and not done.replayed
        assert (done.steps_before, done.steps) == (offset, offset + 1)
        outputs.append(done.wire)
        offset += 1
    np.testing.assert_allclose(np.concatenate(outputs), whole(registry, x[:offset]), atol=TOL)
    rec = await b.store.load(sid)
    assert (rec.steps, rec.revision) == (offset, rec.revision)


async def test_a_replay_is_not_answered_from_a_stale_copy(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    x = inputs(6, seed=2)
    sid = (await a.manager.create("alice", MODEL)).id
    offset = await trusted_copy(a, sid, x, 0)
    last = offset - 1
    # A's copy says: the last request was at ``last``, so its retry is a replay
    await b.manager.advance("alice", sid, x[offset : offset + 1], offset=offset)
    assert a.store.recent(sid) is not None
    with pytest.raises(OffsetConflict) as info:
        await a.manager.advance("alice", sid, x[last : last + 1], offset=last)
    assert info.value.steps == offset + 1  # the truth, not the copy's ``offset``
    # and the session is as B left it
    assert (await a.store.load(sid)).steps == offset + 1


async def test_an_offset_conflict_is_not_answered_from_a_stale_copy(
    replicas: tuple[Replica, Replica], registry: ModelRegistry
) -> None:
    a, b = replicas
    x = inputs(6, seed=3)
    sid = (await a.manager.create("alice", MODEL)).id
    offset = await trusted_copy(a, sid, x, 0)
    await b.manager.advance("alice", sid, x[offset : offset + 1], offset=offset)
    offset += 1
    # the copy has one step less: it would call this offset a conflict
    done = await a.manager.advance("alice", sid, x[offset : offset + 1], offset=offset)
    assert (done.steps_before, done.steps, done.replayed) == (offset, offset + 1, False)
    assert done.wire is not None
    np.testing.assert_allclose(done.wire, whole(registry, x[: offset + 1])[-1:], atol=TOL)
    # a true replay through A, now that A's copy is the record: answered, nothing written
    before = await b.store.load(sid)
    again = await a.manager.advance("alice", sid, x[offset : offset + 1], offset=offset)
    assert again.replayed
    np.testing.assert_array_equal(again.outputs, done.outputs)
    assert (await b.store.load(sid)).revision == before.revision


async def test_a_session_replaced_under_its_id_is_never_stepped_from_the_old_copy(
    replicas: tuple[Replica, Replica], registry: ModelRegistry
) -> None:
    """Same id, same revision, another record: the incarnation check tells them apart."""
    a, b = replicas
    old_x, new_x = inputs(6, seed=4), inputs(6, seed=5)
    sid = f"seq-{uuid.uuid4().hex}"
    await a.manager.create("alice", MODEL, kind="sequence", session_id=sid)
    n = 0
    while a.store.recent(sid) is None:
        await a.manager.advance("alice", sid, old_x[n : n + 1], kind="sequence")
        n += 1
    copy = a.store.recent(sid)
    assert copy is not None
    # B starts the sequence again under the same id and steps it to the same revision
    await asyncio.sleep(0.01)  # a later creation time (the records' incarnations differ)
    await b.manager.create("alice", MODEL, kind="sequence", session_id=sid, replace_existing=True)
    for i in range(copy.revision):
        await b.manager.advance("alice", sid, new_x[i : i + 1], kind="sequence")
    fresh = await b.store.load(sid)
    assert fresh.revision == copy.revision and fresh.created_at != copy.created_at
    assert a.store.recent(sid) is copy  # A still offers its copy of the old record
    k = copy.revision
    done = await a.manager.advance("alice", sid, new_x[k : k + 1], kind="sequence")
    assert done.wire is not None
    np.testing.assert_allclose(done.wire, whole(registry, new_x[: k + 1])[-1:], atol=TOL)


async def test_deleted_elsewhere_is_not_found_not_a_step_from_the_copy(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    x = inputs(4, seed=6)
    sid = (await a.manager.create("alice", MODEL)).id
    offset = await trusted_copy(a, sid, x, 0)
    await b.manager.delete("alice", sid)
    assert a.store.recent(sid) is not None
    with pytest.raises(SessionNotFound):
        await a.manager.advance("alice", sid, x[offset : offset + 1], offset=offset)
    assert a.store.recent(sid) is None


async def test_a_sticky_session_costs_one_script_call_per_step(
    replicas: tuple[Replica, Replica], redis_url: str
) -> None:
    """Once trusted, a step of a session that stays on its replica loads nothing."""
    import redis.asyncio as aioredis

    a, _ = replicas
    x = inputs(20, seed=7)
    sid = (await a.manager.create("alice", MODEL)).id
    offset = await trusted_copy(a, sid, x, 0)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        before = await raw.info("commandstats")
        for i in range(offset, 20):
            await a.manager.advance("alice", sid, x[i : i + 1], offset=i)
        after = await raw.info("commandstats")
    finally:
        await raw.aclose()

    def calls(stats: dict[str, dict[str, int]], name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    steps = 20 - offset
    assert calls(after, "hgetall") - calls(before, "hgetall") == 0
    assert calls(after, "evalsha") - calls(before, "evalsha") == steps


# -- the cache's own rules -----------------------------------------------------------------


def _rec(sid: str, revision: int = 0, size: int = 8, created_at: float = 1.0) -> SessionRecord:
    return SessionRecord(
        id=sid,
        owner="alice",
        model=MODEL,
        version=1,
        steps=revision,
        created_at=created_at,
        ttl_seconds=60,
        expires_at=time.time() + 60,
        state={"h": np.zeros(size, dtype=np.float32)},
        revision=revision,
    )


def test_a_copy_is_trusted_only_once_a_load_found_it_and_dropped_when_outdated() -> None:
    cache = RecordCache(10, 2**20)
    now = time.time()
    cache.wrote(_rec("s"))
    assert cache.recent("s", now) is None  # written, never confirmed
    cache.loaded(_rec("s"))
    assert cache.recent("s", now) is not None
    cache.wrote(_rec("s", 1))  # a save on a trusted copy stays trusted
    assert cache.recent("s", now) is not None and cache.recent("s", now).revision == 1  # type: ignore[union-attr]
    cache.loaded(_rec("s", 2))  # another replica wrote: the copy goes
    assert cache.recent("s", now) is None and len(cache) == 0
    cache.wrote(_rec("s", 2))
    cache.loaded(_rec("s", 2, created_at=2.0))  # same revision, another record
    assert len(cache) == 0
    cache.wrote(_rec("e"))
    cache.loaded(_rec("e"))
    assert cache.recent("e", now + 61) is None  # past its expiry


def test_the_cache_is_bounded_by_records_and_bytes() -> None:
    cache = RecordCache(3, 10 * 2**20)
    for i in range(5):
        cache.wrote(_rec(f"s{i}"))
    assert len(cache) == 3
    big = _rec("big", size=2**18)
    cache = RecordCache(100, 3 * record_bytes(big))
    for i in range(5):
        cache.wrote(replace(big, id=f"b{i}"))
    assert len(cache) == 3 and cache.nbytes <= 3 * record_bytes(big)
    assert RecordCache(0, 2**20).max_records == 0
    off = RecordCache(0, 2**20)
    off.wrote(_rec("s"))
    assert len(off) == 0


async def test_calls_made_in_one_loop_iteration_run_as_one_batch() -> None:
    runs: list[list[int]] = []

    async def run(args: list[int]) -> list[int | BaseException]:
        runs.append(args)
        await asyncio.sleep(0)
        return [a * 2 if a != 3 else ValueError("three") for a in args]

    batch: TickBatch[int, int] = TickBatch(run, max_size=4)
    futures = [batch.submit(i) for i in range(6)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert runs == [[0, 1, 2, 3], [4, 5]]
    assert results[:3] == [0, 2, 4] and results[4:] == [8, 10]
    assert isinstance(results[3], ValueError)

    # a cancelled caller does not cancel its call
    fut = batch.submit(7)
    fut.cancel()
    await batch.drain()
    assert runs[-1] == [7]
