"""The WebSocket adapter: ``WS /v1/sessions/{id}/stream``, one step per frame.

Protocol (see ``docs/streaming.md``):

- every client frame (text, or binary holding UTF-8 JSON) is a step body exactly as for
  ``POST /v1/sessions/{id}/step``; every reply is a text frame with the step response,
  in the order the frames arrived;
- a frame that fails (bad JSON, a body its schema refuses, bad inputs, offset conflict,
  store unavailable, ...) gets ``{"error": {problem details}}`` and the socket stays open;
- every frame passes the gate (``service.http.gate``) as a request does: it takes a
  rate-limit token (``rate_limited`` error frame when the key has none left) and may be at
  most ``LSTM_SERVE_MAX_BODY_BYTES``: a larger frame is answered with a
  ``request_too_large`` error frame (status 413) and the socket stays open;
- the socket is closed with 4404 when the session does not exist (at connect, or when it
  is deleted), 4410 when it expired or was evicted, and 4401 when the API key is missing
  or wrong; 1013 (try again later) when the session store does not answer at connect or
  the key already holds ``LSTM_SERVE_MAX_STREAMS_PER_KEY`` open streams; 1001 (going away)
  when the server shuts down (a step being applied finishes first).
  The close reason is the problem ``code``.

Authentication takes the ``Authorization: Bearer <key>`` header, or, for browsers that
cannot set headers, the subprotocol ``bearer.<key>`` (echoed back on accept) or the
``api_key`` query parameter. The handshake is always accepted so that browsers see the
close code; an unauthenticated socket is closed at once with 4401.

The session is checked while a socket is idle, at its expiry time and every
``IDLE_CHECK_SECONDS``, so a deleted or expired session closes an idle socket without
waiting for the next frame. Disconnects leave the session consistent: the session
manager applies a step atomically (its store write is shielded from cancellation).
A socket that goes away does not delete its session; clients may reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.errors import (
    InvalidInput,
    MalformedRequest,
    ServeError,
    SessionGone,
    SessionNotFound,
    TooManyStreams,
    Unauthorized,
)
from service.http.deps import parse_json
from service.http.problems import problem_of
from service.http.state import AppState
from service.http.v1.schemas import validate_step
from service.http.v1.session_codec import (
    group_parser,
    step_distributions,
    step_offset,
    step_outputs,
    step_parser,
    step_response,
)

log = logging.getLogger(__name__)

router = APIRouter()

CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_GONE = 4410
CLOSE_INTERNAL = 1011
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013

MAX_WAITING_FRAMES = 64
"""Frames read ahead of the ones being applied. The socket is not read further while this
many, or ``LSTM_SERVE_MAX_BODY_BYTES`` worth, are waiting (TCP pushes back on the client),
so a socket never holds more than about twice the body limit in frames."""

IDLE_CHECK_SECONDS = 2.0
"""Longest an idle socket goes without checking that its session still exists."""

_EXPIRY_SLACK_SECONDS = 0.05
_SUBPROTOCOL_PREFIX = "bearer."


def _credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The ``Authorization`` value to check, and the subprotocol to echo on accept."""
    header = websocket.headers.get("authorization")
    offered = websocket.scope.get("subprotocols") or []
    chosen = next((p for p in offered if p.startswith(_SUBPROTOCOL_PREFIX)), None)
    if header:
        return header, chosen
    if chosen is not None:
        return "Bearer " + chosen[len(_SUBPROTOCOL_PREFIX) :], chosen
    key = websocket.query_params.get("api_key")
    if key:
        return "Bearer " + key, None
    return None, None


def _close_code(exc: ServeError) -> int | None:
    if isinstance(exc, SessionGone):
        return CLOSE_GONE
    if isinstance(exc, SessionNotFound):
        return CLOSE_NOT_FOUND
    if isinstance(exc, Unauthorized):
        return CLOSE_UNAUTHORIZED
    return None


