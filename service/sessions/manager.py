"""The session manager: stateful inference over a ``SessionStore``, with no protocol in it.

``SessionManager.advance`` is the one primitive every door steps a session through (the
``/v1`` step, the WebSocket stream, ``/v2`` sequences). It takes inputs as an array and
returns raw outputs and state (``Advance``); each adapter parses and encodes its own wire
format. Guarantees, whichever door a request came through:

- requests on one session apply one at a time, in arrival order (a per-session lock in
  this process, compare-and-set on the record's revision across replicas);
- a request that fails anywhere (inputs, model, store) leaves the stored session as it was;
- a request with ``offset`` is applied at most once: a retry of the last applied request
  gets that request's outputs again, marked replayed; any other mismatch is an
  ``OffsetConflict``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from service.errors import (
    InvalidInput,
    ModelNotFound,
    OffsetConflict,
    ServeError,
    SessionCorrupt,
    SessionGone,
    StoreUnavailable,
)
from service.inference.generation import GenerateOptions, GenStep, Rollout, rollout
from service.inference.runner import Runner
from service.metrics import Metrics
from service.models.encoding import inputs_digest
from service.models.registry import LoadedModel, ModelRegistry, State
from service.sessions.advance import Advance, InputsOf
from service.sessions.cache import same_record
from service.sessions.limits import MAX_RESTORED_STEPS, record_fits
from service.sessions.locks import SessionLocks
from service.sessions.record import (
    LastApplied,
    SessionRecord,
    hide_foreign,
    new_session_id,
    owned,
)
from service.sessions.state_codec import decode_state, encode_state
from service.sessions.store import SessionStore
from service.settings import Settings

CAS_ATTEMPTS = 8
"""Compare-and-set attempts before a write gives up as contended (``StoreUnavailable``)."""

T = TypeVar("T")

Change = Callable[[SessionRecord], Awaitable[tuple[SessionRecord | None, T]]]
"""A write: from the current record, the record to save (None: save nothing) and a result."""


class SessionManager:
    """Sessions of one service: create, look up, advance, reset, fork, delete, generate.

    ``advance`` is the one way a request moves a session; ``reset`` and an advancing
    ``generate`` write through the same compare-and-set loop (``_write``).
    """

    def __init__(
        self,
        store: SessionStore,
        registry: ModelRegistry,
        runner: Runner,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.runner = runner
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._locks = SessionLocks()

    # -- lookup ---------------------------------------------------------------------------

    async def get(self, owner: str, session_id: str, kind: str = "session") -> SessionRecord:
        """``owner``'s session of ``kind``. Another key's session, live or gone, is not
        found: only its owner learns that it expired, was evicted or is corrupt."""
        try:
            return owned(await self.store.load(session_id), owner, kind)
        except SessionGone as exc:
            hide_foreign(exc, owner, session_id)
            raise

    def model_of(self, rec: SessionRecord) -> LoadedModel:
        """The model version ``rec`` runs on; ``SessionCorrupt`` if its tensors do not fit it
        (a record written by something else: running it would fail inside the model)."""
        try:
            model = self.registry.get(rec.model, rec.version)
        except ModelNotFound as exc:
            raise SessionGone(
                f"session {rec.id!r}: model {rec.model} version {rec.version} was removed",
                "evicted",
            ) from exc
        if not record_fits(rec, model):
            raise SessionCorrupt(
                f"session {rec.id!r} cannot be used: its stored state does not fit model "
                f"{rec.model} version {rec.version}. Delete it and create a new one.",
                rec.owner,
            )
        return model

    async def list(self, owner: str, kind: str = "session") -> list[SessionRecord]:
        recs = await self.store.list(owner, kind)
        return sorted(recs, key=lambda r: (r.created_at, r.id))

    # -- lifecycle ------------------------------------------------------------------------

    def _ttl(self, ttl: object) -> int:
        if ttl is None:
            return self.settings.session_ttl_seconds
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            raise InvalidInput("ttl_seconds must be a positive integer")
        if ttl > self.settings.max_session_ttl_seconds:
            raise InvalidInput(
                f"ttl_seconds {ttl} exceeds the limit of {self.settings.max_session_ttl_seconds}"
            )
        return ttl

    async def create(
        self,
        owner: str,
        model_name: str,
        version: int | None = None,
        ttl: object = None,
        state: dict[str, Any] | None = None,
        steps: object = None,
        kind: str = "session",
        session_id: str | None = None,
        replace_existing: bool = False,
    ) -> SessionRecord:
        """A new session, from zero state or ``state`` (``encode_state``'s form).

        With ``replace_existing`` a record already under ``session_id`` is deleted first,
        under that session's lock (a ``/v2`` sequence start).
        """
        model = self.registry.get(model_name, version)
        model.require_stateful()
        ttl_s = self._ttl(ttl)
        init_state = decode_state(model, state) if state is not None else model.zero_state()
        if steps is None:
            steps = 0
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise InvalidInput("steps must be a non-negative integer")
        if steps > MAX_RESTORED_STEPS:
            raise InvalidInput(f"steps must be at most {MAX_RESTORED_STEPS}")
        if state is None and steps:
            raise InvalidInput("steps can only be given together with state")
        now = self.clock()
        rec = SessionRecord(
            id=session_id or new_session_id(),
            owner=owner,
            model=model.name,
            version=model.version,
            steps=steps,
            created_at=now,
            ttl_seconds=ttl_s,
            expires_at=now + ttl_s,
            state=init_state,
            kind=kind,
        )
        if replace_existing:
            async with self._locks(rec.id):
                await self.store.delete(rec.id)
                await self._insert(rec)
        else:
            await self._insert(rec)
        return rec

    async def _insert(self, rec: SessionRecord) -> None:
        settings = self.settings
        await self.store.create(rec, settings.max_sessions, settings.max_sessions_per_key)
        if self.metrics is not None:
            self.metrics.sessions_created.inc()

    async def delete(self, owner: str, session_id: str, kind: str = "session") -> None:
        """Delete ``owner``'s session; a corrupt one too (it can do nothing else)."""
        async with self._locks(session_id):
            with contextlib.suppress(SessionCorrupt):  # the owner's, or it names none
                await self.get(owner, session_id, kind)
            await self.store.delete(session_id)

    async def reset(self, owner: str, session_id: str, kind: str = "session") -> SessionRecord:
        async def change(rec: SessionRecord) -> tuple[SessionRecord, SessionRecord]:
            model = self.model_of(rec)
            new = replace(
                rec,
                steps=0,
                state=model.zero_state(),
                last_output=None,
                last=None,
                revision=rec.revision + 1,
                expires_at=self.clock() + rec.ttl_seconds,
            )
            return new, new

        async with self._locks(session_id):
            return await self._write(owner, session_id, kind, change)

    async def fork(self, owner: str, session_id: str, ttl: object = None) -> SessionRecord:
        src = await self.get(owner, session_id)
        self.model_of(src)
        ttl_s = self._ttl(ttl) if ttl is not None else src.ttl_seconds
        now = self.clock()
        rec = replace(
            src,
            id=new_session_id(),
            created_at=now,
            ttl_seconds=ttl_s,
            expires_at=now + ttl_s,
            last=None,
            revision=0,
        )
        await self._insert(rec)
        return rec

    # -- state export / import -------------------------------------------------------------

    @staticmethod
    def encode_state(rec: SessionRecord) -> dict[str, Any]:
        return encode_state(rec.state)

    # -- the one write path ----------------------------------------------------------------

    async def _write(
        self,
        owner: str,
        session_id: str,
        kind: str,
        change: Change[T],
        rec: SessionRecord | None = None,
        attempts: int = CAS_ATTEMPTS,
    ) -> T:
        """The compare-and-set loop every change of a session's state goes through.

        The caller holds the session's lock. ``change`` gets the current record (``rec``
        on the first attempt when given; else the store's trusted copy, ``recent``, when
        it has one; else a load) and returns the record to save, with the next revision,
        or None to save nothing. A save that lost to another replica's write reruns
        ``change`` on the record that won. An outcome computed from the store's copy that
        saves nothing (a replay, an offset conflict, any refusal) stands only if a fresh
        load finds that very record; otherwise ``change`` runs again on the fresh one.
        """
        store = self.store
        for _ in range(attempts):
            copy = False
            if rec is None:
                rec = store.recent(session_id)
                if rec is not None and rec.owner == owner and rec.kind == kind:
                    copy = True
                else:
                    rec = await self.get(owner, session_id, kind)
            try:
                new, result = await change(rec)
            except ServeError:
                if (fresh := await self._fresher(copy, rec, owner, kind)) is None:
                    raise
                rec = fresh
                continue
            if new is None:
                if (fresh := await self._fresher(copy, rec, owner, kind)) is None:
                    return result
                rec = fresh
                continue
            if await store.save(new, rec.revision):
                return result
            rec = None
        raise StoreUnavailable(f"session {session_id!r} is contended; retry")

    async def _fresher(
        self, copy: bool, rec: SessionRecord, owner: str, kind: str
    ) -> SessionRecord | None:
        """When ``rec`` is the store's copy: the stored record if it differs (the copy was
        stale), else None. An outcome that saves nothing stands only on a fresh record."""
        if not copy:
            return None
        fresh = await self.get(owner, rec.id, kind)
        return None if same_record(rec, fresh) else fresh

    async def advance(
        self,
        owner: str,
        session_id: str,
        inputs: np.ndarray | InputsOf,
        *,
        offset: int | None = None,
        kind: str = "session",
        keep_last: int | None = None,
        start: State | None = None,
        version: int | None = None,
        end: bool = False,
    ) -> Advance:
        """Run ``inputs`` (``[steps, features]`` float32 in data units, or ``[steps]``
        token ids) on the session's state and keep the result: the one session primitive.

        ``offset``: the step count the caller expects; a retry of the last applied request
        is answered from the record (``replayed``), any other mismatch is an
        ``OffsetConflict``. ``keep_last``: the inputs join several requests whose last one
        is their final ``keep_last`` steps; that one is kept as the last applied request,
        as if it had been applied alone, so its retry is replayed. ``start``: run from this
        state and step count 0 instead of the record's (a sequence start). ``version``: the
        record must be on this model version. ``end``: delete the session after the run
        instead of saving it.
        """
        locks = self._locks
        if not locks.try_acquire(session_id):
            await locks.acquire(session_id)
        try:

            async def apply(rec: SessionRecord) -> tuple[SessionRecord | None, Advance]:
                model = self.model_of(rec)
                if version is not None and rec.version != version:
                    raise InvalidInput(
                        f"this {rec.kind} runs on version {rec.version} of model "
                        f"'{rec.model}', not version {version}"
                    )
                x = inputs if isinstance(inputs, np.ndarray) else inputs(model)
                n = int(x.shape[0])
                kept = n
                if offset is None and keep_last is not None and keep_last < n:
                    kept = keep_last
                digest = inputs_digest(x if kept == n else x[-kept:])
                if start is not None:
                    before, steps = start, 0
                else:
                    before, steps = rec.state, rec.steps
                if offset is not None:
                    last = None if start is not None else rec.last
                    if (
                        last is not None
                        and offset == last.offset
                        and digest == last.digest
                        and steps == last.offset + last.n_steps
                    ):
                        replay = Advance(
                            rec.id, model, last.outputs, None, rec.state, last.offset, steps, True
                        )
                        return None, replay
                    if offset != steps:
                        raise OffsetConflict(
                            f"offset {offset} does not match the session's {steps} steps",
                            steps=steps,
                        )
                (res,) = await self.runner.run(model, [x], [before], key=rec.id)
                after = steps + n
                done = Advance(rec.id, model, res.outputs, res.wire, res.state, steps, after)
                if end:
                    return None, done
                tail = res.outputs if kept == n else res.outputs[-kept:]
                if tail.base is not None:  # a view of a batch's outputs: keep only this
                    tail = tail.copy()
                applied = LastApplied(after - kept, kept, digest, tail)
                new = rec.advanced(after, res.state, tail[-1], applied, self.clock())
                return new, done

            result = await self._write(owner, session_id, kind, apply)
            if end:
                await self.store.delete(session_id)
            return result
        finally:
            locks.release(session_id)

    # -- generation -------------------------------------------------------------------------

    async def generate(
        self,
        owner: str,
        session_id: str,
        context: np.ndarray | None,
        opts: GenerateOptions,
        advance: bool,
        result: Rollout,
    ) -> AsyncIterator[GenStep]:
        """Roll out from the session's state; with ``advance`` the session takes the result.

        The session is locked for the whole roll-out when advancing, so no step interleaves.
        """
        if not advance:
            rec = await self.get(owner, session_id)
            model = self.model_of(rec)
            async for step in rollout(
                self.runner, model, rec.state, rec.last_output, context, opts, result, rec.id
            ):
                yield step
            return
        async with self._locks(session_id):
            rec = await self.get(owner, session_id)
            model = self.model_of(rec)
            async for step in rollout(
                self.runner, model, rec.state, rec.last_output, context, opts, result, rec.id
            ):
                yield step

            async def take(cur: SessionRecord) -> tuple[SessionRecord, None]:
                steps = cur.steps + result.fed_steps
                return cur.advanced(
                    steps, result.state, result.last_output, None, self.clock()
                ), None

            # one attempt: a roll-out already streamed cannot run again on a newer record
            await self._write(owner, session_id, "session", take, rec=rec, attempts=1)

    async def sweep(self) -> int:
        expired = await self.store.sweep()
        return expired
