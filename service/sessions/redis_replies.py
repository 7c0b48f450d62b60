"""What the Redis store makes of Redis's replies to a load and to a save."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from service.errors import ServeError, SessionGone, SessionNotFound
from service.sessions.cache import RecordCache
from service.sessions.record import SessionRecord
from service.sessions.redis_codec import corrupt, record_from_fields
from service.sessions.redis_errors import core_error, is_outage, text, unavailable

log = logging.getLogger("service.sessions.redis_store")


def record_of(session_id: str, fields: Any, tomb: Any) -> SessionRecord:
    """The record from the replies of ``HGETALL`` of its hash and its tombstone, or the
    error a load raises: an outage, ``SessionCorrupt``, ``SessionGone``, ``SessionNotFound``."""
    for reply in (fields, tomb):
        if isinstance(reply, BaseException) and (
            not isinstance(reply, ResponseError) or is_outage(reply)
        ):
            raise unavailable("load", reply)
    if isinstance(tomb, ResponseError):
        log.error("tombstone of session %s cannot be read: %s", session_id, tomb)
        tomb = {b"reason": b"unreadable"}
    if isinstance(fields, ResponseError):
        log.error("session %s cannot be read: %s", session_id, fields)
        raise corrupt(session_id, text(tomb.get(b"owner")))
    if fields:
        try:
            return record_from_fields(fields, session_id)
        except SessionGone as exc:
            log.error("session %s cannot be read: %s", session_id, exc.__cause__)
            raise
    if tomb:
        reason = text(tomb.get(b"reason"))
        owner = text(tomb.get(b"owner"))
        if reason not in ("expired", "evicted") or owner is None:
            log.error("tombstone of session %s is damaged", session_id)
            raise corrupt(session_id, owner)
        raise SessionGone(f"session {session_id!r} {reason}", reason, owner)
    raise SessionNotFound(f"no session {session_id!r}")


def save_outcome(rec: SessionRecord, reply: Any) -> bool:
    """Whether the ``SAVE`` script's reply says saved (False: the compare-and-set failed),
    or the error a save raises."""
    if isinstance(reply, BaseException):
        raise core_error("save", reply, rec.id)
    status = int(reply[0])
    if status == 2:
        reason = text(reply[1])
        if reason not in ("expired", "evicted"):
            raise corrupt(rec.id, rec.owner)
        raise SessionGone(f"session {rec.id!r} {reason}", reason, rec.owner)
    if status == 3:
        raise SessionNotFound(f"no session {rec.id!r}")
    return status == 1


Saved = bool | ServeError
"""A save's outcome: saved or not (the compare-and-set), or the error it raised."""


def save_outcomes(
    recs: Sequence[SessionRecord], replies: Sequence[Any], cache: RecordCache
) -> list[Saved]:
    """Each save's outcome (``save_outcome``, an error in place of a raise); the cache
    keeps each record saved and drops the others."""
    out: list[Saved] = []
    for rec, reply in zip(recs, replies, strict=True):
        try:
            saved = save_outcome(rec, reply)
        except ServeError as exc:
            saved = False
            out.append(exc)
        else:
            out.append(saved)
        if saved:
            cache.wrote(rec)
        else:
            cache.drop(rec.id)
    return out


def listed(owner: str, kind: str, ids: list[str], found: list[Any]) -> list[SessionRecord]:
    """The owner's records of ``kind`` among the replies of ``HGETALL`` of each id's
    record (missing ones left out; a record that cannot be read is logged and left out)."""
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
