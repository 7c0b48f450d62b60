"""Sessions in Redis, shared by every replica: the second ``SessionStore`` implementation.

Layout (every key starts with ``prefix``, default ``lstm:``)::

    {p}s:{id}             hash, the live record (``service.sessions.redis_codec``); expires
                          with the session
    {p}t:{id}             hash {reason, owner}, the tombstone; outlives the record by one TTL
    {p}live               sorted set id -> expires_at: the live count behind ``max_sessions``
    {p}o:{kind}:{owner}   set of ids, the owner index for ``list`` and the per-key limit;
                          pruned lazily

Expiry needs no sweeper: every write also writes a tombstone ``expired`` that expires one
TTL after the record, so once Redis drops the record the tombstone answers 410, and a TTL
later it is gone too (404). ``evict`` replaces the record by a tombstone ``evicted``,
``delete`` removes both. Each write is one Lua script (``service.sessions.redis_scripts``),
so create-with-capacity (overall and per key) and compare-and-set ``save`` are atomic
across replicas. Expiries are relative (``PEXPIRE``), so only durations, not the clocks of
the replicas and the Redis host, need to agree.

One round trip per step: the store keeps the records it wrote recently
(``service.sessions.cache``, bounded by ``cache_records`` and ``cache_bytes``) and offers
a copy it has reason to trust through ``recent``; the compare-and-set of ``save`` checks
the revision and the incarnation (field ``c``) the step started from, so a step computed
from a copy that another replica has outdated is not saved, and the session manager
recomputes it from a fresh load. Loads and saves made in one event-loop iteration (the
steps of one onnxruntime batch) go to Redis together (``TickBatch``): the loads as one
pipeline, the saves as one ``SAVE_MANY`` script call (on Redis Cluster, one pipeline of
``SAVE`` calls, one per session's slot), each save still its own compare-and-set on its
own session's keys.

Errors (``service.sessions.redis_errors``): an outage is ``StoreUnavailable``, an error
reply about a session's own keys or a record that fails validation is ``SessionCorrupt``.
Nothing is retried inside the client: a timed-out ``save`` may or may not have been
applied (its cached copy is dropped); the session manager's offsets make the client's
retry safe instead. redis-py reopens dead pooled connections: no restart after an outage.

Topologies (``redis_connect``): one Redis; a primary found through Sentinel (this layout);
Redis Cluster (``service.sessions.redis_cluster``: each session's keys in one slot).

Durability: with ``wait_replicas`` N, each create and save is followed by ``WAIT N`` on
its connection; fewer acks is ``StoreUnavailable`` (applied or not, as a timeout). Without
it a failover can lose acknowledged steps, never silently: the step count is then below
the client's offset, so its next step answers 409 with the true count.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from service.errors import CapacityReached, ServeError, StoreUnavailable
from service.sessions import redis_scripts
from service.sessions.cache import RecordCache
from service.sessions.coalesce import TickBatch
from service.sessions.record import Clock, SessionRecord
from service.sessions.redis_codec import flat, record_fields, save_args
from service.sessions.redis_connect import connect
from service.sessions.redis_errors import is_outage, text, translated
from service.sessions.redis_replies import Saved, listed, record_of, save_outcomes

log = logging.getLogger(__name__)

Call = tuple[list[str], list[Any]]
"""One script call: its keys and its arguments."""

Client = aioredis.Redis | RedisCluster


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class RedisStore:
    """Sessions in Redis: shared by replicas, atomic per session, surviving API restarts."""

    def __init__(
        self,
        client: Client,
        clock: Clock = time.time,
        on_gone: Callable[[str], None] | None = None,
        prefix: str = "lstm:",
        cache_records: int = 10_000,
        cache_bytes: int = 64 * 2**20,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self._redis = client
        self._clock = clock
        self._on_gone = on_gone
        self.prefix = prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._live_key = f"{prefix}live"
        self.helpers: list[aioredis.Redis] = []
        """Clients closed with this store's (the sentinels)."""
        self._create_sha = _sha(redis_scripts.CREATE)
        self._evict = client.register_script(redis_scripts.EVICT)
        self._delete = client.register_script(redis_scripts.DELETE)
        self._save_sha = _sha(redis_scripts.SAVE)
        self._save_many_sha = _sha(redis_scripts.SAVE_MANY)
        self._cache = RecordCache(cache_records, cache_bytes)
        self._loads: TickBatch[str, SessionRecord] = TickBatch(self.load_many)
        self._saves: TickBatch[tuple[SessionRecord, int], bool] = TickBatch(self.save_many)

    @classmethod
    def from_url(
        cls,
        url: str,
        clock: Clock = time.time,
        on_gone: Callable[[str], None] | None = None,
        *,
        prefix: str = "lstm:",
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        max_connections: int = 64,
        cache_records: int = 10_000,
        cache_bytes: int = 64 * 2**20,
        wait_replicas: int = 0,
    ) -> RedisStore:
        """A store on ``url`` (``redis://``, ``rediss://``, ``unix://``,
        ``redis+sentinel://`` or ``redis+cluster://``: ``service.sessions.redis_connect``).

        ``socket_timeout`` bounds how long a request waits on a hung Redis before it is
        answered 503; ``connect_timeout`` the same for a Redis that is down or unreachable.
        ``cache_records`` and ``cache_bytes`` bound the copies of recently written records
        (0 records: no copies, every step loads). ``wait_replicas``: replicas that must
        have a create or a save before it is acknowledged (Redis ``WAIT``; at most half
        the socket timeout).
        """
        found = connect(
            url,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
        )
        kind = cls
        if found.topology == "cluster":
            from service.sessions.redis_cluster import RedisClusterStore

            kind = RedisClusterStore
        store = kind(
            found.client,
            clock=clock,
            on_gone=on_gone,
            prefix=prefix,
            cache_records=cache_records,
            cache_bytes=cache_bytes,
            wait_replicas=wait_replicas,
            wait_timeout_ms=max(1, round(socket_timeout * 500)),
        )
        store.helpers = found.helpers
        return store

    # -- keys -------------------------------------------------------------------------------

    def _rkey(self, session_id: str) -> str:
        return f"{self.prefix}s:{session_id}"

    def _tkey(self, session_id: str) -> str:
        return f"{self.prefix}t:{session_id}"

    def _lkey(self, session_id: str) -> str:
        """The live set that holds ``session_id``."""
        return self._live_key

    def _okey(self, owner: str, kind: str) -> str:
        return f"{self.prefix}o:{kind}:{owner}"

    def _session_keys(self, rec: SessionRecord) -> list[str]:
        """The keys a create or a save of ``rec`` writes (``CREATE`` and ``SAVE``)."""
        return [
            self._rkey(rec.id),
            self._tkey(rec.id),
            self._lkey(rec.id),
            self._okey(rec.owner, rec.kind),
        ]

    def _expiries(self, rec: SessionRecord, now: float) -> tuple[int, int]:
        """Milliseconds until the record expires, and until its tombstone does."""
        ttl_ms = max(1, round((rec.expires_at - now) * 1000))
        return ttl_ms, ttl_ms + rec.ttl_seconds * 1000

    def _gone(self, reason: str, n: int = 1) -> None:
        if self._on_gone is not None:
            for _ in range(n):
                self._on_gone(reason)

    # -- protocol -----------------------------------------------------------------------------

    async def create(self, rec: SessionRecord, max_sessions: int, max_per_owner: int = 0) -> None:
        await self._create_record(rec, max_sessions, max_per_owner)

    async def _create_record(self, rec: SessionRecord, max_sessions: int, per_owner: int) -> None:
        """The ``CREATE`` script on the session's keys (``_session_keys``), then ``WAIT``."""
        now = self._clock()
        ttl_ms, tomb_ms = self._expiries(rec, now)
        args = [
            repr(now),
            max_sessions,
            rec.id,
            repr(rec.expires_at),
            ttl_ms,
            tomb_ms,
            rec.owner,
            per_owner,
            self._rkey(""),
            *flat(record_fields(rec)),
        ]
        (reply,) = await self._eval_many(
            "create", redis_scripts.CREATE, self._create_sha, [(self._session_keys(rec), args)]
        )
        if isinstance(reply, BaseException):
            with translated("create"):
                raise reply
        status, pruned = reply
        self._gone("expired", int(pruned))
        if status == 0:
            raise CapacityReached(f"session limit of {max_sessions} reached")
        if status == 2:
            raise CapacityReached(f"this key already holds {per_owner} sessions, the limit per key")
        self._cache.wrote(rec)

    def recent(self, session_id: str) -> SessionRecord | None:
        return self._cache.recent(session_id, self._clock())

    async def load(self, session_id: str) -> SessionRecord:
        return await self._loads.submit(session_id)

    async def load_many(self, ids: Sequence[str]) -> list[SessionRecord | ServeError]:
        """One pipeline: each session's record and tombstone."""
        try:
            with translated("load"):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for sid in ids:
                        pipe.hgetall(self._rkey(sid))
                        pipe.hgetall(self._tkey(sid))
                    replies = await pipe.execute(raise_on_error=False)
        except StoreUnavailable as exc:
            return [exc] * len(ids)
        out: list[SessionRecord | ServeError] = []
        for i, sid in enumerate(ids):
            try:
                rec = record_of(sid, replies[2 * i], replies[2 * i + 1])
            except ServeError as exc:
                self._cache.drop(sid)
                out.append(exc)
                continue
            self._cache.loaded(rec)
            out.append(rec)
        return out

    async def save(self, rec: SessionRecord, expected_revision: int) -> bool:
        # Queued, not awaited in place: a caller cancelled mid-write does not cancel the
        # write, which completes (or fails) with its batch either way.
        return await self._saves.submit((rec, expected_revision))

    async def save_many(self, items: Sequence[tuple[SessionRecord, int]]) -> list[Saved]:
        """The saves in one round trip (``_save_calls``), each its own compare-and-set."""
        now = self._clock()
        recs = [rec for rec, _ in items]
        args = [save_args(rec, expected, *self._expiries(rec, now)) for rec, expected in items]
        extra = self._save_extras(items, now)
        try:
            replies = await self._save_calls(recs, args, extra)
        except StoreUnavailable as exc:  # applied or not: the copies are no longer known
            for rec in recs:
                self._cache.drop(rec.id)
            return [exc] * len(items)
        return save_outcomes(recs, replies, self._cache)

    async def _save_calls(
        self, recs: list[SessionRecord], args: list[bytes], extra: Sequence[Any]
    ) -> list[Any]:
        """One reply per save. One Redis: several saves are one ``SAVE_MANY`` call (one
        command, one reply, keys built in the script): redis-py's packing costs more."""
        if len(recs) == 1:
            return await self._save_each(recs, args, extra)
        argv = [self.prefix, *args]
        (reply,) = await self._eval_many(
            "save", redis_scripts.SAVE_MANY, self._save_many_sha, [([], argv)], extra
        )
        if isinstance(reply, BaseException):
            return [reply] * len(recs)
        return list(reply)

    async def _save_each(
        self, recs: list[SessionRecord], args: list[bytes], extra: Sequence[Any]
    ) -> list[Any]:
        """One ``SAVE`` call per record, on its session's keys (a pipeline for several)."""
        calls: list[Call] = [(self._session_keys(r), [a]) for r, a in zip(recs, args, strict=True)]
        return await self._eval_many("save", redis_scripts.SAVE, self._save_sha, calls, extra)

    def _save_extras(
        self, items: Sequence[tuple[SessionRecord, int]], now: float
    ) -> list[tuple[Any, ...]]:
        """Commands sent in the saves' pipeline besides the scripts (Redis Cluster: the
        owner indexes' expiries)."""
        return []

    async def _eval_many(
        self, op: str, script: str, sha: str, calls: list[Call], extra: Sequence[Any] = ()
    ) -> list[Any]:
        """The replies of ``EVALSHA`` calls sent as one pipeline (error replies as
        exceptions in the list), with the ``extra`` commands after them (their replies
        only checked for an outage); a Redis that lost its scripts (restarted) gets the
        script again and the calls it refused are sent again (they did nothing)."""
        with translated(op):
            try:
                replies = await self._evalsha(sha, calls, extra)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:
                    await self._redis.script_load(script)
                    again = await self._evalsha(sha, [calls[i] for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
            except (RedisError, OSError) as exc:
                await self._after_pipeline([exc])
                raise
        await self._after_pipeline(replies)
        return replies

    async def _evalsha(self, sha: str, calls: list[Call], extra: Sequence[Any] = ()) -> list[Any]:
        """The calls' replies; with ``wait_replicas``, a call whose write no ``WAIT`` after
        it confirmed on enough replicas answers a timeout instead."""
        if len(calls) == 1 and not self.wait_replicas and not extra:  # one call, no pipeline
            keys, args = calls[0]
            try:
                return [await self._redis.evalsha(sha, len(keys), *keys, *args)]
            except ResponseError as exc:
                return [exc]
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            for command in extra:
                pipe.execute_command(*command)
            waits = self._queue_waits(pipe, calls) if self.wait_replicas else []
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        n = len(calls)
        await self._after_pipeline(replies[n : n + len(extra)])
        for (covered, _), acked in zip(waits, replies[n + len(extra) :], strict=True):
            if isinstance(acked, int) and acked >= self.wait_replicas:
                continue
            short = RedisTimeout(f"WAIT {self.wait_replicas}: {acked!r} replicas acknowledged")
            for i in covered:
                if not isinstance(replies[i], BaseException):
                    replies[i] = short
        return replies[:n]

    def _queue_waits(self, pipe: Any, calls: list[Call]) -> list[tuple[list[int], Any]]:
        """Queue ``WAIT`` after the calls, on their connection; per ``WAIT``, the calls it
        covers. One Redis: one ``WAIT`` (a pipeline is one connection)."""
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        return [(list(range(len(calls))), None)]

    async def _after_pipeline(self, replies: list[Any]) -> None:
        """After a pipeline's replies (Redis Cluster: a new layout after an outage)."""

    async def delete(self, session_id: str) -> bool:
        self._cache.drop(session_id)
        with translated("delete"):
            n = await self._delete(
                keys=[self._rkey(session_id), self._tkey(session_id), self._lkey(session_id)],
                args=[session_id],
            )
        await self._unindex(session_id, n)
        return bool(n)

    async def evict(self, session_id: str, reason: str = "evicted") -> bool:
        self._cache.drop(session_id)
        with translated("evict"):
            n = await self._evict(
                keys=[self._rkey(session_id), self._tkey(session_id), self._lkey(session_id)],
                args=[session_id, reason],
            )
        await self._unindex(session_id, n)
        if n:
            self._gone(reason)
        return bool(n)

    async def _unindex(self, session_id: str, reply: Any) -> None:
        """After ``DELETE`` or ``EVICT`` (reply ``{1, owner, kind}`` if a record went):
        one Redis prunes owner indexes lazily, Redis Cluster removes the entry."""

    async def _records_of(
        self, owner: str, kind: str, okey: str, members: Any, prune: bool
    ) -> list[SessionRecord]:
        """The live records among the ids an owner index holds (``prune``: remove the ids
        without a record from the index)."""
        ids = [sid for sid in map(text, members) if sid is not None]
        if not ids:
            return []
        with translated("list"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.hgetall(self._rkey(sid))
                found = await pipe.execute(raise_on_error=False)
            for reply in found:
                if isinstance(reply, RedisError) and is_outage(reply):
                    await self._after_pipeline([reply])
                    raise reply
            stale = [sid for sid, fields in zip(ids, found, strict=True) if fields == {}]
            if stale and prune:
                await self._redis.srem(okey, *stale)
        return listed(owner, kind, ids, found)

    async def list(self, owner: str, kind: str = "session") -> list[SessionRecord]:
        """The owner's live records; a record that cannot be read is left out (and logged)."""
        okey = self._okey(owner, kind)
        with translated("list"):
            members = await self._redis.smembers(okey)
        return await self._records_of(owner, kind, okey, members, prune=True)

    async def count(self) -> int:
        with translated("count"):
            n = await self._redis.zcount(self._live_key, f"({self._clock()!r}", "+inf")
        return int(n)

    async def ping(self) -> None:
        with translated("ping"):
            await self._redis.ping()

    async def sweep(self) -> int:
        with translated("sweep"):
            n = int(await self._redis.zremrangebyscore(self._live_key, "-inf", self._clock()))
        self._gone("expired", n)
        return n

    async def close(self) -> None:
        await self._loads.drain()
        await self._saves.drain()
        with translated("close"):
            await self._redis.aclose()
            for helper in self.helpers:
                await helper.aclose()
