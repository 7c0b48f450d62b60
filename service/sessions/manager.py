"""The session manager: stateful inference over a ``SessionStore``, with no protocol in it.

Guarantees (for /v1 sessions, the WebSocket stream and /v2 sequences alike):
- steps on one session apply one at a time, in arrival order (a per-session lock in
  this process, compare-and-set on the record's revision across replicas);
- a step that fails anywhere (validation, model, store) leaves the stored session as it was;
- a request with ``offset`` is applied at most once: a retry of the last applied request
  gets the same response again, marked replayed; any other mismatch is an ``OffsetConflict``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import orjson

from service.errors import (
    CapacityReached,
    InvalidInput,
    ModelNotFound,
    OffsetConflict,
    SessionGone,
    SessionNotFound,
    StoreUnavailable,
)
from service.inference.generation import GenerateOptions, GenStep, Rollout, rollout
from service.inference.runner import Runner
from service.metrics import Metrics
from service.models.encoding import decode_steps, inputs_digest, parse_step_inputs
from service.models.registry import LoadedModel, ModelRegistry, State
from service.sessions.store import LastApplied, MemoryStore, SessionRecord, SessionStore
from service.settings import Settings

_CAS_ATTEMPTS = 8


def new_session_id() -> str:
    """160 random bits, URL-safe."""
    return secrets.token_urlsafe(20)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def session_view(rec: SessionRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "model": rec.model,
        "version": rec.version,
        "steps": rec.steps,
        "created_at": _iso(rec.created_at),
        "expires_at": _iso(rec.expires_at),
        "ttl_seconds": rec.ttl_seconds,
    }


def _owned(rec: SessionRecord, owner: str, kind: str) -> SessionRecord:
    """``rec`` if it is ``owner``'s session of ``kind``; else it is not found (404)."""
    if rec.owner != owner or rec.kind != kind:
        raise SessionNotFound(f"no session {rec.id!r}")
    return rec


class StepResult(NamedTuple):
    """A step's response (a named tuple: one is made per step, and a frozen dataclass
    costs twice as much to build)."""

    body: dict[str, Any]
    raw: bytes
    """``body`` as JSON, encoded once (it is also what a retry gets back)."""
    replayed: bool = False


class _Locks:
    """Per-session FIFO locks that exist only while someone holds or waits for them.

    The lock is handed straight to the next waiter on release, so requests on one session
    apply in arrival order. An uncontended acquire allocates nothing but a dict entry.
    """

    def __init__(self) -> None:
        # held keys → their waiters (None until somebody waits: most steps never contend)
        self._waiters: dict[str, deque[asyncio.Future[None]] | None] = {}

    def __call__(self, key: str) -> _Held:
        return _Held(self, key)

    def try_acquire(self, key: str) -> bool:
        """Take the lock if nobody holds it (no coroutine: the session step's common case)."""
        waiters = self._waiters
        if key in waiters:
            return False
        waiters[key] = None
        return True

    async def acquire(self, key: str) -> None:
        waiters = self._waiters
        if key not in waiters:
            waiters[key] = None
            return
        queue = waiters[key]
        if queue is None:
            queue = waiters[key] = deque()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(key)  # handed the lock while being cancelled: pass it on
            else:
                # a release may already have dropped this cancelled waiter from the queue
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
            raise

    def release(self, key: str) -> None:
        queue = self._waiters[key]
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        del self._waiters[key]

    def held(self, key: str) -> bool:
        return key in self._waiters


class _Held:
    __slots__ = ("_key", "_owner")

    def __init__(self, owner: _Locks, key: str) -> None:
        self._owner, self._key = owner, key

    async def __aenter__(self) -> None:
        await self._owner.acquire(self._key)

    async def __aexit__(self, *exc: object) -> None:
        self._owner.release(self._key)


