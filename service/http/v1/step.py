"""``POST /v1/sessions/{id}/step`` answered ahead of FastAPI.

The session step is the hot path. Starlette's middleware stack, FastAPI's route matching,
dependency solving and exception middleware cost several times what the step itself does,
so ``ServeApp`` (the FastAPI subclass ``create_app`` builds) hands exactly this route to
``FastStep`` before any of that runs. It uses the same pieces the FastAPI route uses: the
same authentication and rate limit, body limit and JSON parsing (``service.http.deps``),
the same session manager call, the same problem details (``service.http.problems``) and
the same request context (``service.http.context``). The FastAPI route stays registered, so
the OpenAPI document and ``/docs`` describe it; requests never reach it.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Protocol

import orjson
from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from service.errors import ServeError
from service.http.context import RequestContext
from service.http.deps import authenticate, check_body_size, parse_json_object, receive_body
from service.http.problems import (
    CLIENT_DISCONNECTED,
    PROBLEM_JSON,
    error_headers,
    problem_body,
    problem_of,
    status_of,
)
from service.http.protocol import DirectHandler
from service.http.state import AppState

log = logging.getLogger(__name__)

ROUTE = "/v1/sessions/{session_id}/step"
_PREFIX = "/v1/sessions/"
_SUFFIX = "/step"
_JSON = [(b"content-type", b"application/json")]
_PROBLEM = [(b"content-type", PROBLEM_JSON.encode())]
_INTERNAL = orjson.dumps(problem_body(500, "Internal error", "internal error", "internal_error"))


def step_session_id(scope: Scope) -> str | None:
    """The session id when ``scope`` is ``POST /v1/sessions/{id}/step``, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
        return None
    session_id = path[len(_PREFIX) : -len(_SUFFIX)]
    if not session_id or "/" in session_id:
        return None
    return session_id


class Exchange(Protocol):
    """One step request's body in and response out: ``DirectExchange`` on the service's
    own HTTP protocol, ``AsgiExchange`` under any other server."""

    def complete_body(self) -> bytes | None: ...

    async def receive(self) -> Message: ...

    async def respond(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None: ...


class AsgiExchange:
    """``Exchange`` over ASGI ``receive`` and ``send``."""

    __slots__ = ("_receive", "_send")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send

    async def receive(self) -> Message:
        return await self._receive()

    def complete_body(self) -> None:
        return None  # ASGI gives the body only through receive

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


class FastStep:
    def __init__(self, context: RequestContext) -> None:
        self.context = context

    async def __call__(
        self, core: AppState, session_id: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The step as an ASGI app (a pipelined request, or a server without direct routes)."""
        await self.serve(core, session_id, scope, AsgiExchange(receive, send))

    async def serve(
        self, core: AppState, session_id: str, scope: Scope, exchange: Exchange
    ) -> None:
        """Answer one step. The direct route calls this as ``DirectHandler`` (bound to the
        app state and the session id), so no coroutine stands between it and the protocol."""
        started = time.perf_counter()
        authorization: bytes | None = None
        content_length: bytes | None = None
        given_id: bytes | None = None
        for name, value in scope["headers"]:  # one pass for everything the step reads
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                content_length = value
            elif name == b"x-request-id" and given_id is None:
                given_id = value
        context = self.context
        request_id = context.request_id_of(given_id)
        status = 500
        try:
            status, headers, payload = await self._answer(
                core, session_id, scope, exchange, authorization, content_length
            )
            headers = [
                *headers,
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", request_id.encode("latin-1")),
            ]
            await exchange.respond(status, headers, payload)
        finally:
            context.done(scope, ROUTE, status, started, request_id)

    @staticmethod
    async def _answer(
        core: AppState,
        session_id: str,
        scope: Scope,
        exchange: Exchange,
        authorization: bytes | None,
        content_length: bytes | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            owner = authenticate(
                core.api_keys, None if authorization is None else authorization.decode("latin-1")
            )
            core.rate_limiter.check(owner)
            limit = core.settings.max_body_bytes
            raw = exchange.complete_body()
            if raw is None:
                declared = None if content_length is None else content_length.decode("latin-1")
                raw = await receive_body(exchange.receive, declared, limit)
            else:
                check_body_size(len(raw), limit)
            result = await core.sessions.step(owner, session_id, parse_json_object(raw))
            return 200, _JSON, result.raw
        except ServeError as exc:
            headers = _PROBLEM + [
                (k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()
            ]
            return status_of(exc), headers, orjson.dumps(problem_of(exc))
        except ClientDisconnect:
            return 400, _PROBLEM, orjson.dumps(CLIENT_DISCONNECTED)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            return 500, _PROBLEM, _INTERNAL


class ServeApp(FastAPI):
    """FastAPI with the session step answered by ``FastStep`` before Starlette's stack.

    Under ``ServeHttpProtocol`` the step does not even enter ASGI: the protocol asks
    ``direct_handler`` and gives the request to ``FastStep.serve`` itself.
    """

    fast_step: FastStep | None = None

    def _step_route(self, scope: Scope) -> tuple[FastStep, AppState, str] | None:
        """``FastStep``, the app state and the session id when ``scope`` is the step."""
        fast = self.fast_step
        if fast is None:
            return None
        session_id = step_session_id(scope)
        if session_id is None:
            return None
        core: AppState | None = getattr(self.state, "core", None)
        if core is None:
            return None
        scope["app"] = self
        return fast, core, session_id

    def direct_handler(self, scope: Scope) -> DirectHandler | None:
        route = self._step_route(scope)
        if route is None:
            return None
        fast, core, session_id = route
        return partial(fast.serve, core, session_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._step_route(scope)
        if route is not None:
            fast, core, session_id = route
            await fast(core, session_id, scope, receive, send)
            return
        await super().__call__(scope, receive, send)
