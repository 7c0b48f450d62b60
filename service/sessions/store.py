"""The ``SessionStore`` protocol: where session records live.

Two implementations run through one test suite: ``service.sessions.memory.MemoryStore``
(this process's memory) and ``service.sessions.redis_store.RedisStore`` (shared by
replicas). A store keeps, per session, a ``SessionRecord`` and, after a session expires or
is evicted, a tombstone that answers "gone, and why" for one more TTL.

Concurrency contract: ``save`` is a compare-and-set on ``revision`` (and on the record's
incarnation, so a record deleted and created again under the same id never passes for the
old one); a writer that lost the race gets ``False`` and must reload. Within one process
the session manager also serialises requests per session, so a conflict means another
replica wrote.

A store may keep copies of records it wrote (``recent``) so that a step costs one round
trip; such a copy may be stale, which only a compare-and-set ``save`` can tell. Calls made
together (``load_many``, ``save_many``) may go to the store together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.errors import ServeError
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

    def recent(self, session_id: str) -> SessionRecord | None:
        """A copy of the session's record that this store wrote and has reason to think
        current, without asking the store; None if it has none (the memory store never
        has: its ``load`` is as cheap). The copy may be stale: a step may be computed from
        it only because its ``save`` is the compare-and-set, and an outcome computed from
        it that saves nothing (a replay, a refusal) must be confirmed on a ``load``."""

    async def load_many(self, ids: Sequence[str]) -> list[SessionRecord | ServeError]:
        """``load`` of each id at once: per id, the record or the error ``load`` raises
        (``StoreUnavailable`` for every id when the store cannot be reached)."""

    async def save_many(
        self, items: Sequence[tuple[SessionRecord, int]]
    ) -> list[bool | ServeError]:
        """``save`` of each (record, expected revision) at once, each on its own: per item,
        what ``save`` returns or the error it raises. The records must be of distinct
        sessions."""

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
