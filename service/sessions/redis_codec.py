"""A ``SessionRecord`` as the fields of a Redis hash, and back, validating every field.

Anything can end up in a hash (an operator's ``HSET``, another program on the same prefix, a
torn upgrade), so decoding trusts nothing: a field that is missing, of the wrong type, out of
range, or whose bytes do not match the shape it claims raises ``SessionCorrupt``, never a
``KeyError`` or ``ValueError`` that would surface as a 500. The owner is kept on the error
where the hash still tells it, so that only the owner learns of the damage.

Fields (see ``service.sessions.redis_store`` for the keys)::

    m          orjson metadata: ids, steps, times, tensor shapes, the last request's offset,
               step count, digest and output shape
    r          revision, the compare-and-set counter
    c          incarnation: ``created_at`` as ``repr`` (a record replaced under the same id
               has another), checked with ``r`` by the compare-and-set
    o, k, ttl  owner, kind and TTL (read by the Lua scripts)
    x:{name}   one state tensor, raw little-endian float32
    lo         last output, raw float32
    lr         the last request's outputs, raw float32
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import orjson

from service.errors import SessionCorrupt
from service.sessions.limits import MAX_STORED_STEPS
from service.sessions.record import LastApplied, SessionRecord

TENSOR = "x:"

_MAX_TIME = 1e11
"""Seconds since the epoch (the year 5138): later times are damage, and overflow gmtime."""
_MAX_TTL = 2**31 - 1
_MAX_DIM = 2**31 - 1
_MAX_RANK = 8
_MAX_REVISION = 2**63 - 1


class _Bad(Exception):
    """What is wrong with a record (for the log; the client is told only that it is)."""


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def incarnation(rec: SessionRecord) -> str:
    """Which record of its id ``rec`` is (field ``c``): its creation time, exactly."""
    return repr(float(rec.created_at))


def record_fields(rec: SessionRecord) -> dict[str, bytes]:
    """The record as hash fields: metadata as JSON, tensors as raw float32 bytes."""
    last = rec.last
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
            {
                "offset": last.offset,
                "n_steps": last.n_steps,
                "digest": last.digest,
                "outputs": list(last.outputs.shape),
            }
            if last is not None
            else None
        ),
    }
    fields: dict[str, bytes] = {
        "m": orjson.dumps(meta),
        "r": str(rec.revision).encode(),
        "c": incarnation(rec).encode(),
        "o": rec.owner.encode(),
        "k": rec.kind.encode(),
        "ttl": str(rec.ttl_seconds).encode(),
    }
    for name, arr in rec.state.items():
        fields[TENSOR + name] = _f32(arr)
    if rec.last_output is not None:
        fields["lo"] = _f32(rec.last_output)
    if last is not None:
        fields["lr"] = _f32(last.outputs)
    return fields


def flat(fields: dict[str, bytes]) -> list[str | bytes]:
    """``{k: v, ...}`` as ``[k, v, ...]``, the arguments of ``HSET``."""
    out: list[str | bytes] = []
    for k, v in fields.items():
        out += [k, v]
    return out


def save_args(rec: SessionRecord, expected_revision: int, ttl_ms: int, tomb_ms: int) -> bytes:
    """The ``SAVE`` script's argument for ``rec``, one MessagePack array of strings: the
    compare-and-set's expected revision and incarnation, ``expires_at``, the two expiries,
    the id, the owner and the kind, then the record's fields as name, value, ... Packed in
    the old raw format (``use_bin_type=False``), the one Redis's ``cmsgpack`` reads."""
    items: list[str | bytes] = [
        str(expected_revision),
        incarnation(rec),
        repr(rec.expires_at),
        str(ttl_ms),
        str(tomb_ms),
        rec.id,
        rec.owner,
        rec.kind,
    ]
    for name, value in record_fields(rec).items():
        items += [name, value]
    packed: bytes = msgpack.packb(items, use_bin_type=False)
    return packed


# -- decoding ---------------------------------------------------------------------------------


def _int(doc: dict[str, Any], name: str, lo: int, hi: int) -> int:
    v = doc.get(name)
    if type(v) is not int or not lo <= v <= hi:
        raise _Bad(f"{name} is not an integer in [{lo}, {hi}]")
    return v


def _time(doc: dict[str, Any], name: str) -> float:
    v = doc.get(name)
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= _MAX_TIME:
        raise _Bad(f"{name} is not a time")  # NaN fails the range too
    return float(v)


def _str(doc: dict[str, Any], name: str) -> str:
    v = doc.get(name)
    if type(v) is not str:
        raise _Bad(f"{name} is not a string")
    return v


def _shape(v: object, what: str) -> list[int]:
    if (
        type(v) is not list
        or len(v) > _MAX_RANK
        or not all(type(d) is int and 0 <= d <= _MAX_DIM for d in v)
    ):
        raise _Bad(f"{what} has no valid shape")
    return v


