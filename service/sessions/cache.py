"""``RecordCache``: the records a replica wrote recently, so that a step costs one round trip.

A session that stays on one replica is stepped from the copy of the record that replica
saved last, and the save's compare-and-set (revision and incarnation) is the only round
trip. The copy can be stale whenever another replica writes the session, so:

- a copy is *trusted* (offered by ``recent``) only once a load from the store found the
  record exactly as this replica last wrote it; a new entry (a create, a save of a record
  that was loaded) starts untrusted. A session that moves between replicas on every step
  therefore keeps loading, with no compare-and-set lost on a stale copy after the first;
- a save that loses the compare-and-set, or fails at all, drops the entry;
- the caller confirms any outcome computed from a copy that saves nothing (a replay, an
  offset conflict, a refusal) against a fresh load (``SessionManager._write``).

Bounded by a number of records and by bytes (the settings ``session_cache_records`` and
``session_cache_mb``), least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from service.sessions.record import SessionRecord

ENTRY_OVERHEAD = 600
"""Bytes counted per entry besides its arrays (the record, its dicts and this entry)."""


def record_bytes(rec: SessionRecord) -> int:
    """About what keeping ``rec`` costs: its arrays plus a fixed overhead."""
    n = ENTRY_OVERHEAD + sum(a.nbytes for a in rec.state.values())
    if rec.last_output is not None:
        n += rec.last_output.nbytes
    if rec.last is not None:
        n += rec.last.outputs.nbytes
    return n


def same_record(a: SessionRecord, b: SessionRecord) -> bool:
    """Whether ``a`` and ``b`` are the same write of the same session: the same id,
    incarnation (``created_at``: a record replaced under the same id has a new one) and
    revision (every write of a session's record takes the next one)."""
    return a.revision == b.revision and a.created_at == b.created_at and a.id == b.id


class _Entry(NamedTuple):
    rec: SessionRecord
    trusted: bool
    size: int


class RecordCache:
    """LRU of recently written records, at most ``max_records`` and ``max_bytes``."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def recent(self, session_id: str, now: float) -> SessionRecord | None:
        """The trusted copy of a live record, or None."""
        entry = self._entries.get(session_id)
        if entry is None or not entry.trusted or now >= entry.rec.expires_at:
            return None
        self._entries.move_to_end(session_id)
        return entry.rec

    def wrote(self, rec: SessionRecord) -> None:
        """``rec`` was saved (or created): keep it, trusted as its predecessor was."""
        if self.max_records <= 0:
            return
        old = self._entries.pop(rec.id, None)
        trusted = False
        if old is not None:
            self._bytes -= old.size
            trusted = old.trusted and old.rec.created_at == rec.created_at
        size = record_bytes(rec)
        self._entries[rec.id] = _Entry(rec, trusted, size)
        self._bytes += size
        while self._entries and (
            len(self._entries) > self.max_records or self._bytes > self.max_bytes
        ):
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.size

    def loaded(self, rec: SessionRecord) -> None:
        """A load found ``rec`` in the store: trust the copy if it is that record, else
        drop the copy (another replica wrote since)."""
        entry = self._entries.get(rec.id)
        if entry is None:
            return
        if same_record(entry.rec, rec):
            if not entry.trusted:
                self._entries[rec.id] = entry._replace(trusted=True)
        else:
            self.drop(rec.id)

    def drop(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= entry.size