class _Stream:
    """One open socket on one session."""

    def __init__(self, websocket: WebSocket, core: AppState, owner: str, session_id: str):
        self.ws = websocket
        self.core = core
        self.owner = owner
        self.session_id = session_id
        self.closed = False
        self.send_lock = asyncio.Lock()

    async def close(self, code: int, reason: str) -> None:
        async with self.send_lock:
            if self.closed:
                return
            self.closed = True
            if self.ws.application_state != WebSocketState.DISCONNECTED:
                with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                    await self.ws.close(code, reason[:120])

    async def send(self, payload: bytes) -> bool:
        async with self.send_lock:
            if self.closed:
                return False
            await self.ws.send({"type": "websocket.send", "text": payload.decode()})
            return True

    async def watch(self) -> None:
        """Close the socket when its session disappears, even while no frames arrive."""
        sessions = self.core.sessions
        while not self.closed:
            try:
                rec = await sessions.get(self.owner, self.session_id)
            except ServeError as exc:
                code = _close_code(exc)
                if code is not None:
                    await self.close(code, exc.code)
                    return
                delay = IDLE_CHECK_SECONDS
            else:
                until_expiry = rec.expires_at - sessions.clock() + _EXPIRY_SLACK_SECONDS
                delay = max(_EXPIRY_SLACK_SECONDS, min(IDLE_CHECK_SECONDS, until_expiry))
            await asyncio.sleep(delay)

    def _parse(self, raw: bytes) -> dict[str, Any] | ServeError:
        """A frame through the gate (its size, a rate-limit token) and the step body's
        schema: the validated body, or the error its reply is."""
        try:
            self.core.gate.admit_frame(self.owner, len(raw))
            body = parse_json(raw)
            if not isinstance(body, dict):
                raise MalformedRequest("a frame must be a JSON object (a step body)")
            return validate_step(body)
        except ServeError as exc:
            return exc

    async def handle(self, frames: list[bytes]) -> bool:
        """Apply frames in order and answer each; False once the socket was closed.

        Consecutive plain frames (only ``inputs``, or only ``text``: no ``offset``) that
        were already waiting are applied as one step of all their steps, which is exactly
        equal to applying them one by one (a recurrent step is the same computation either
        way), and each frame still gets its own reply with its own outputs and count.
        """
        limit = self.core.settings.max_steps_per_request
        parsed = [self._parse(raw) for raw in frames]
        at = 0
        while at < len(parsed):
            body = parsed[at]
            if isinstance(body, ServeError):
                at += 1
                if not await self._answer_error(body):
                    return False
                continue
            group = [body]
            plain = _groupable(body)
            if plain is not None:
                kind, total = plain
                while at + len(group) < len(parsed):
                    nxt = parsed[at + len(group)]
                    if isinstance(nxt, ServeError):
                        break
                    more = _groupable(nxt)
                    if more is None or more[0] != kind or total + more[1] > limit:
                        break
                    group.append(nxt)
                    total += more[1]
            at += len(group)
            if len(group) == 1:
                ok = await self._step(body)
            else:
                ok = await self._step_group(kind, group)
            if not ok:
                return False
        return True

    async def _answer_error(self, exc: ServeError) -> bool:
        code = _close_code(exc)
        if code is not None:
            await self.close(code, exc.code)
            return False
        return await self.send(orjson.dumps({"error": problem_of(exc)}))

    async def _step(self, body: dict[str, Any]) -> bool:
        settings = self.core.settings
        try:
            done = await self.core.sessions.advance(
                self.owner,
                self.session_id,
                step_parser(body, settings.max_steps_per_request),
                offset=step_offset(body),
            )
        except ServeError as exc:
            return await self._answer_error(exc)
        return await self.send(step_response(done, settings.top_k_default))

    async def _step_group(self, kind: str, bodies: list[dict[str, Any]]) -> bool:
        sizes = [len(b[kind]) for b in bodies]
        settings = self.core.settings
        try:
            done = await self.core.sessions.advance(
                self.owner,
                self.session_id,
                group_parser(bodies, settings.max_steps_per_request),
                keep_last=sizes[-1],
            )
        except InvalidInput:
            # some frame is invalid: apply them one by one, so only that frame fails
            for body in bodies:
                if not await self._step(body):
                    return False
            return True
        except ServeError as exc:  # nothing was applied: every frame gets the error
            for _ in bodies:
                if not await self._answer_error(exc):
                    return False
            return True
        outputs = step_outputs(done, settings.top_k_default)
        views = step_distributions(done)
        steps = done.steps_before
        start = 0
        for n in sizes:
            steps += n
            reply = {"id": self.session_id, "steps": steps, "outputs": outputs[start : start + n]}
            if views is not None:
                reply["distribution"] = views[start : start + n]
            start += n
            if not await self.send(orjson.dumps(reply)):
                return False
        return True