def _tensor(fields: dict[bytes, bytes], key: str, shape: list[int]) -> np.ndarray:
    raw = fields.get(key.encode())
    if raw is None:
        raise _Bad(f"field {key} is missing")
    if len(raw) != 4 * math.prod(shape):
        raise _Bad(
            f"field {key} has {len(raw)} bytes, its shape {shape} needs {4 * math.prod(shape)}"
        )
    arr = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
    if not np.isfinite(arr).all():
        raise _Bad(f"field {key} has non-finite values")
    return arr


def _text(fields: dict[bytes, bytes], key: bytes) -> str | None:
    raw = fields.get(key)
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def stored_owner(fields: dict[bytes, bytes]) -> str | None:
    """The owner a damaged hash still names (``o``, else the metadata's), or None."""
    owner = _text(fields, b"o")
    if owner is not None:
        return owner
    try:
        meta = orjson.loads(fields.get(b"m", b""))
    except orjson.JSONDecodeError:
        return None
    found = meta.get("owner") if isinstance(meta, dict) else None
    return found if isinstance(found, str) else None


def _last(meta: dict[str, Any], fields: dict[bytes, bytes], steps: int) -> LastApplied | None:
    last = meta.get("last")
    if last is None:
        return None
    if type(last) is not dict:
        raise _Bad("last is not an object")
    if "outputs" not in last:
        return None  # written by an older version, which kept the response instead
    offset = _int(last, "offset", 0, MAX_STORED_STEPS)
    n_steps = _int(last, "n_steps", 1, MAX_STORED_STEPS)
    if offset + n_steps > steps:
        raise _Bad("last applied request ends after the session's steps")
    return LastApplied(
        offset=offset,
        n_steps=n_steps,
        digest=_str(last, "digest"),
        outputs=_tensor(fields, "lr", _shape(last["outputs"], "last.outputs")),
    )


def _decode(fields: dict[bytes, bytes], session_id: str) -> SessionRecord:
    try:
        meta = orjson.loads(fields.get(b"m", b""))
    except orjson.JSONDecodeError as exc:
        raise _Bad("metadata m is not JSON") from exc
    if type(meta) is not dict:
        raise _Bad("metadata m is not an object")
    rec_id = _str(meta, "id")
    if rec_id != session_id:
        raise _Bad(f"metadata names another session, {rec_id!r}")
    owner, kind = _str(meta, "owner"), _str(meta, "kind")
    if _text(fields, b"o") != owner or _text(fields, b"k") != kind:
        raise _Bad("fields o and k disagree with the metadata")
    revision = _text(fields, b"r")
    if revision is None or not revision.isascii() or not revision.isdigit():
        raise _Bad("revision r is not a non-negative integer")
    if int(revision) > _MAX_REVISION:
        raise _Bad("revision r is too large")
    ttl = _int(meta, "ttl_seconds", 1, _MAX_TTL)
    if _text(fields, b"ttl") != str(ttl):
        raise _Bad("field ttl disagrees with the metadata")
    steps = _int(meta, "steps", 0, MAX_STORED_STEPS)
    shapes = meta.get("state")
    if type(shapes) is not dict or not shapes:
        raise _Bad("state is not an object of tensor shapes")
    state = {
        name: _tensor(fields, TENSOR + name, _shape(shape, f"state.{name}"))
        for name, shape in shapes.items()
    }
    created_at = _time(meta, "created_at")
    stamp = fields.get(b"c")
    if stamp is not None and stamp != repr(created_at).encode():
        raise _Bad("field c disagrees with the metadata's created_at")
    lo_shape = meta.get("last_output")
    return SessionRecord(
        id=rec_id,
        owner=owner,
        model=_str(meta, "model"),
        version=_int(meta, "version", 0, 2**63 - 1),
        steps=steps,
        created_at=created_at,
        ttl_seconds=ttl,
        expires_at=_time(meta, "expires_at"),
        state=state,
        last_output=(
            _tensor(fields, "lo", _shape(lo_shape, "last_output")) if lo_shape is not None else None
        ),
        last=_last(meta, fields, steps),
        revision=int(revision),
        kind=kind,
    )


def corrupt(session_id: str, owner: str | None) -> SessionCorrupt:
    return SessionCorrupt(
        f"session {session_id!r} cannot be read: its stored record is damaged. "
        "Delete it and create a new one.",
        owner,
    )


def record_from_fields(fields: dict[bytes, bytes], session_id: str) -> SessionRecord:
    """Inverse of ``record_fields`` (keys as Redis returns them, bytes).

    Raises ``SessionCorrupt`` (whose ``__cause__`` says what is wrong) unless every field is
    present and valid and the record is ``session_id``'s.
    """
    try:
        return _decode(fields, session_id)
    except _Bad as exc:
        raise corrupt(session_id, stored_owner(fields)) from exc
