"""Triton's sequence extension over the session manager (implicit state per sequence id).

A sequence is a session record of kind ``sequence`` in the same store as ``/v1``
sessions, so it shares their TTL, expiry, capacity limit and (with Redis) their
scale-out. Its store id is derived from the model, the caller and the sequence id, so
every replica finds it without a lookup table, one caller's ids never meet another's,
and the id is a short ``[a-z0-9_:-]`` string whatever the client sent.

A step goes through ``SessionManager.advance``, the one session primitive, as a ``/v1``
step does: under the session's lock and the store's compare-and-set, so no step is lost,
applied twice or interleaved, whichever door the requests on one record came through.
It returns the raw per-step outputs and the final state that ``/v2`` answers with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput, SessionGone, SessionNotFound
from service.inference.runner import SeqResult
from service.models.registry import LoadedModel, State
from service.sessions.manager import SessionManager
from service.sessions.record import SessionRecord

KIND = "sequence"
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class SequenceParams:
    """The request's sequence parameters; ``id`` None means a stateless request."""

    id: int | str | None
    start: bool
    end: bool


def sequence_params(parameters: dict[str, Any]) -> SequenceParams:
    """Read ``sequence_id`` (uint64 or string; 0 and "" mean none), ``sequence_start/end``."""
    raw = parameters.get("sequence_id")
    seq_id: int | str | None
    if raw is None:
        seq_id = None
    elif isinstance(raw, bool):
        raise InvalidInput("sequence_id must be an unsigned integer or a string")
    elif isinstance(raw, int):
        if not 0 <= raw <= _UINT64_MAX:
            raise InvalidInput("sequence_id must be an unsigned 64-bit integer or a string")
        seq_id = raw or None
    elif isinstance(raw, str):
        if len(raw) > 256:
            raise InvalidInput("a string sequence_id must be at most 256 characters")
        seq_id = raw or None
    else:
        raise InvalidInput("sequence_id must be an unsigned integer or a string")
    flags: dict[str, bool] = {}
    for key in ("sequence_start", "sequence_end"):
        value = parameters.get(key, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"{key} must be true or false")
        flags[key] = value
    if seq_id is None and (flags["sequence_start"] or flags["sequence_end"]):
        raise InvalidInput("sequence_start and sequence_end need a non-zero sequence_id")
    return SequenceParams(seq_id, flags["sequence_start"], flags["sequence_end"])


def store_id(model: str, owner: str, seq_id: int | str) -> str:
    """Deterministic store id; uint64 ``1`` and string ``"1"`` are different sequences."""
    typed = f"u:{seq_id}" if isinstance(seq_id, int) else f"s:{seq_id}"
    digest = hashlib.sha256(f"{owner}\0{model}\0{typed}".encode()).hexdigest()[:32]
    return f"seq:{model}:{digest}"


def unknown_sequence(model: str, seq_id: int | str) -> InvalidInput:
    """Triton's wording, so clients matching on it keep working."""
    return InvalidInput(
        f"inference request for sequence {seq_id} to model '{model}' must specify the "
        "START flag on the first request of the sequence",
        code="unknown_sequence",
    )


class Sequences:
    """Steps, starts and ends sequences for one app, over its session manager."""

    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions

    async def _load(
        self, owner: str, sid: str, model_name: str, seq_id: int | str
    ) -> SessionRecord:
        try:
            return await self.sessions.get(owner, sid, KIND)
        except (SessionNotFound, SessionGone) as exc:
            raise unknown_sequence(model_name, seq_id) from exc

    async def resolve(
        self, owner: str, name: str, version: int | None, params: SequenceParams
    ) -> LoadedModel:
        """The model version to run: a running sequence stays on the version it started on."""
        if params.id is None or params.start or version is not None:
            return self.sessions.registry.get(name, version)
        self.sessions.registry.get(name)
        rec = await self._load(owner, store_id(name, owner, params.id), name, params.id)
        return self.sessions.model_of(rec)

    async def step(
        self,
        owner: str,
        model: LoadedModel,
        params: SequenceParams,
        x: np.ndarray,
        explicit: State | None,
    ) -> SeqResult:
        """Run one request of a sequence (batch size 1) and keep or free its state."""
        assert params.id is not None
        sid = store_id(model.name, owner, params.id)
        start: State | None = None
        if params.start:
            await self.sessions.create(
                owner, model.name, model.version, kind=KIND, session_id=sid, replace_existing=True
            )
            start = explicit or model.zero_state()
        elif explicit is not None:
            raise InvalidInput(
                "state inputs can only start a sequence (sequence_start) or a stateless request"
            )
        try:
            done = await self.sessions.advance(
                owner, sid, x, kind=KIND, start=start, version=model.version, end=params.end
            )
        except (SessionNotFound, SessionGone) as exc:
            raise unknown_sequence(model.name, params.id) from exc
        return SeqResult(done.outputs, done.state, done.wire)
