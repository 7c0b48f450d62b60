"""Per-request context: ``X-Request-ID``, request metrics by route, one access-log line.

``RequestContextMiddleware`` (pure ASGI) wraps every HTTP route of the app, the session
step included. The access log (``service.http.access_log``) records the path without its
query string, so a credential sent as a query parameter never reaches it.
"""

from __future__ import annotations

import itertools
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.access_log import AccessLog
from service.metrics import Metrics


class RequestContext:
    def __init__(self, metrics: Metrics, log_requests: bool, log: AccessLog | None = None) -> None:
        self.metrics = metrics
        self.log_requests = log_requests
        self.access_log = log if log is not None else AccessLog(metrics)
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count()

    def request_id(self, scope: Scope) -> str:
        """The client's ``X-Request-ID`` (up to 128 characters), else a new one: 32 hex
        digits, 64 random bits per process and then a counter (no syscall per request)."""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                return self.request_id_of(value)
        return self.request_id_of(None)

    def request_id_of(self, given: bytes | None) -> str:
        """``request_id`` from the header's value (None: no such header)."""
        if given:
            return given.decode("latin-1")[:128]
        return f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFFFFFFFFFF:016x}"

    def done(self, scope: Scope, route: str, status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        method: str = scope["method"]
        self.metrics.requests.observe(method, route, status, elapsed)
        if self.log_requests:
            self.access_log.write(request_id, method, scope["path"], route, status, elapsed)

    def close(self) -> None:
        """Write the access-log lines still queued and stop its writer."""
        self.access_log.close()


def route_of(scope: Scope) -> str:
    """The matched route's path template (``/v1/sessions/{session_id}``), for metrics and
    the access log; an endpoint without a route object in the scope may name it as
    ``path``."""
    for key in ("route", "endpoint"):  # no getattr on None: a failed lookup costs 0.3 µs
        found = scope.get(key)
        if found is not None:
            path = getattr(found, "path", None)
            if isinstance(path, str) and path:
                return path
    return "unmatched"


class RequestContextMiddleware:
    """Applies ``RequestContext`` to every HTTP request that reaches FastAPI."""

    def __init__(self, app: ASGIApp, context: RequestContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = self.context
        request_id = context.request_id(scope)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            context.done(scope, route_of(scope), status, started, request_id)
