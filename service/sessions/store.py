"""Where session state lives: the ``SessionStore`` protocol and its in-memory implementation.

The Redis implementation (``service.sessions.redis_store``) satisfies the same protocol and runs
through the same test suite. A store keeps, per session, the record below and, after a
session expires or is evicted, a tombstone that answers "gone, and why" for one more TTL.

Concurrency contract: ``save`` is a compare-and-set on ``revision``; a writer that lost
the race gets ``False`` and must reload. Within one process the session manager also
serialises requests per session, so a conflict means another replica wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import numpy as np

from service.errors import CapacityReached, SessionGone, SessionNotFound

Clock = Callable[[], float]


class LastApplied(NamedTuple):
    """The most recently applied step request, kept so a retry can be answered again.

    A named tuple, not a frozen dataclass: every session step makes one, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__`` (2x slower)."""

    offset: int
    n_steps: int
    digest: str
    response: bytes


@dataclass(frozen=True)
class SessionRecord:
    id: str
    owner: str
    model: str
    version: int
    steps: int
    created_at: float
    ttl_seconds: int
    expires_at: float
    state: dict[str, np.ndarray]
    last_output: np.ndarray | None = None
    last: LastApplied | None = None
    revision: int = 0
    kind: str = "session"
    """``session`` for /v1 sessions, ``sequence`` for /v2 sequence-extension state."""

    def touched(self, now: float) -> SessionRecord:
        return replace(self, expires_at=now + self.ttl_seconds)

    def advanced(
        self,
        steps: int,
        state: dict[str, np.ndarray],
        last_output: np.ndarray | None,
        last: LastApplied | None,
        now: float,
    ) -> SessionRecord:
        """The record after a step: new state, next revision, expiry renewed from ``now``.

        ``last_output`` is copied when it is a view (a row of a batch's outputs): kept in
        an idle session, a view would keep the whole batch's array alive (in the model
        process's case, the whole reply frame with every row's state).

        Every session step makes one, so it copies the fields' dict and changes five of
        them instead of running the frozen ``__init__`` (which sets 13 fields one by one
        through ``object.__setattr__``: 2.3 against 1.0 µs). The record stays immutable to
        its users; this is the one place that builds it around ``__init__``.
        """
        new = object.__new__(SessionRecord)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields["steps"] = steps
        fields["expires_at"] = now + self.ttl_seconds
        fields["state"] = state
        if last_output is not None and last_output.base is not None:
            last_output = last_output.copy()
        fields["last_output"] = last_output
        fields["last"] = last
        fields["revision"] = self.revision + 1
        return new


@dataclass(frozen=True)
class Tombstone:
    owner: str
    reason: str
    until: float


class SessionStore(Protocol):
    """Persistence for session records. Raise ``StoreUnavailable`` when unreachable."""

    async def create(self, rec: SessionRecord, max_sessions: int) -> None:
        """Insert a new record; ``CapacityReached`` when ``max_sessions`` live ones exist."""

    async def load(self, session_id: str) -> SessionRecord:
        """The live record, or ``SessionGone`` (tombstone) or ``SessionNotFound``."""

    async def save(self, rec: SessionRecord, expected_revision: int) -> bool:
        """Replace the record if its stored revision is ``expected_revision``; False if not.

        Also extends the session's expiry to ``rec.expires_at``. Raises ``SessionNotFound``
        or ``SessionGone`` when the record vanished meanwhile. A save is all or nothing
        even when its caller is cancelled (the memory store never suspends; the Redis
        store shields its write).
        """

    async def delete(self, session_id: str) -> bool:
        """Remove a record (and any tombstone); True if a live record was removed."""

    async def evict(self, session_id: str, reason: str = "evicted") -> bool:
        """Remove a live record leaving a tombstone with ``reason``."""

    async def list(self, owner: str, kind: str = "session") -> list[SessionRecord]:
        """The live records of one owner."""

    async def count(self) -> int:
        """Live records, all owners."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    async def sweep(self) -> int:
        """Turn expired records into tombstones, drop old tombstones; returns how many expired."""

    async def close(self) -> None: ...


class MemoryStore:
    """Sessions in this process's memory. Fast, lost on restart, not shared."""

    def __init__(
        self, clock: Clock = time.time, on_gone: Callable[[str], None] | None = None
    ) -> None:
        self._clock = clock
        self._records: dict[str, SessionRecord] = {}
        self._tombstones: dict[str, Tombstone] = {}
        self._on_gone = on_gone

    def _bury(self, rec: SessionRecord, reason: str, now: float) -> None:
        del self._records[rec.id]
        self._tombstones[rec.id] = Tombstone(rec.owner, reason, now + rec.ttl_seconds)
        if self._on_gone is not None:
            self._on_gone(reason)

    def _live(self, session_id: str) -> SessionRecord:
        now = self._clock()
        rec = self._records.get(session_id)
        if rec is not None:
            if now < rec.expires_at:
                return rec
            self._bury(rec, "expired", rec.expires_at)
        tomb = self._tombstones.get(session_id)
        if tomb is not None:
            if now < tomb.until:
                raise SessionGone(f"session {session_id!r} {tomb.reason}", tomb.reason)
            del self._tombstones[session_id]
        raise SessionNotFound(f"no session {session_id!r}")

    async def create(self, rec: SessionRecord, max_sessions: int) -> None:
        if len(self._records) >= max_sessions:
            await self.sweep()
            if len(self._records) >= max_sessions:
                raise CapacityReached(f"session limit of {max_sessions} reached")
        self._tombstones.pop(rec.id, None)
        self._records[rec.id] = rec

    async def load(self, session_id: str) -> SessionRecord:
        return self._live(session_id)

    async def save(self, rec: SessionRecord, expected_revision: int) -> bool:
        return self.save_now(rec, expected_revision)

    # ``load`` and ``save`` without a coroutine: the session step calls these when its
    # store is a ``MemoryStore`` (``SessionManager.step``), two coroutines less a step.
    load_now = _live

    def save_now(self, rec: SessionRecord, expected_revision: int) -> bool:
        current = self._live(rec.id)
        if current.revision != expected_revision:
            return False
        self._records[rec.id] = rec
        return True

    async def delete(self, session_id: str) -> bool:
        self._tombstones.pop(session_id, None)
        return self._records.pop(session_id, None) is not None

    async def evict(self, session_id: str, reason: str = "evicted") -> bool:
        rec = self._records.get(session_id)
        if rec is None:
            return False
        self._bury(rec, reason, self._clock())
        return True

    async def list(self, owner: str, kind: str = "session") -> list[SessionRecord]:
        now = self._clock()
        return [
            r
            for r in self._records.values()
            if r.owner == owner and r.kind == kind and now < r.expires_at
        ]

    async def count(self) -> int:
        return len(self._records)

    async def ping(self) -> None:
        return None

    async def sweep(self) -> int:
        now = self._clock()
        expired = [r for r in self._records.values() if now >= r.expires_at]
        for rec in expired:
            self._bury(rec, "expired", rec.expires_at)
        for sid in [s for s, t in self._tombstones.items() if now >= t.until]:
            del self._tombstones[sid]
        return len(expired)

    async def close(self) -> None:
        return None