class SessionManager:
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
        self._memory = store if isinstance(store, MemoryStore) else None
        """The store when it is in memory: the step then loads and saves without awaiting."""
        self.registry = registry
        self.runner = runner
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._locks = _Locks()

    # -- lookup ---------------------------------------------------------------------------

    async def get(self, owner: str, session_id: str, kind: str = "session") -> SessionRecord:
        return _owned(await self.store.load(session_id), owner, kind)

    def model_of(self, rec: SessionRecord) -> LoadedModel:
        try:
            return self.registry.get(rec.model, rec.version)
        except ModelNotFound as exc:
            raise SessionGone(
                f"session {rec.id!r}: model {rec.model} version {rec.version} was removed",
                "evicted",
            ) from exc

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
    ) -> SessionRecord:
        model = self.registry.get(model_name, version)
        ttl_s = self._ttl(ttl)
        init_state = self.decode_state(model, state) if state is not None else model.zero_state()
        if steps is None:
            steps = 0
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise InvalidInput("steps must be a non-negative integer")
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
        await self._check_owner_limit(owner, kind)
        await self.store.create(rec, self.settings.max_sessions)
        if self.metrics is not None:
            self.metrics.sessions_created.inc()
        return rec

    async def _check_owner_limit(self, owner: str, kind: str) -> None:
        limit = self.settings.max_sessions_per_key
        if limit and len(await self.store.list(owner, kind)) >= limit:
            raise CapacityReached(f"this key already holds {limit} sessions, the limit per key")

    async def delete(self, owner: str, session_id: str, kind: str = "session") -> None:
        async with self._locks(session_id):
            await self.get(owner, session_id, kind)
            await self.store.delete(session_id)

    async def _update(
        self,
        owner: str,
        session_id: str,
        kind: str,
        change: Callable[[SessionRecord], SessionRecord],
    ) -> SessionRecord:
        async with self._locks(session_id):
            for _ in range(_CAS_ATTEMPTS):
                rec = await self.get(owner, session_id, kind)
                new = replace(change(rec), revision=rec.revision + 1).touched(self.clock())
                if await self.store.save(new, rec.revision):
                    return new
        raise StoreUnavailable(f"session {session_id!r} is contended; retry")

    async def reset(self, owner: str, session_id: str, kind: str = "session") -> SessionRecord:
        def change(rec: SessionRecord) -> SessionRecord:
            model = self.model_of(rec)
            return replace(rec, steps=0, state=model.zero_state(), last_output=None, last=None)

        return await self._update(owner, session_id, kind, change)

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
        await self._check_owner_limit(owner, src.kind)
        await self.store.create(rec, self.settings.max_sessions)
        if self.metrics is not None:
            self.metrics.sessions_created.inc()
        return rec

    # -- state export / import -------------------------------------------------------------

    @staticmethod
    def encode_state(rec: SessionRecord) -> dict[str, Any]:
        return {
            name: {
                "shape": list(arr.shape),
                "dtype": "float32",
                "data_b64": base64.b64encode(
                    np.ascontiguousarray(arr, dtype="<f4").tobytes()
                ).decode(),
            }
            for name, arr in rec.state.items()
        }

    @staticmethod
    def decode_state(model: LoadedModel, doc: object) -> State:
        if not isinstance(doc, dict):
            raise InvalidInput("state must be an object of state tensors", code="invalid_state")
        want = {s.name: s for s in model.manifest.state}
        if set(doc) != set(want):
            raise InvalidInput(
                f"state must have exactly the tensors {sorted(want)}, got {sorted(doc)}",
                code="invalid_state",
            )
        out: State = {}
        for name, spec in want.items():
            t = doc[name]
            if not isinstance(t, dict):
                raise InvalidInput(f"state.{name} must be an object", code="invalid_state")
            if t.get("dtype") != "float32":
                raise InvalidInput(f"state.{name}.dtype must be float32", code="invalid_state")
            if t.get("shape") != spec.shape:
                raise InvalidInput(
                    f"state.{name}.shape must be {spec.shape}, got {t.get('shape')}",
                    code="invalid_state",
                )
            data = t.get("data_b64")
            if not isinstance(data, str):
                raise InvalidInput(f"state.{name}.data_b64 must be a string", code="invalid_state")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(
                    f"state.{name}.data_b64 is not valid base64", code="invalid_state"
                ) from exc
            n = int(np.prod(spec.shape))
            if len(raw) != 4 * n:
                raise InvalidInput(
                    f"state.{name} needs {4 * n} bytes of float32 data, got {len(raw)}",
                    code="invalid_state",
                )
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(spec.shape)
            if not np.isfinite(arr).all():
                raise InvalidInput(f"state.{name} has non-finite values", code="invalid_state")
            out[name] = arr
        return out

    # -- stepping ---------------------------------------------------------------------------

    def parse_step(self, model: LoadedModel, body: dict[str, Any]) -> np.ndarray:
        return parse_step_inputs(model.manifest, body, self.settings.max_steps_per_request)

    @staticmethod
    def _offset(body: dict[str, Any]) -> int | None:
        offset = body.get("offset")
        if offset is None:
            return None
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidInput("offset must be a non-negative integer")
        return offset

    async def step(
        self,
        owner: str,
        session_id: str,
        body: dict[str, Any],
        kind: str = "session",
        last_steps: int | None = None,
    ) -> StepResult:
        """Apply one step request (``inputs`` or ``text``, optional ``offset``).

        ``last_steps`` says the body joins several requests (waiting WebSocket frames) whose
        last one is its final ``last_steps`` steps: that one is kept as the last applied
        request, exactly as if it had been applied alone, so its retry is replayed.
        """
        offset = self._offset(body)
        locks = self._locks
        memory = self._memory
        if not locks.try_acquire(session_id):
            await locks.acquire(session_id)
        try:
            for _ in range(_CAS_ATTEMPTS):
                if memory is not None:
                    rec = _owned(memory.load_now(session_id), owner, kind)
                else:
                    rec = await self.get(owner, session_id, kind)
                model = self.model_of(rec)
                x = self.parse_step(model, body)
                n = int(x.shape[0])
                # the fingerprint kept for replays: of the whole request, or of the last of
                # the joined ones (joined requests carry no offset, so it is never compared)
                kept = n
                if offset is None and last_steps is not None and last_steps < n:
                    kept = last_steps
                digest = inputs_digest(x if kept == n else x[-kept:])
                last = rec.last
                if offset is not None:
                    if (
                        last is not None
                        and offset == last.offset
                        and digest == last.digest
                        and rec.steps == last.offset + last.n_steps
                    ):
                        replay: dict[str, Any] = orjson.loads(last.response)
                        replay["replayed"] = True
                        return StepResult(replay, orjson.dumps(replay), replayed=True)
                    if offset != rec.steps:
                        raise OffsetConflict(
                            f"offset {offset} does not match the session's {rec.steps} steps",
                            steps=rec.steps,
                        )
                (res,) = await self.runner.run(model, [x], [rec.state], key=rec.id)
                steps = rec.steps + n
                body_out: dict[str, Any] = {
                    "id": rec.id,
                    "steps": steps,
                    "outputs": decode_steps(
                        model.manifest, res.outputs, self.settings.top_k_default, res.wire
                    ),
                }
                raw = orjson.dumps(body_out)
                if kept == n:
                    applied = LastApplied(rec.steps, n, digest, raw)
                else:
                    tail = {"id": rec.id, "steps": steps, "outputs": body_out["outputs"][-kept:]}
                    applied = LastApplied(steps - kept, kept, digest, orjson.dumps(tail))
                new = rec.advanced(steps, res.state, res.outputs[-1], applied, self.clock())
                if memory is not None:
                    saved = memory.save_now(new, rec.revision)
                else:
                    saved = await self.store.save(new, rec.revision)
                if saved:
                    return StepResult(body_out, raw)
        finally:
            locks.release(session_id)
        raise StoreUnavailable(f"session {session_id!r} is contended; retry")

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
            new = rec.advanced(
                rec.steps + result.fed_steps, result.state, result.last_output, None, self.clock()
            )
            if not await self.store.save(new, rec.revision):
                raise StoreUnavailable(f"session {session_id!r} changed during generation; retry")

    async def sweep(self) -> int:
        expired = await self.store.sweep()
        return expired
