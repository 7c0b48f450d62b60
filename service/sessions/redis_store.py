"""Sessions in Redis, shared by every replica: the second ``SessionStore`` implementation.

Layout (every key starts with ``prefix``, default ``lstm:``)::

    {p}s:{id}             hash, the live record; expires with the session
        m                 orjson metadata (ids, steps, times, tensor shapes, last offset/digest)
        r                 revision, the compare-and-set counter
        o, k, ttl         owner, kind and TTL, read by the Lua scripts
        x:{name}          one state tensor as raw little-endian float32 bytes
        lo, lr            last output (raw float32) and last step response (for replays)
    {p}t:{id}             hash {reason, owner}, the tombstone; outlives the record by one TTL
    {p}live               sorted set id -> expires_at: the live count behind ``max_sessions``
    {p}o:{kind}:{owner}   set of ids, the owner index for ``list``; pruned lazily

Expiry needs no sweeper: every write also writes a tombstone ``expired`` that expires one
TTL after the record, so once Redis drops the record the tombstone answers 410, and a TTL
later it is gone too (404). ``evict`` replaces the record by a tombstone ``evicted``,
``delete`` removes both. Each write is one Lua script, so create-with-capacity and
compare-and-set ``save`` are atomic across replicas. Expiries are relative (``PEXPIRE``),
so only durations, not the clocks of the replicas and the Redis host, need to agree.

Any Redis error (refused connection, timeout, OOM, a replica that is read-only after a
failover) is raised as ``StoreUnavailable``. Socket timeouts are short and nothing is
retried inside the client: a timed-out ``save`` may or may not have been applied, and a
blind retry could apply a step twice; the session manager's offsets make the client's
retry safe instead. Dead pooled connections are dropped and reopened by redis-py, so the
store recovers without a restart when Redis comes back.

Not for Redis Cluster: the scripts touch the shared ``live`` set together with the
session's keys. Use one primary (with Sentinel or a managed failover if needed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.errors import CapacityReached, SessionGone, SessionNotFound, StoreUnavailable
from service.sessions.store import Clock, LastApplied, SessionRecord

# KEYS: record, tombstone, live, owner set.
# ARGV: now, max_sessions, id, expires_at, ttl_ms, tomb_ms, owner, field, value, ...
_CREATE = """
local pruned = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then
  return {0, pruned}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'reason', 'expired', 'owner', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[3])
if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return {1, pruned}
"""

# KEYS: record, tombstone, live, owner set.
# ARGV: expected revision, id, expires_at, ttl_ms, tomb_ms, owner, field, value, ...
# Returns {1} saved, {0} revision mismatch, {2, reason} tombstone, {3} no such session.
_SAVE = """
local rev = redis.call('HGET', KEYS[1], 'r')
if not rev then
  local reason = redis.call('HGET', KEYS[2], 'reason')
  if reason then return {2, reason} end
  return {3}
end
if rev ~= ARGV[1] then return {0} end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'reason', 'expired', 'owner', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
return {1}
"""

# KEYS: record, tombstone, live. ARGV: id, reason.
_EVICT = """
local f = redis.call('HMGET', KEYS[1], 'o', 'ttl')
if not f[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'reason', ARGV[2], 'owner', f[1])
redis.call('PEXPIRE', KEYS[2], tonumber(f[2]) * 1000)
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: record, tombstone, live. ARGV: id.
_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"""

_TENSOR = "x:"


@contextmanager
def _translated(op: str) -> Iterator[None]:
    """Turn any Redis or socket error into ``StoreUnavailable`` naming the operation."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"session store unavailable ({op}): {exc}") from exc


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


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def _array(raw: bytes, shape: list[int]) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)


