"""The Redis store against damaged records, broken keys and a Redis that is gone.

Every case runs on a real Redis database of its own (the ``redis_url`` fixture): a record
is written by the store, then damaged the way an operator's ``HSET`` or another program
could, and the store must answer with the core's errors (``SessionCorrupt``,
``StoreUnavailable``), never a ``KeyError``, ``ValueError`` or a raw ``RedisError``; the
damaged session must be deletable and must not break its owner's listing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis

from service.errors import (
    CapacityReached,
    SessionCorrupt,
    SessionGone,
    SessionNotFound,
    StoreUnavailable,
)
from service.sessions.record import LastApplied, SessionRecord
from service.sessions.redis_store import RedisStore
from tests.e2e.server import free_port

pytestmark = pytest.mark.redis

PREFIX = "lstm:"


def record(owner: str = "alice", ttl: int = 60) -> SessionRecord:
    now = time.time()
    rng = np.random.default_rng(3)
    return SessionRecord(
        id=uuid.uuid4().hex,
        owner=owner,
        model="tiny_lstm",
        version=1,
        steps=3,
        created_at=now,
        ttl_seconds=ttl,
        expires_at=now + ttl,
        state={
            "h": rng.standard_normal((1, 1, 8)).astype(np.float32),
            "c": rng.standard_normal((1, 1, 8)).astype(np.float32),
        },
        last_output=np.arange(2, dtype=np.float32),
        last=LastApplied(2, 1, "digest", np.ones((1, 2), dtype=np.float32)),
        revision=3,
    )


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(redis_url, prefix=PREFIX)
    try:
        yield s
    finally:
        await s.close()


Damage = Callable[[aioredis.Redis, str], Awaitable[object]]


def _meta(change: Callable[[dict[str, object]], object]) -> Damage:
    async def damage(r: aioredis.Redis, key: str) -> None:
        raw_meta = await r.hget(key, "m")
        assert raw_meta is not None
        meta = orjson.loads(raw_meta)
        change(meta)
        await r.hset(key, "m", orjson.dumps(meta))

    return damage


def _raw_meta(text: bytes) -> Damage:
    async def damage(r: aioredis.Redis, key: str) -> None:
        await r.hset(key, "m", text)

    return damage


DAMAGES: dict[str, Damage] = {
    "m is not JSON": lambda r, k: r.hset(k, "m", b"\x00junk{"),
    "m is a list": lambda r, k: r.hset(k, "m", b"[1, 2]"),
    "m is missing": lambda r, k: r.hdel(k, "m"),
    "steps is a string": _meta(lambda m: m.__setitem__("steps", "three")),
    "steps is a bool": _meta(lambda m: m.__setitem__("steps", True)),
    "steps overflows 64 bits": _raw_meta(
        b'{"id":"x","steps":18446744073709551616999999999999999999}'
    ),
    "version is null": _meta(lambda m: m.__setitem__("version", None)),
    "created_at is in the year 10^300": _meta(lambda m: m.__setitem__("created_at", 1e300)),
    "state is not an object": _meta(lambda m: m.__setitem__("state", [1, 8])),
    "a state shape is negative": _meta(lambda m: m.__setitem__("state", {"h": [-1, 8]})),
    "last is a string": _meta(lambda m: m.__setitem__("last", "yes")),
    "metadata names another session": _meta(lambda m: m.__setitem__("id", "someone-else")),
    "x:h is short": lambda r, k: r.hset(k, "x:h", b"\x00\x00\x80?"),
    "x:c is missing": lambda r, k: r.hdel(k, "x:c"),
    "x:h holds NaN": lambda r, k: r.hset(k, "x:h", np.full(8, np.nan, "<f4").tobytes()),
    "lo is short": lambda r, k: r.hset(k, "lo", b"\x00"),
    "lr is missing": lambda r, k: r.hdel(k, "lr"),
    "r is xyz": lambda r, k: r.hset(k, "r", b"xyz"),
    "r is missing": lambda r, k: r.hdel(k, "r"),
    "o is not UTF-8": lambda r, k: r.hset(k, "o", b"\xff\xfe"),
    "ttl disagrees": lambda r, k: r.hset(k, "ttl", b"abc"),
}


@pytest.mark.parametrize("damage", list(DAMAGES.values()), ids=list(DAMAGES))
async def test_a_damaged_record_is_corrupt_deletable_and_left_out_of_listings(
    store: RedisStore, raw_redis: aioredis.Redis, damage: Damage
) -> None:
    good, bad = record(), record()
    await store.create(good, 10)
    await store.create(bad, 10)
    await damage(raw_redis, f"{PREFIX}s:{bad.id}")

    with pytest.raises(SessionCorrupt) as info:
        await store.load(bad.id)
    assert info.value.code == "session_corrupt" and info.value.reason == "corrupt"
    assert info.value.owner in ("alice", None)
    assert [r.id for r in await store.list("alice")] == [good.id]
    await store.evict(bad.id)  # damage or not, eviction leaves a readable tombstone or none

    await store.delete(bad.id)
    with pytest.raises(SessionNotFound):
        await store.load(bad.id)
    assert (await store.load(good.id)).steps == 3


async def test_the_owner_of_a_damaged_record_is_kept_on_the_error(
    store: RedisStore, raw_redis: aioredis.Redis
) -> None:
    rec = record(owner="bob")
    await store.create(rec, 10)
    await raw_redis.hset(f"{PREFIX}s:{rec.id}", "x:h", b"")
    with pytest.raises(SessionCorrupt) as info:
        await store.load(rec.id)
    assert info.value.owner == "bob"


async def test_a_record_key_of_another_type_is_corrupt_not_unavailable(
    store: RedisStore, raw_redis: aioredis.Redis
) -> None:
    """``WRONGTYPE`` is an answer about the session, not an outage: no retry helps."""
    rec = record(owner="bob")
    await store.create(rec, 10)
    key = f"{PREFIX}s:{rec.id}"
    await raw_redis.delete(key)
    await raw_redis.set(key, b"junk")
    with pytest.raises(SessionCorrupt) as info:
        await store.load(rec.id)
    assert info.value.owner == "bob"  # from the tombstone
    with pytest.raises(SessionCorrupt):
        await store.save(replace(rec, revision=4), 3)
    assert await store.list("bob") == []
    assert not await store.evict(rec.id)
    assert await store.delete(rec.id)
    with pytest.raises(SessionNotFound):
        await store.load(rec.id)


async def test_a_broken_key_fails_only_its_own_save_in_a_batch(
    store: RedisStore, raw_redis: aioredis.Redis
) -> None:
    """The saves of one batch go to Redis as one script: a session whose keys are
    broken fails alone, the others before and after it are saved."""
    recs = [record(owner="bob") for _ in range(3)]
    for rec in recs:
        await store.create(rec, 10)
    broken = recs[1]
    await raw_redis.delete(f"{PREFIX}t:{broken.id}")
    await raw_redis.set(f"{PREFIX}t:{broken.id}", b"junk")
    await raw_redis.delete(f"{PREFIX}s:{broken.id}")  # the save reads the tombstone
    stepped = [replace(rec, steps=rec.steps + 1, revision=rec.revision + 1) for rec in recs]
    outcomes = await store.save_many([(rec, rec.revision - 1) for rec in stepped])
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], SessionCorrupt)
    for i in (0, 2):
        assert (await store.load(recs[i].id)).steps == recs[i].steps + 1


@pytest.mark.parametrize("tomb", ["a string", "an unknown reason"])
async def test_a_damaged_tombstone_is_corrupt_and_deletable(
    store: RedisStore, raw_redis: aioredis.Redis, tomb: str
) -> None:
    rec = record(owner="bob")
    await store.create(rec, 10)
    await store.evict(rec.id)
    key = f"{PREFIX}t:{rec.id}"
    await raw_redis.delete(key)
    if tomb == "a string":
        await raw_redis.set(key, b"junk")
    else:
        await raw_redis.hset(key, mapping={"reason": "xyz", "owner": "bob"})
    with pytest.raises(SessionCorrupt):
        await store.load(rec.id)
    await store.delete(rec.id)
    with pytest.raises(SessionNotFound):
        await store.load(rec.id)


async def test_an_owner_index_member_that_is_not_utf8_is_skipped(
    store: RedisStore, raw_redis: aioredis.Redis
) -> None:
    rec = record()
    await store.create(rec, 10)
    await raw_redis.sadd(f"{PREFIX}o:session:alice", b"\xff\xfe")
    assert [r.id for r in await store.list("alice")] == [rec.id]


async def test_gone_sessions_name_their_owner(store: RedisStore) -> None:
    rec = record(owner="bob")
    await store.create(rec, 10)
    await store.evict(rec.id)
    with pytest.raises(SessionGone) as info:
        await store.load(rec.id)
    assert (info.value.reason, info.value.owner) == ("evicted", "bob")


# -- errors tell the client nothing of the store's insides --------------------------------------


async def test_an_unreachable_redis_is_unavailable_without_its_address() -> None:
    port = free_port()
    s = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", prefix="secret-prefix:")
    try:
        for call in (s.load("some-session"), s.create(record(), 10), s.list("alice")):
            with pytest.raises(StoreUnavailable) as info:
                await call
            detail = info.value.detail
            assert info.value.retry_after is not None
            for leak in ("127.0.0.1", str(port), "secret-prefix", "some-session", "Error", "111"):
                assert leak not in detail, detail
    finally:
        await s.close()


async def test_an_error_reply_on_a_shared_key_is_not_retryable_and_names_no_key(
    store: RedisStore, raw_redis: aioredis.Redis
) -> None:
    await raw_redis.set(f"{PREFIX}live", b"not a sorted set")
    for call in (store.create(record(), 10), store.count(), store.sweep()):
        with pytest.raises(StoreUnavailable) as info:
            await call
        assert info.value.retry_after is None
        assert "WRONGTYPE" not in info.value.detail and PREFIX not in info.value.detail


# -- the per-key session limit is one atomic step -----------------------------------------------


async def test_the_per_key_limit_holds_under_parallel_creates_from_several_replicas(
    redis_url: str,
) -> None:
    replicas = [RedisStore.from_url(redis_url, prefix=PREFIX) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(replicas[i % 4].create(record(), 1000, max_per_owner=10) for i in range(40)),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 10
        assert all(isinstance(r, CapacityReached) for r in results if r is not None)
        assert len(await replicas[0].list("alice")) == 10
        await replicas[0].create(record(owner="bob"), 1000, max_per_owner=10)  # per key
        other_kind = replace(record(), kind="sequence")
        await replicas[0].create(other_kind, 1000, max_per_owner=10)  # and per kind

        # a deleted, evicted or expired session frees its place
        first = (await replicas[0].list("alice"))[0]
        await replicas[1].delete(first.id)
        await replicas[2].create(record(ttl=1), 1000, max_per_owner=10)
        with pytest.raises(CapacityReached):
            await replicas[3].create(record(), 1000, max_per_owner=10)
        await asyncio.sleep(1.2)
        await replicas[3].create(record(), 1000, max_per_owner=10)
    finally:
        for r in replicas:
            await r.close()