def _groupable(body: dict[str, Any]) -> tuple[str, int] | None:
    """``(kind, steps)`` for a frame that may share a step with its neighbours, else None."""
    if len(body) != 1:
        return None
    if "text" in body:
        text = body["text"]
        return ("text", len(text)) if isinstance(text, str) and text else None
    inputs = body.get("inputs")
    if (
        isinstance(inputs, list)
        and inputs
        and isinstance(inputs[0], list)
        and not (inputs[0] and isinstance(inputs[0][0], list))  # a batch is refused alone
    ):
        return "inputs", len(inputs)
    return None


@router.websocket("/v1/sessions/{session_id}/stream")
async def stream_session(websocket: WebSocket, session_id: str) -> None:
    core: AppState = websocket.app.state.core
    authorization, subprotocol = _credentials(websocket)
    await websocket.accept(subprotocol=subprotocol)
    try:
        owner = core.gate.admit(authorization)
        await core.sessions.get(owner, session_id)
    except ServeError as exc:
        await websocket.close(_close_code(exc) or CLOSE_TRY_AGAIN, exc.code)
        return
    if core.draining:
        await websocket.close(CLOSE_GOING_AWAY, "server_shutting_down")
        return
    try:
        with core.gate.stream(owner):
            await _serve(websocket, core, owner, session_id)
    except TooManyStreams as exc:
        await websocket.close(CLOSE_TRY_AGAIN, exc.code)


async def _serve(websocket: WebSocket, core: AppState, owner: str, session_id: str) -> None:
    """Read, apply and answer frames until the socket or the session ends."""
    stream = _Stream(websocket, core, owner, session_id)
    core.streams.add(stream)
    watcher = asyncio.create_task(stream.watch())
    inbox: deque[bytes] = deque()
    waiting_bytes = 0
    ready = asyncio.Event()
    room = asyncio.Event()
    ended = False
    byte_limit = core.settings.max_body_bytes

    async def read() -> None:
        """Frames off the socket into ``inbox``, at most ``MAX_WAITING_FRAMES`` ahead."""
        nonlocal ended, waiting_bytes
        try:
            while True:
                message = await websocket.receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    return
                if kind != "websocket.receive":
                    continue
                text = message.get("text")
                raw = text.encode() if text is not None else message.get("bytes") or b""
                inbox.append(raw)
                waiting_bytes += len(raw)
                ready.set()
                if len(inbox) >= MAX_WAITING_FRAMES or waiting_bytes >= byte_limit:
                    room.clear()
                    await room.wait()
        except (WebSocketDisconnect, RuntimeError):  # the socket is gone or closed by us
            return
        except Exception:
            log.exception("websocket stream on session %s: reading failed", session_id)
        finally:
            ended = True
            ready.set()

    reader = asyncio.create_task(read())
    started = time.perf_counter()
    frames = 0
    try:
        while True:
            if not inbox:
                if ended:
                    stream.closed = True
                    break
                ready.clear()
                await ready.wait()
                continue
            batch = list(inbox)
            inbox.clear()
            waiting_bytes = 0
            room.set()
            frames += len(batch)
            if not await stream.handle(batch):
                break
    except WebSocketDisconnect:
        stream.closed = True
    except Exception:
        log.exception("websocket stream on session %s failed", session_id)
        await stream.close(CLOSE_INTERNAL, "internal_error")
    finally:
        core.streams.discard(stream)
        for task in (reader, watcher):
            task.cancel()
        for task in (reader, watcher):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.debug(
            "websocket stream closed",
            extra={
                "session_id": session_id,
                "frames": frames,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
