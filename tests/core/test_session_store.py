"""One suite for every ``SessionStore``: the in-memory store and Redis (real servers): one
Redis, Redis Cluster (3 primaries, 3 replicas) and a primary behind Sentinel.

Memory runs on a fake clock; Redis on real time with one-second TTLs, since its expiry is
Redis's own. Each Redis case gets a unique key prefix, and on one Redis a database of its
own on this run's private server (``redis_url``); the cluster and the sentinel set are
this run's own too (``tests/redis_topologies.py``).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from service.errors import (
    CapacityReached,
    InvalidInput,
    SessionGone,
    SessionNotFound,
    StoreUnavailable,
)
from service.inference.runner import Runner, run_sync
from service.models.registry import ModelRegistry
from service.sessions.manager import SessionManager
from service.sessions.memory import MemoryStore
from service.sessions.record import LastApplied, SessionRecord, same_last_applied
from service.sessions.redis_store import RedisStore
from service.sessions.store import SessionStore
from service.settings import Settings
from tests.e2e.server import free_port
from tests.redis_process import RedisProcess
from tests.redis_topologies import REDIS_KINDS, redis_target

TTL = 1
"""Seconds; Redis expiry is real time, so the expiry cases wait about two TTLs."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """A store under test, plus what the tests need to drive it the same way on each kind."""

    store: SessionStore
    clock: Callable[[], float]
    advance: Callable[[float], Awaitable[None]]
    gone: list[str] = field(default_factory=list)
    another: Callable[[], SessionStore] | None = None
    """A second store on the same data, as another replica would have (Redis only)."""


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()
        gone: list[str] = []

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Backend(MemoryStore(clock=clock, on_gone=gone.append), clock, advance, gone)
        return

    url, prefix = redis_target(request, request.param)
    gone = []
    extra: list[RedisStore] = []

    def another() -> SessionStore:
        s = RedisStore.from_url(url, prefix=prefix)
        extra.append(s)
        return s

    store = RedisStore.from_url(url, on_gone=gone.append, prefix=prefix)
    try:
        yield Backend(store, time.time, asyncio.sleep, gone, another)
    finally:
        await store.close()
        for s in extra:
            await s.close()


_rng = np.random.default_rng(7)


def make_record(
    now: float,
    owner: str = "alice",
    kind: str = "session",
    ttl: int = TTL,
    session_id: str | None = None,
) -> SessionRecord:
    return SessionRecord(
        id=session_id or uuid.uuid4().hex,
        owner=owner,
        model="weather_lstm",
        version=2,
        steps=0,
        created_at=now,
        ttl_seconds=ttl,
        expires_at=now + ttl,
        state={
            "h": _rng.standard_normal((2, 1, 8)).astype(np.float32),
            "c": _rng.standard_normal((2, 1, 8)).astype(np.float32),
        },
        kind=kind,
    )


def stepped(rec: SessionRecord, now: float, n: int = 3) -> SessionRecord:
    """``rec`` after a step of ``n`` inputs, as the session manager would save it."""
    return replace(
        rec,
        steps=rec.steps + n,
        state={k: v + 1.0 for k, v in rec.state.items()},
        last_output=np.arange(4, dtype=np.float32) + rec.steps,
        last=LastApplied(
            rec.steps, n, f"digest-{rec.steps}", _rng.standard_normal((n, 4)).astype(np.float32)
        ),
        revision=rec.revision + 1,
    ).touched(now)


def assert_same(a: SessionRecord, b: SessionRecord) -> None:
    scalars = ("id", "owner", "model", "version", "steps", "kind", "revision")
    times = ("created_at", "ttl_seconds", "expires_at")
    for name in scalars + times:
        assert getattr(a, name) == getattr(b, name), name
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        assert a.state[k].dtype == np.float32
        np.testing.assert_array_equal(a.state[k], b.state[k])
    if a.last_output is None or b.last_output is None:
        assert a.last_output is None and b.last_output is None
    else:
        np.testing.assert_array_equal(a.last_output, b.last_output)
    assert same_last_applied(a.last, b.last)


# -- create, load, save -------------------------------------------------------------------


async def test_create_then_load_round_trips_the_record(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, max_sessions=10)
    assert_same(await backend.store.load(rec.id), rec)


async def test_loaded_state_is_writable_and_detached(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, 10)
    loaded = await backend.store.load(rec.id)
    loaded.state["h"] += 1.0
    np.testing.assert_array_equal((await backend.store.load(rec.id)).state["h"], rec.state["h"])


async def test_unknown_session_is_not_found(backend: Backend) -> None:
    with pytest.raises(SessionNotFound):
        await backend.store.load("nope")


async def test_save_is_compare_and_set_on_revision(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, 10)
    first = stepped(rec, backend.clock())
    assert await backend.store.save(first, expected_revision=0)
    assert_same(await backend.store.load(rec.id), first)

    stale = stepped(rec, backend.clock(), n=5)
    assert not await backend.store.save(stale, expected_revision=0)
    assert_same(await backend.store.load(rec.id), first)

    second = stepped(first, backend.clock())
    assert await backend.store.save(second, expected_revision=1)
    loaded = await backend.store.load(rec.id)
    assert (loaded.revision, loaded.steps) == (2, 6)


async def test_save_clears_fields_the_new_record_lacks(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, 10)
    one = stepped(rec, backend.clock())
    assert await backend.store.save(one, 0)
    reset = replace(one, steps=0, last_output=None, last=None, revision=2)
    assert await backend.store.save(reset, 1)
    assert_same(await backend.store.load(rec.id), reset)


async def test_save_of_a_vanished_session_raises(backend: Backend) -> None:
    rec = make_record(backend.clock())
    with pytest.raises(SessionNotFound):
        await backend.store.save(stepped(rec, backend.clock()), 0)


async def test_load_many_and_save_many_answer_each_item_on_its_own(backend: Backend) -> None:
    now = backend.clock()
    a, b, gone = make_record(now, ttl=60), make_record(now, ttl=60), make_record(now, ttl=60)
    for rec in (a, b, gone):
        await backend.store.create(rec, 10)
    await backend.store.evict(gone.id)
    loaded = await backend.store.load_many([a.id, "nope", gone.id, b.id])
    assert isinstance(loaded[0], SessionRecord) and isinstance(loaded[3], SessionRecord)
    assert_same(loaded[0], a)
    assert_same(loaded[3], b)
    assert isinstance(loaded[1], SessionNotFound) and isinstance(loaded[2], SessionGone)

    a1, b1 = stepped(a, backend.clock()), stepped(b, backend.clock())
    saved = await backend.store.save_many([(a1, 0), (b1, 5), (stepped(gone, backend.clock()), 0)])
    assert saved[:2] == [True, False] and isinstance(saved[2], SessionGone)
    assert_same(await backend.store.load(a.id), a1)
    assert_same(await backend.store.load(b.id), b)


async def test_save_fails_on_a_record_replaced_under_the_same_id(backend: Backend) -> None:
    """A record deleted and created again under its id is another record, even at the
    same revision: a save computed from the old one must not replace it."""
    old = make_record(backend.clock(), ttl=60)
    await backend.store.create(old, 10)
    await backend.store.delete(old.id)
    new = replace(make_record(backend.clock() + 1, ttl=60, session_id=old.id), state=old.state)
    await backend.store.create(new, 10)
    assert not await backend.store.save(stepped(old, backend.clock()), 0)
    assert_same(await backend.store.load(old.id), new)
    assert await backend.store.save(stepped(new, backend.clock()), 0)


async def test_concurrent_saves_of_many_sessions_each_land(backend: Backend) -> None:
    recs = [make_record(backend.clock(), ttl=60) for _ in range(40)]
    for rec in recs:
        await backend.store.create(rec, 100)
    news = [stepped(rec, backend.clock(), n=i + 1) for i, rec in enumerate(recs)]
    saved = await asyncio.gather(*(backend.store.save(new, 0) for new in news))
    assert saved == [True] * len(recs)
    for rec in await asyncio.gather(*(backend.store.load(r.id) for r in recs)):
        assert rec.steps == next(n for n in news if n.id == rec.id).steps


# -- expiry, eviction, deletion --------------------------------------------------------------


async def test_expired_session_is_gone_for_a_ttl_then_not_found(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, 10)
    await backend.advance(TTL + 0.1)
    with pytest.raises(SessionGone) as info:
        await backend.store.load(rec.id)
    assert (info.value.reason, info.value.code) == ("expired", "session_expired")
    with pytest.raises(SessionGone):
        await backend.store.save(stepped(rec, backend.clock()), 0)
    assert await backend.store.count() == 0
    await backend.advance(TTL)
    with pytest.raises(SessionNotFound):
        await backend.store.load(rec.id)


async def test_save_extends_the_expiry(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, 10)
    await backend.advance(0.6 * TTL)
    assert await backend.store.save(stepped(rec, backend.clock()), 0)
    await backend.advance(0.6 * TTL)
    assert (await backend.store.load(rec.id)).steps == 3


async def test_sweep_counts_expired_sessions_once(backend: Backend) -> None:
    recs = [make_record(backend.clock()) for _ in range(2)]
    for rec in recs:
        await backend.store.create(rec, 10)
    keep = make_record(backend.clock(), ttl=60)
    await backend.store.create(keep, 10)
    await backend.advance(TTL + 0.1)
    assert await backend.store.sweep() == 2
    assert await backend.store.sweep() == 0
    assert backend.gone == ["expired", "expired"]
    assert await backend.store.count() == 1
    with pytest.raises(SessionGone):
        await backend.store.load(recs[0].id)


async def test_evicted_session_is_gone_for_a_ttl_then_not_found(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, 10)
    assert await backend.store.evict(rec.id)
    assert not await backend.store.evict(rec.id)
    assert backend.gone == ["evicted"]
    with pytest.raises(SessionGone) as info:
        await backend.store.load(rec.id)
    assert (info.value.reason, info.value.code) == ("evicted", "session_evicted")
    with pytest.raises(SessionGone):
        await backend.store.save(stepped(rec, backend.clock()), 0)
    assert await backend.store.count() == 0
    await backend.advance(TTL + 0.1)
    with pytest.raises(SessionNotFound):
        await backend.store.load(rec.id)


async def test_delete_removes_the_session_and_leaves_no_tombstone(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, 10)
    assert await backend.store.delete(rec.id)
    with pytest.raises(SessionNotFound):
        await backend.store.load(rec.id)
    assert not await backend.store.delete(rec.id)

    other = make_record(backend.clock())
    await backend.store.create(other, 10)
    await backend.store.evict(other.id)
    assert not await backend.store.delete(other.id)
    with pytest.raises(SessionNotFound):
        await backend.store.load(other.id)


async def test_creating_over_a_tombstone_revives_the_id(backend: Backend) -> None:
    rec = make_record(backend.clock())
    await backend.store.create(rec, 10)
    await backend.store.evict(rec.id)
    await backend.store.create(rec, 10)
    assert_same(await backend.store.load(rec.id), rec)


# -- listing, counting, capacity -------------------------------------------------------------


async def test_list_is_per_owner_and_kind(backend: Backend) -> None:
    now = backend.clock()
    a1, a2 = make_record(now, "alice", ttl=60), make_record(now, "alice", ttl=60)
    seq = make_record(now, "alice", kind="sequence", ttl=60)
    b1 = make_record(now, "bob", ttl=60)
    for rec in (a1, a2, seq, b1):
        await backend.store.create(rec, 10)

    assert {r.id for r in await backend.store.list("alice")} == {a1.id, a2.id}
    assert [r.id for r in await backend.store.list("alice", "sequence")] == [seq.id]
    assert [r.id for r in await backend.store.list("bob")] == [b1.id]
    assert await backend.store.list("carol") == []
    assert_same(next(r for r in await backend.store.list("bob")), b1)

    await backend.store.delete(a1.id)
    await backend.store.evict(seq.id)
    assert [r.id for r in await backend.store.list("alice")] == [a2.id]
    assert await backend.store.list("alice", "sequence") == []


async def test_list_leaves_out_expired_sessions(backend: Backend) -> None:
    short = make_record(backend.clock())
    long = make_record(backend.clock(), ttl=60)
    await backend.store.create(short, 10)
    await backend.store.create(long, 10)
    await backend.advance(TTL + 0.1)
    assert [r.id for r in await backend.store.list("alice")] == [long.id]


async def test_count_is_live_sessions_of_all_owners(backend: Backend) -> None:
    assert await backend.store.count() == 0
    recs = [make_record(backend.clock(), owner, ttl=60) for owner in ("alice", "bob", "bob")]
    for rec in recs:
        await backend.store.create(rec, 10)
    assert await backend.store.count() == 3
    await backend.store.delete(recs[0].id)
    await backend.store.evict(recs[1].id)
    assert await backend.store.count() == 1


async def test_capacity_is_enforced_and_freed(backend: Backend) -> None:
    now = backend.clock()
    first, second = make_record(now, ttl=60), make_record(now)
    await backend.store.create(first, max_sessions=2)
    await backend.store.create(second, max_sessions=2)
    with pytest.raises(CapacityReached):
        await backend.store.create(make_record(now), max_sessions=2)

    await backend.store.delete(first.id)
    await backend.store.create(make_record(now, ttl=60), max_sessions=2)
    with pytest.raises(CapacityReached):
        await backend.store.create(make_record(now), max_sessions=2)

    await backend.advance(TTL + 0.1)
    await backend.store.create(make_record(backend.clock()), max_sessions=2)
    assert await backend.store.count() == 2
    assert backend.gone == ["expired"]


async def test_ping_answers(backend: Backend) -> None:
    await backend.store.ping()


# -- concurrency --------------------------------------------------------------------------------


async def test_concurrent_increments_lose_nothing(backend: Backend) -> None:
    """Workers do load, step, compare-and-set, retrying on conflict, as the session manager."""
    stores = [backend.store, backend.another() if backend.another else backend.store]
    rec = make_record(backend.clock(), ttl=60)
    await backend.store.create(rec, 10)
    conflicts = 0

    async def worker(store: SessionStore, n: int) -> None:
        nonlocal conflicts
        for _ in range(n):
            while True:
                cur = await store.load(rec.id)
                await asyncio.sleep(0)
                if await store.save(stepped(cur, backend.clock(), n=1), cur.revision):
                    break
                conflicts += 1

    await asyncio.gather(*(worker(stores[i % 2], 25) for i in range(4)))
    final = await backend.store.load(rec.id)
    assert (final.steps, final.revision) == (100, 100)
    assert conflicts > 0, "the workers never raced; the test proves nothing"


@pytest.mark.redis
async def test_two_replicas_racing_one_save_exactly_one_wins(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    a = RedisStore.from_url(redis_url, prefix=prefix)
    b = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        rec = make_record(time.time(), ttl=60)
        await a.create(rec, 10)
        for _ in range(50):
            cur = await a.load(rec.id)
            mine = stepped(cur, time.time(), n=1)
            theirs = replace(stepped(cur, time.time(), n=2), revision=cur.revision + 1)
            won = await asyncio.gather(a.save(mine, cur.revision), b.save(theirs, cur.revision))
            assert sorted(won) == [False, True]
            after = await b.load(rec.id)
            assert after.steps == cur.steps + (1 if won[0] else 2)
        assert (await a.load(rec.id)).revision == 50
    finally:
        await a.close()
        await b.close()


# -- outage and recovery (Redis) ---------------------------------------------------------------


@pytest.fixture
def throwaway_redis() -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.signal(signal.SIGCONT)
        server.kill()


async def _timed_unavailable(op: Awaitable[object]) -> float:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await op
    assert info.value.code == "session_store_unavailable"
    return time.monotonic() - start


@pytest.mark.redis
@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:{port}/0", "redis+cluster://127.0.0.1:{port}",
     "redis+sentinel://127.0.0.1:{port},127.0.0.1:{port}/mymaster"],
    ids=["redis", "cluster", "sentinel"],
)  # fmt: skip
async def test_nothing_listening_answers_unavailable_quickly(url: str) -> None:
    store = RedisStore.from_url(url.format(port=free_port()))
    try:
        assert await _timed_unavailable(store.ping()) < 1.0
        assert await _timed_unavailable(store.load("x")) < 1.0
        assert await _timed_unavailable(store.create(make_record(time.time()), 10)) < 1.0
    finally:
        await store.close()


@pytest.mark.redis
async def test_killed_redis_is_unavailable_and_recovers_without_a_new_store(
    throwaway_redis: RedisProcess,
) -> None:
    store = RedisStore.from_url(throwaway_redis.url)
    try:
        rec = make_record(time.time(), ttl=60)
        await store.create(rec, 10)
        assert (await store.load(rec.id)).id == rec.id

        throwaway_redis.kill()
        assert await _timed_unavailable(store.load(rec.id)) < 1.0
        assert await _timed_unavailable(store.save(stepped(rec, time.time()), 0)) < 1.0
        assert await _timed_unavailable(store.ping()) < 1.0

        throwaway_redis.start()
        await store.ping()
        with pytest.raises(SessionNotFound):  # it kept nothing on disk
            await store.load(rec.id)
        await store.create(rec, 10)  # the scripts are loaded again on NOSCRIPT
        assert await store.save(stepped(rec, time.time()), 0)
        assert (await store.load(rec.id)).steps == 3
    finally:
        await store.close()


@pytest.mark.redis
async def test_hung_redis_times_out_and_recovers(throwaway_redis: RedisProcess) -> None:
    store = RedisStore.from_url(throwaway_redis.url, socket_timeout=0.3)
    try:
        rec = make_record(time.time(), ttl=60)
        await store.create(rec, 10)
        throwaway_redis.signal(signal.SIGSTOP)
        assert await _timed_unavailable(store.load(rec.id)) < 1.0
        throwaway_redis.signal(signal.SIGCONT)
        assert (await store.load(rec.id)).id == rec.id
        assert await store.save(stepped(rec, time.time()), 0)
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_restarted_while_idle_costs_no_failed_request(
    throwaway_redis: RedisProcess,
) -> None:
    store = RedisStore.from_url(throwaway_redis.url)
    try:
        await store.create(make_record(time.time(), ttl=60), 10)
        throwaway_redis.kill()
        throwaway_redis.start()
        await asyncio.sleep(0.05)  # the pooled connection sees the old server's EOF
        await store.ping()
        await store.create(make_record(time.time(), ttl=60), 10)
        assert await store.count() == 1
    finally:
        await store.close()


def test_an_advanced_record_equals_the_same_record_built_by_replace() -> None:
    from dataclasses import FrozenInstanceError, replace

    import numpy as np
    import pytest

    rec = SessionRecord("s", "o", "m", 2, 5, 10.0, 60, 70.0, {"h": np.zeros(3)}, kind="sequence")
    state = {"h": np.ones(3)}
    last = LastApplied(5, 1, "d", np.ones((1, 2), dtype=np.float32))
    got = rec.advanced(6, state, np.ones(2), last, 20.0)
    want = replace(
        rec, steps=6, state=state, last_output=got.last_output, last=last, revision=1
    ).touched(20.0)
    assert got == want and got.expires_at == 80.0 and got.kind == "sequence"
    assert rec.steps == 5 and rec.revision == 0  # the original is untouched
    with pytest.raises(FrozenInstanceError):
        got.steps = 7  # type: ignore[misc]


# -- the session primitive on each store ------------------------------------------------------
# ``SessionManager.advance`` loads and saves only through the ``SessionStore`` protocol, so it
# must behave the same on each store: numbers, failed steps, replays (the last applied
# request's outputs round-trip through the store), and a record changed by another writer
# mid-step.


async def test_the_session_step_on_this_store(
    backend: Backend, registry: ModelRegistry, tiny_store: Path
) -> None:
    runner = Runner()
    cfg = Settings(model_store=tiny_store, max_sessions=100, session_ttl_seconds=60)
    manager = SessionManager(backend.store, registry, runner, cfg, clock=backend.clock)
    seq = np.asarray(
        [[0.5, 1.0, -2.0], [1.5, 0.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 0.25, 0.0]], dtype=np.float32
    )
    try:
        rec = await manager.create("alice", "tiny_lstm")
        outputs = []
        for i in range(len(seq)):
            done = await manager.advance("alice", rec.id, seq[i : i + 1], offset=i)
            assert done.wire is not None
            outputs.append(done.wire)
        model = registry.get("tiny_lstm")
        (whole,) = run_sync(model, [seq], [model.zero_state()])
        assert whole.wire is not None
        np.testing.assert_allclose(np.concatenate(outputs), whole.wire, rtol=0, atol=1e-5)

        def parse_bad(model: object) -> np.ndarray:
            raise InvalidInput("expected 3 features per step, got 2")

        before = await backend.store.load(rec.id)
        with pytest.raises(InvalidInput):
            await manager.advance("alice", rec.id, parse_bad)
        after = await backend.store.load(rec.id)
        assert (after.steps, after.revision) == (before.steps, before.revision) == (4, 4)
        replay = await manager.advance("alice", rec.id, seq[-1:], offset=3)
        assert replay.replayed and (replay.steps_before, replay.steps) == (3, 4)
        np.testing.assert_array_equal(replay.outputs, whole.outputs[-1:])

        # another writer (a replica, a /v2 sequence) saves while the step's model runs:
        # the step's save loses the compare-and-set, and it runs again on the new record
        real_run = runner.run
        intruded: list[SessionRecord] = []
        tasks: list[asyncio.Task[None]] = []  # kept: the loop holds tasks only weakly

        def run_after_an_intruder(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            async def later() -> None:
                try:
                    if not intruded:
                        cur = await backend.store.load(rec.id)
                        moved = replace(cur, steps=cur.steps + 10, revision=cur.revision + 1)
                        assert await backend.store.save(moved, cur.revision)
                        intruded.append(moved)
                    done.set_result(await real_run(*args, **kwargs))
                except Exception as exc:  # fail the step, not hang it
                    done.set_exception(exc)

            tasks.append(asyncio.get_running_loop().create_task(later()))
            return done

        manager.runner = cast(Runner, SimpleNamespace(run=run_after_an_intruder))
        result = await manager.advance("alice", rec.id, np.zeros((1, 3), dtype=np.float32))
        final = await backend.store.load(rec.id)
        assert intruded and result.steps == 4 + 10 + 1
        assert (final.steps, final.revision) == (15, 6)
    finally:
        await runner.close()
