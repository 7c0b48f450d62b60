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

Errors: an outage (refused connection, timeout, a Redis that is loading, out of memory, or
read-only after a failover) is ``StoreUnavailable`` with a retry hint. An error reply about
a session's own keys (``WRONGTYPE``), and a record that fails validation, is
``SessionCorrupt``: that session can only be deleted, listings leave it out. Any other error
reply is ``StoreUnavailable`` without a retry hint. Details (address, command, key) are
logged, never put in the error. Socket timeouts are short and nothing is retried inside the
client: a timed-out ``save`` may or may not have been applied, and a blind retry could apply
a step twice; the session manager's offsets make the client's retry safe instead. Dead
pooled connections are dropped and reopened by redis-py, so the store recovers without a
restart when Redis comes back.

Not for Redis Cluster: the scripts touch the shared ``live`` set and the owner's records
together with the session's keys. Use one primary (with Sentinel or a managed failover if
needed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from service.errors import CapacityReached, SessionGone, SessionNotFound, StoreUnavailable
from service.sessions import redis_scripts
from service.sessions.record import Clock, SessionRecord
from service.sessions.redis_codec import corrupt, flat, record_fields, record_from_fields

log = logging.getLogger(__name__)

_OUTAGE_REPLIES = (
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "NOREPLICAS",
    "OOM",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
)
"""Error replies of a Redis that is (for now) not serving writes: retrying can help."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis is unreachable or not serving (retrying can help), as
    opposed to an error reply about what it was asked (``WRONGTYPE``, a script error)."""
    if isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | OSError
        | ReadOnlyError
        | OutOfMemoryError
        | TryAgainError
        | ClusterDownError,
    ):
        return True
    if isinstance(exc, ResponseError):
        reply = str(exc).lstrip()
        return reply.startswith(_OUTAGE_REPLIES)
    return False


@contextmanager
def _translated(op: str, session_id: str | None = None) -> Iterator[None]:
    """Turn Redis and socket errors into the core's errors, logging what they were.

    An outage is ``StoreUnavailable`` with ``Retry-After``; any other error reply on a
    session's keys means its record is damaged (``SessionCorrupt``); elsewhere it is
    ``StoreUnavailable`` without ``Retry-After``. The client is never told the address,
    command or key: those go to the log.
    """
    try:
        yield
    except (RedisError, OSError) as exc:
        if is_outage(exc):
            log.warning("session store %s failed: %s", op, exc)
            raise StoreUnavailable("the session store is not answering; retry later") from exc
        if session_id is not None:
            log.error("session store %s of session %s failed: %s", op, session_id, exc)
            raise corrupt(session_id, None) from exc
        log.error("session store %s failed: %s", op, exc)
        raise StoreUnavailable(
            "the session store failed; the server's log says why", retry_after=None
        ) from exc


def _no_maint_notifications() -> dict[str, Any]:
    """Turn off redis-py's maintenance notifications (redis-py 7+, default ``"auto"``).

    While they are on, the pool skips its check for connections the server closed, so
    the first request after a Redis restart would fail on a dead pooled connection.
    """
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # older redis-py: nothing to turn off
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _replies(op: str, replies: list[Any]) -> list[Any]:
    """A pipeline's replies, raising an outage among them; other error replies stay in the
    list (as ``ResponseError``) for the caller to put down to the session they concern."""
    for reply in replies:
        if isinstance(reply, BaseException) and (
            not isinstance(reply, ResponseError) or is_outage(reply)
        ):
            with _translated(op):
                raise reply
    return replies


def _text(raw: object) -> str | None:
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None
    return None


