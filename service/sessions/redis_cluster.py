"""Sessions on Redis Cluster: ``RedisStore`` with a layout where every script touches one slot.

Layout (``{...}`` is the hash tag: the part of a key that picks its slot)::

    {p}{bb}s:{id}      the live record          bb: the session's bucket, two hex digits,
    {p}{bb}t:{id}      the tombstone                a hash of the id (256 buckets)
    {p}{bb}live        sorted set id -> expires_at, the bucket's live sessions
    {p}o:{hash}        sorted set id -> expires_at, the owner index; hash: of kind and owner

A session's record, tombstone and its bucket's live set share a slot, so ``CREATE``,
``SAVE``, ``EVICT`` and ``DELETE`` run as on one Redis, each on one slot, one shard. The
256 buckets spread sessions over up to 256 slots: enough for clusters of dozens of
primaries (a bucket is the unit that moves when slots are resharded).

Limits across shards:

- The session count (``count``, the global cap ``max_sessions``) is the sum of the buckets'
  live sets, read in one pipeline (one request per primary). A create checks that sum and
  then creates: creates racing on several replicas can each pass the check, so the live
  count can exceed ``max_sessions`` by the creates in flight at that moment (at most the
  concurrency of creates across replicas). The cap guards memory; it is never off by more.
- The per-key cap is exact: ``RESERVE`` adds the id to the owner index, in the owner's
  slot, only while fewer than ``max_per_owner`` unexpired ids are there, atomically; then
  the record is created. Each save moves the id's expiry in the index forward (``ZADD GT``,
  sent in the same pipeline as the save, to the owner's shard). A delete or an eviction
  removes the id. If a create fails after its reservation, or an index update is lost in
  an outage, the index errs towards holding an id too long (never too short), until the
  expiry it recorded passes.
- Listing a key's sessions reads its index (one slot) and then the records it names (one
  pipeline, per shard): no shard is scanned.
- ``sweep`` empties each bucket's expired ids (one pipeline); each expiry is counted once.

On an outage (a dead or failed-over primary) a command's error is 503 as on one Redis, and
the client forgets the cluster's layout, so the next command asks the cluster again and
reaches the promoted replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from service.errors import CapacityReached
from service.sessions import redis_scripts
from service.sessions.record import SessionRecord
from service.sessions.redis_errors import is_outage, text, translated
from service.sessions.redis_store import Call, RedisStore

log = logging.getLogger("service.sessions.redis_store")

BUCKETS = 256
RELAYOUT_SECONDS = 0.2
_BIG = 2**62
"""The global cap passed to ``CREATE`` in a bucket: the cap is checked on the sum instead."""


def bucket(session_id: str) -> str:
    """The session's bucket, two hex digits (part of its keys' hash tag)."""
    return f"{zlib.crc32(session_id.encode()) % BUCKETS:02x}"


class RedisClusterStore(RedisStore):
    """``RedisStore`` on Redis Cluster: each script on one slot; limits as documented."""

    def __init__(self, client: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(client, *args, **kwargs)
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("a key prefix for Redis Cluster must not hold { or }")
        self._reserve = client.register_script(redis_scripts.RESERVE)
        self._lives = [f"{self.prefix}{{{b:02x}}}live" for b in range(BUCKETS)]
        self._relayout = asyncio.Lock()
        self._summing: asyncio.Future[tuple[int, int]] | None = None
        self._relayout_at = -RELAYOUT_SECONDS

    @property
    def _cluster(self) -> RedisCluster:
        assert isinstance(self._redis, RedisCluster)
        return self._redis

    # -- keys ---------------------------------------------------------------------------------

    def _rkey(self, session_id: str) -> str:
        return f"{self.prefix}{{{bucket(session_id)}}}s:{session_id}"

    def _tkey(self, session_id: str) -> str:
        return f"{self.prefix}{{{bucket(session_id)}}}t:{session_id}"

    def _lkey(self, session_id: str) -> str:
        return f"{self.prefix}{{{bucket(session_id)}}}live"

    def _okey(self, owner: str, kind: str) -> str:
        digest = hashlib.sha256(f"{kind}\n{owner}".encode()).hexdigest()[:32]
        return f"{self.prefix}o:{{{digest}}}"

    def _session_keys(self, rec: SessionRecord) -> list[str]:
        return [self._rkey(rec.id), self._tkey(rec.id), self._lkey(rec.id)]

    # -- pipelines ------------------------------------------------------------------------------

    def _queue_waits(self, pipe: Any, calls: list[Call]) -> list[tuple[list[int], Any]]:
        """One ``WAIT`` per primary written, queued to that primary after the calls: redis-py
        sends a pipeline's commands for one node on one connection, in order."""
        by_node: dict[str, tuple[list[int], Any]] = {}
        for i, (keys, _) in enumerate(calls):
            node = self._cluster.get_node_from_key(keys[0])
            if node is None:  # no primary for the slot: the WAIT fails, and so the call
                node = self._cluster.get_default_node()
            by_node.setdefault(node.name, ([], node))[0].append(i)
        for _, node in by_node.values():
            pipe.execute_command(
                "WAIT", self.wait_replicas, self.wait_timeout_ms, target_nodes=node
            )
        return list(by_node.values())

    async def _after_pipeline(self, replies: list[Any]) -> None:
        """On an outage, ask the cluster for its layout again (at most once per
        ``RELAYOUT_SECONDS``): redis-py does so itself after a single command meets a dead
        node, not after a pipeline. A failed-over shard's slots then name the promoted
        replica."""
        if not any(isinstance(r, BaseException) and is_outage(r) for r in replies):
            return
        now = time.monotonic()
        if self._relayout.locked() or now - self._relayout_at < RELAYOUT_SECONDS:
            return
        async with self._relayout:
            self._relayout_at = now
            try:
                await self._cluster.nodes_manager.initialize()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("asking Redis Cluster for its layout failed: %s", exc)

    async def _save_calls(
        self, recs: list[SessionRecord], args: list[bytes], extra: Sequence[Any]
    ) -> list[Any]:
        """One ``SAVE`` call per session, in one pipeline: each on its own slot."""
        return await self._save_each(recs, args, extra)

    def _save_extras(
        self, items: Sequence[tuple[SessionRecord, int]], now: float
    ) -> list[tuple[Any, ...]]:
        """Move each session's expiry forward in its owner's index (``ZADD GT``), in the
        saves' pipeline: on the owner's shard, in the same round trip. Sent whatever the
        compare-and-set decides: an expiry moved for a save that lost is another writer's
        expiry give or take a request, and an id put back after a racing delete only keeps
        counting until that expiry (towards refusing, never towards exceeding the limit)."""
        extra: list[tuple[Any, ...]] = []
        for rec, _ in items:
            okey = self._okey(rec.owner, rec.kind)
            ttl_ms, _ = self._expiries(rec, now)
            extra.append(("ZADD", okey, "GT", repr(rec.expires_at), rec.id))
            extra.append(("PEXPIRE", okey, ttl_ms, "GT"))
        return extra

    # -- protocol -------------------------------------------------------------------------------

    async def create(self, rec: SessionRecord, max_sessions: int, max_per_owner: int = 0) -> None:
        _, live = await self._sweep_and_count()
        if live >= max_sessions:
            raise CapacityReached(f"session limit of {max_sessions} reached")
        now = self._clock()
        ttl_ms, _ = self._expiries(rec, now)
        with translated("create"):
            reserved = await self._reserve(
                keys=[self._okey(rec.owner, rec.kind)],
                args=[repr(now), rec.id, repr(rec.expires_at), max_per_owner, ttl_ms],
            )
        if not reserved:
            raise CapacityReached(
                f"this key already holds {max_per_owner} sessions, the limit per key"
            )
        await self._create_record(rec, _BIG, 0)

    async def _unindex(self, session_id: str, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        owner, kind = text(reply[1]), text(reply[2])
        if owner and kind:
            with translated("delete"):
                await self._cluster.zrem(self._okey(owner, kind), session_id)

    async def count(self) -> int:
        floor = f"({self._clock()!r}"
        with translated("count"):
            async with self._cluster.pipeline(transaction=False) as pipe:
                for key in self._lives:
                    pipe.zcount(key, floor, "+inf")
                replies = await pipe.execute(raise_on_error=False)
            await self._raise_first(replies)
        return sum(int(n) for n in replies)

    async def sweep(self) -> int:
        expired, _ = await self._sweep_and_count()
        return expired

    async def _sweep_and_count(self) -> tuple[int, int]:
        """Empty every bucket of expired ids (each counted as gone once), then the live
        sessions left: one pipeline, shared by the callers that ask while it runs (parallel
        creates check one sum)."""
        if self._summing is None or self._summing.done():
            self._summing = asyncio.ensure_future(self._sum_buckets())
        return await asyncio.shield(self._summing)

    async def _sum_buckets(self) -> tuple[int, int]:
        now = self._clock()
        with translated("sweep"):
            async with self._cluster.pipeline(transaction=False) as pipe:
                for key in self._lives:
                    pipe.zremrangebyscore(key, "-inf", now)
                    pipe.zcard(key)
                replies = await pipe.execute(raise_on_error=False)
            await self._raise_first(replies)
        expired = sum(int(r) for r in replies[::2])
        self._gone("expired", expired)
        return expired, sum(int(r) for r in replies[1::2])

    async def _raise_first(self, replies: list[Any]) -> None:
        await self._after_pipeline(replies)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply

    async def list(self, owner: str, kind: str = "session") -> list[SessionRecord]:
        okey = self._okey(owner, kind)
        with translated("list"):
            members = await self._cluster.zrangebyscore(okey, f"({self._clock()!r}", "+inf")
        return await self._records_of(owner, kind, okey, members, prune=False)
