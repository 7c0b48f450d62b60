"""``MemoryStore``: sessions in this process's memory (fast, lost on restart, not shared)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.errors import CapacityReached, ServeError, SessionGone, SessionNotFound
from service.sessions.record import Clock, SessionRecord


@dataclass(frozen=True)
class Tombstone:
    owner: str
    reason: str
    until: float


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
                raise SessionGone(f"session {session_id!r} {tomb.reason}", tomb.reason, tomb.owner)
            del self._tombstones[session_id]
        raise SessionNotFound(f"no session {session_id!r}")

    async def create(self, rec: SessionRecord, max_sessions: int, max_per_owner: int = 0) -> None:
        # no await between the checks and the insert: one atomic step on the event loop
        if len(self._records) >= max_sessions:
            self._sweep()
            if len(self._records) >= max_sessions:
                raise CapacityReached(f"session limit of {max_sessions} reached")
        if max_per_owner and len(self._list(rec.owner, rec.kind)) >= max_per_owner:
            raise CapacityReached(
                f"this key already holds {max_per_owner} sessions, the limit per key"
            )
        self._tombstones.pop(rec.id, None)
        self._records[rec.id] = rec

    def recent(self, session_id: str) -> SessionRecord | None:
        return None  # ``load`` is a dict lookup already

    async def load(self, session_id: str) -> SessionRecord:
        return self._live(session_id)

    async def load_many(self, ids: Sequence[str]) -> list[SessionRecord | ServeError]:
        out: list[SessionRecord | ServeError] = []
        for sid in ids:
            try:
                out.append(self._live(sid))
            except ServeError as exc:
                out.append(exc)
        return out

    async def save(self, rec: SessionRecord, expected_revision: int) -> bool:
        return self._save(rec, expected_revision)

    def _save(self, rec: SessionRecord, expected_revision: int) -> bool:
        current = self._live(rec.id)
        if current.revision != expected_revision or current.created_at != rec.created_at:
            return False
        self._records[rec.id] = rec
        return True

    async def save_many(
        self, items: Sequence[tuple[SessionRecord, int]]
    ) -> list[bool | ServeError]:
        out: list[bool | ServeError] = []
        for rec, expected in items:
            try:
                out.append(self._save(rec, expected))
            except ServeError as exc:
                out.append(exc)
        return out

    async def delete(self, session_id: str) -> bool:
        self._tombstones.pop(session_id, None)
        return self._records.pop(session_id, None) is not None

    async def evict(self, session_id: str, reason: str = "evicted") -> bool:
        rec = self._records.get(session_id)
        if rec is None:
            return False
        self._bury(rec, reason, self._clock())
        return True

    def _list(self, owner: str, kind: str) -> list[SessionRecord]:
        now = self._clock()
        return [
            r
            for r in self._records.values()
            if r.owner == owner and r.kind == kind and now < r.expires_at
        ]

    async def list(self, owner: str, kind: str = "session") -> list[SessionRecord]:
        return self._list(owner, kind)

    async def count(self) -> int:
        return len(self._records)

    async def ping(self) -> None:
        return None

    async def sweep(self) -> int:
        return self._sweep()

    def _sweep(self) -> int:
        now = self._clock()
        expired = [r for r in self._records.values() if now >= r.expires_at]
        for rec in expired:
            self._bury(rec, "expired", rec.expires_at)
        for sid in [s for s, t in self._tombstones.items() if now >= t.until]:
            del self._tombstones[sid]
        return len(expired)

    async def close(self) -> None:
        return None
