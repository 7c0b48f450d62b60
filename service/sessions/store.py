"""The ``SessionStore`` protocol: where session records live.

Two implementations run through one test suite: ``service.sessions.memory.MemoryStore``
(this process's memory) and ``service.sessions.redis_store.RedisStore`` (shared by
replicas). A store keeps, per session, a ``SessionRecord`` and, after a session expires or
is evicted, a tombstone that answers "gone, and why" for one more TTL.

Concurrency contract: ``save`` is a compare-and-set on ``revision``; a writer that lost
the race gets ``False`` and must reload. Within one process the session manager also
serialises requests per session, so a conflict means another replica wrote.
"""

from __future__ import annotations

from typing import Protocol

from service.sessions.record import SessionRecord


class SessionStore(Protocol):
    """Persistence for session records. Raise ``StoreUnavailable`` when unreachable."""

    async def create(self, rec: SessionRecord, max_sessions: int, max_per_owner: int = 0) -> None:
        """Insert a new record; ``CapacityReached`` when ``max_sessions`` live ones exist, or
        ``max_per_owner`` (0: no limit) of ``rec.owner``'s of ``rec.kind``. The checks and the
        insert are one atomic step (across replicas too)."""

    async def load(self, session_id: str) -> SessionRecord:
        """The live record, or ``SessionGone`` (tombstone, naming its owner),
        ``SessionCorrupt`` (a record that fails validation) or ``SessionNotFound``."""

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
        """The live records of one owner (a corrupt one is left out)."""

    async def count(self) -> int:
        """Live records, all owners."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    async def sweep(self) -> int:
        """Turn expired records into tombstones, drop old tombstones; returns how many expired."""

    async def close(self) -> None: ...