def record_fields(rec: SessionRecord) -> dict[str, bytes]:
    """The record as hash fields: metadata as JSON, tensors as raw float32 bytes."""
    meta: dict[str, Any] = {
        "id": rec.id,
        "owner": rec.owner,
        "model": rec.model,
        "version": rec.version,
        "steps": rec.steps,
        "created_at": rec.created_at,
        "ttl_seconds": rec.ttl_seconds,
        "expires_at": rec.expires_at,
        "kind": rec.kind,
        "state": {name: list(arr.shape) for name, arr in rec.state.items()},
        "last_output": list(rec.last_output.shape) if rec.last_output is not None else None,
        "last": (
            {"offset": rec.last.offset, "n_steps": rec.last.n_steps, "digest": rec.last.digest}
            if rec.last is not None
            else None
        ),
    }
    fields: dict[str, bytes] = {
        "m": orjson.dumps(meta),
        "r": str(rec.revision).encode(),
        "o": rec.owner.encode(),
        "k": rec.kind.encode(),
        "ttl": str(rec.ttl_seconds).encode(),
    }
    for name, arr in rec.state.items():
        fields[_TENSOR + name] = _f32(arr)
    if rec.last_output is not None:
        fields["lo"] = _f32(rec.last_output)
    if rec.last is not None:
        fields["lr"] = rec.last.response
    return fields


def record_from_fields(fields: dict[bytes, bytes]) -> SessionRecord:
    """Inverse of ``record_fields`` (keys as Redis returns them, bytes)."""
    meta = orjson.loads(fields[b"m"])
    last = meta["last"]
    lo_shape = meta["last_output"]
    return SessionRecord(
        id=meta["id"],
        owner=meta["owner"],
        model=meta["model"],
        version=int(meta["version"]),
        steps=int(meta["steps"]),
        created_at=float(meta["created_at"]),
        ttl_seconds=int(meta["ttl_seconds"]),
        expires_at=float(meta["expires_at"]),
        state={
            name: _array(fields[(_TENSOR + name).encode()], shape)
            for name, shape in meta["state"].items()
        },
        last_output=_array(fields[b"lo"], lo_shape) if lo_shape is not None else None,
        last=(
            LastApplied(
                offset=int(last["offset"]),
                n_steps=int(last["n_steps"]),
                digest=str(last["digest"]),
                response=fields[b"lr"],
            )
            if last is not None
            else None
        ),
        revision=int(fields[b"r"]),
        kind=meta["kind"],
    )


def _flat(fields: dict[str, bytes]) -> list[str | bytes]:
    out: list[str | bytes] = []
    for k, v in fields.items():
        out += [k, v]
    return out


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
        self._create = client.register_script(_CREATE)
        self._save = client.register_script(_SAVE)
        self._evict = client.register_script(_EVICT)
        self._delete = client.register_script(_DELETE)

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

    async def create(self, rec: SessionRecord, max_sessions: int) -> None:
        ttl_ms, tomb_ms = self._expiries(rec)
        with _translated("create"):
            ok, pruned = await self._create(
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
                    *_flat(record_fields(rec)),
                ],
            )
        self._gone("expired", int(pruned))
        if not ok:
            raise CapacityReached(f"session limit of {max_sessions} reached")

    async def load(self, session_id: str) -> SessionRecord:
        with _translated("load"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._rkey(session_id))
                pipe.hgetall(self._tkey(session_id))
                fields, tomb = await pipe.execute()
        if fields:
            return record_from_fields(fields)
        if tomb:
            reason = tomb[b"reason"].decode()
            raise SessionGone(f"session {session_id!r} {reason}", reason)
        raise SessionNotFound(f"no session {session_id!r}")

    async def save(self, rec: SessionRecord, expected_revision: int) -> bool:
        # Shielded: a caller cancelled mid-write must not leave the result unread on the
        # connection; the write completes (or fails) on its own either way.
        return await asyncio.shield(self._save_record(rec, expected_revision))

    async def _save_record(self, rec: SessionRecord, expected_revision: int) -> bool:
        ttl_ms, tomb_ms = self._expiries(rec)
        with _translated("save"):
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
                    *_flat(record_fields(rec)),
                ],
            )
        status = int(res[0])
        if status == 2:
            reason = res[1].decode()
            raise SessionGone(f"session {rec.id!r} {reason}", reason)
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
        okey = self._okey(owner, kind)
        with _translated("list"):
            members = await self._redis.smembers(okey)
            ids = [m.decode() if isinstance(m, bytes) else m for m in members]
            if not ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.hgetall(self._rkey(sid))
                found: list[dict[bytes, bytes]] = await pipe.execute()
            stale = [sid for sid, fields in zip(ids, found, strict=True) if not fields]
            if stale:
                await self._redis.srem(okey, *stale)
        recs = [record_from_fields(f) for f in found if f]
        return [r for r in recs if r.owner == owner and r.kind == kind]

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