class RedisStore:
    """Sessions in Redis: shared by replicas, atomic per session, surviving API restarts."""

    def __init__(
        self,
        client: aioredis.Redis,
        clock: Clock = time.time,
        on_gone: Callable[[str], None] | None = None,
        prefix: str = "lstm:",
    ) -> None:
        self._redis = client
        self._clock = clock
        self._on_gone = on_gone
        self.prefix = prefix
        self._live_key = f"{prefix}live"
        self._create = client.register_script(redis_scripts.CREATE)
        self._save = client.register_script(redis_scripts.SAVE)
        self._evict = client.register_script(redis_scripts.EVICT)
        self._delete = client.register_script(redis_scripts.DELETE)

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
    ) -> RedisStore:
        """A store on ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        ``socket_timeout`` bounds how long a request waits on a hung Redis before it is
        answered 503; ``connect_timeout`` the same for a Redis that is down or unreachable.
        """
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
            health_check_interval=30,
            **_no_maint_notifications(),
        )
        return cls(client, clock=clock, on_gone=on_gone, prefix=prefix)

    # -- keys -------------------------------------------------------------------------------

    def _rkey(self, session_id: str) -> str:
        return f"{self.prefix}s:{session_id}"

    def _tkey(self, session_id: str) -> str:
        return f"{self.prefix}t:{session_id}"

    def _okey(self, owner: str, kind: str) -> str:
        return f"{self.prefix}o:{kind}:{owner}"

    def _expiries(self, rec: SessionRecord) -> tuple[int, int]:
        """Milliseconds until the record expires, and until its tombstone does."""
        ttl_ms = max(1, round((rec.expires_at - self._clock()) * 1000))
        return ttl_ms, ttl_ms + rec.ttl_seconds * 1000

    def _gone(self, reason: str, n: int = 1) -> None:
        if self._on_gone is not None:
            for _ in range(n):
                self._on_gone(reason)

    # -- protocol -----------------------------------------------------------------------------

    async def create(self, rec: SessionRecord, max_sessions: int, max_per_owner: int = 0) -> None:
        ttl_ms, tomb_ms = self._expiries(rec)
        with _translated("create"):
            status, pruned = await self._create(
                keys=[
                    self._rkey(rec.id),
                    self._tkey(rec.id),
                    self._live_key,
                    self._okey(rec.owner, rec.kind),
                ],
                args=[
                    repr(self._clock()),
                    max_sessions,
                    rec.id,
                    repr(rec.expires_at),
                    ttl_ms,
                    tomb_ms,
                    rec.owner,
                    max_per_owner,
                    self._rkey(""),
                    *flat(record_fields(rec)),
                ],
            )
        self._gone("expired", int(pruned))
        if status == 0:
            raise CapacityReached(f"session limit of {max_sessions} reached")
        if status == 2:
            raise CapacityReached(
                f"this key already holds {max_per_owner} sessions, the limit per key"
            )

    async def load(self, session_id: str) -> SessionRecord:
        with _translated("load"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._rkey(session_id))
                pipe.hgetall(self._tkey(session_id))
                fields, tomb = _replies("load", await pipe.execute(raise_on_error=False))
        if isinstance(tomb, ResponseError):
            log.error("tombstone of session %s cannot be read: %s", session_id, tomb)
            tomb = {b"reason": b"unreadable"}
        if isinstance(fields, ResponseError):
            log.error("session %s cannot be read: %s", session_id, fields)
            raise corrupt(session_id, _text(tomb.get(b"owner")))
        if fields:
            try:
                return record_from_fields(fields, session_id)
            except SessionGone as exc:
                log.error("session %s cannot be read: %s", session_id, exc.__cause__)
                raise
        if tomb:
            reason = _text(tomb.get(b"reason"))
            owner = _text(tomb.get(b"owner"))
            if reason not in ("expired", "evicted") or owner is None:
                log.error("tombstone of session %s is damaged", session_id)
                raise corrupt(session_id, owner)
            raise SessionGone(f"session {session_id!r} {reason}", reason, owner)
        raise SessionNotFound(f"no session {session_id!r}")

    async def save(self, rec: SessionRecord, expected_revision: int) -> bool:
        # Shielded: a caller cancelled mid-write must not leave the result unread on the
        # connection; the write completes (or fails) on its own either way.
        return await asyncio.shield(self._save_record(rec, expected_revision))

    async def _save_record(self, rec: SessionRecord, expected_revision: int) -> bool:
        ttl_ms, tomb_ms = self._expiries(rec)
        with _translated("save", rec.id):
            res = await self._save(
                keys=[
                    self._rkey(rec.id),
                    self._tkey(rec.id),
                    self._live_key,
                    self._okey(rec.owner, rec.kind),
                ],
                args=[
                    str(expected_revision),
                    rec.id,
                    repr(rec.expires_at),
                    ttl_ms,
                    tomb_ms,
                    rec.owner,
                    *flat(record_fields(rec)),
                ],
            )
        status = int(res[0])
        if status == 2:
            reason = _text(res[1])
            if reason not in ("expired", "evicted"):
                raise corrupt(rec.id, rec.owner)
            raise SessionGone(f"session {rec.id!r} {reason}", reason, rec.owner)
        if status == 3:
            raise SessionNotFound(f"no session {rec.id!r}")
        return status == 1

    async def delete(self, session_id: str) -> bool:
        with _translated("delete"):
            n = await self._delete(
                keys=[self._rkey(session_id), self._tkey(session_id), self._live_key],
                args=[session_id],
            )
        return bool(n)

    async def evict(self, session_id: str, reason: str = "evicted") -> bool:
        with _translated("evict"):
            n = await self._evict(
                keys=[self._rkey(session_id), self._tkey(session_id), self._live_key],
                args=[session_id, reason],
            )
        if n:
            self._gone(reason)
        return bool(n)

    async def list(self, owner: str, kind: str = "session") -> list[SessionRecord]:
        """The owner's live records; a record that cannot be read is left out (and logged)."""
        okey = self._okey(owner, kind)
        with _translated("list"):
            members = await self._redis.smembers(okey)
            ids = [sid for sid in map(_text, members) if sid is not None]
            if not ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.hgetall(self._rkey(sid))
                found = _replies("list", await pipe.execute(raise_on_error=False))
            stale = [sid for sid, fields in zip(ids, found, strict=True) if fields == {}]
            if stale:
                await self._redis.srem(okey, *stale)
        recs: list[SessionRecord] = []
        for sid, fields in zip(ids, found, strict=True):
            if not fields:
                continue
            try:
                if isinstance(fields, ResponseError):
                    raise corrupt(sid, None) from fields
                rec = record_from_fields(fields, sid)
            except SessionGone as exc:
                log.error("listing leaves out session %s: %s", sid, exc.__cause__)
                continue
            if rec.owner == owner and rec.kind == kind:
                recs.append(rec)
        return recs

    async def count(self) -> int:
        with _translated("count"):
            n = await self._redis.zcount(self._live_key, f"({self._clock()!r}", "+inf")
        return int(n)

    async def ping(self) -> None:
        with _translated("ping"):
            await self._redis.ping()

    async def sweep(self) -> int:
        with _translated("sweep"):
            n = int(await self._redis.zremrangebyscore(self._live_key, "-inf", self._clock()))
        self._gone("expired", n)
        return n

    async def close(self) -> None:
        with _translated("close"):
            await self._redis.aclose()
