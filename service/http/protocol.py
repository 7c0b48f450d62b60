"""uvicorn's httptools protocol, writing each response to the socket once.

Stock uvicorn writes a response's head at ``http.response.start`` and its body at
``http.response.body``: two ``write`` syscalls and, on a keep-alive connection, two TCP
segments for one small JSON reply. ``CoalescingTransport`` holds the writes made during
one event-loop iteration and hands them to the real transport together at the end of it,
so a step's reply (head and body are sent in the same iteration) leaves in one segment,
and so do WebSocket replies answered in the same iteration. Nothing waits longer than the
iteration it was written in.

``ServeHttpProtocol`` adds direct routes: a request the app claims (``direct_handler``, the
session step) is answered by a coroutine that reads the body through ``DirectExchange``
and writes its response in one piece, without uvicorn's ASGI request cycle (an event, two
messages, header checks by regular expression, and the app's ASGI entry). Everything else,
and a request pipelined behind one still being answered, goes through ASGI as before.
It also keeps one keep-alive timer per connection instead of one per response.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

DIRECT_WRITE_BYTES = 64 * 1024
"""Writes this large go out at once (after anything held), without being joined."""


class CoalescingTransport(asyncio.Transport):
    """Delegates to ``transport``; ``write`` is deferred to the end of the loop iteration."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if len(data) >= DIRECT_WRITE_BYTES:  # big: no point holding it, nor copying it
            self._flush()
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def write_whole(self, data: bytes) -> None:
        """Write a whole response at once, behind anything held (nothing to join it with:
        this saves the loop callback that a held write costs)."""
        if self._pending:
            self._pending.append(data)
        elif not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` over a ``CoalescingTransport`` (WebSocket upgrades inherit it)."""

    transport: CoalescingTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it
        super().connection_made(CoalescingTransport(cast(asyncio.Transport, transport), self.loop))


class DirectExchange:
    """One request answered by a direct route: its body in, one response out.

    It stands where uvicorn keeps a ``RequestResponseCycle`` (``protocol.cycle``) and has
    the attributes the protocol's parser callbacks and shutdown use: ``body``,
    ``more_body``, ``message_event``, ``response_complete``, ``disconnected``, ``keep_alive``.
    ``receive`` gives ASGI ``http.request`` / ``http.disconnect`` messages like uvicorn's.
    """

    __slots__ = (
        "_continue",
        "_protocol",
        "_signalled",
        "_waiter",
        "body",
        "disconnected",
        "keep_alive",
        "more_body",
        "response_complete",
    )

    def __init__(self, protocol: ServeHttpProtocol, keep_alive: bool, expect_continue: bool):
        self.body = bytearray()
        self.more_body = True
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self._protocol = protocol
        self._signalled = False
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expect_continue

    @property
    def message_event(self) -> DirectExchange:
        """The protocol calls ``message_event.set()``. A property, not ``self`` kept in an
        attribute: that reference cycle made every exchange garbage for the cyclic
        collector (one per request), and the collections cost ~10% of the loop's time."""
        return self

    def set(self) -> None:
        """Body arrived, the request ended, or the connection was lost."""
        self._signalled = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def complete_body(self) -> bytes | None:
        """The whole body when the request has fully arrived (the common case: a small
        request comes in one read), else None and the caller uses ``receive``. Like a
        ``receive`` that needs no waiting, but without a coroutine and a message dict."""
        if self.more_body or self._continue or self.disconnected or self.response_complete:
            return None
        self._protocol.flow.resume_reading()
        self._signalled = False
        body, self.body = bytes(self.body), bytearray()
        return body

    async def receive(self) -> dict[str, Any]:
        transport = self._protocol.transport
        if self._continue and not transport.is_closing():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._continue = False
        if not self.disconnected and not self.response_complete:
            self._protocol.flow.resume_reading()
            if not self._signalled:
                self._waiter = self._protocol.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            self._signalled = False
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body, self.body = bytes(self.body), bytearray()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """Write the whole response (uvicorn's default headers first) in one write.

        ``headers`` must carry ``content-length``; nothing is written once the client has
        gone, as in uvicorn.
        """
        protocol = self._protocol
        flow: FlowControl = protocol.flow
        if flow.write_paused and not self.disconnected:
            await flow.drain()
        if self.disconnected or self.response_complete:
            return
        parts = [STATUS_LINE[status]]
        for name, value in protocol.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        transport = protocol.transport
        transport.write_whole(b"".join(parts))
        self.response_complete = True
        self.set()
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()


_INTERNAL_ERROR = b"Internal Server Error"
_INTERNAL_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_INTERNAL_ERROR)).encode()),
]

DirectHandler = Callable[[dict[str, Any], DirectExchange], Awaitable[None]]
"""Answers one request from its ASGI-style scope; must call ``exchange.respond`` once."""


class ServeHttpProtocol(CoalescingHttpToolsProtocol):
    """The coalescing protocol with direct routes for an app that offers them.

    The app offers them with ``direct_handler(scope) -> DirectHandler | None``, asked for
    HTTP/1.1 POST requests once the path is known. Only an app uvicorn did not wrap (no
    proxy-header or trace-logging middleware) is asked, so nothing is skipped.
    """

    _idle_since: float | None = None
    """When the connection last fell idle (its response complete, nothing read since)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._direct: Callable[[dict[str, Any]], DirectHandler | None] | None = getattr(
            self.app, "direct_handler", None
        )

    # Keep-alive: uvicorn arms a timer after every response and cancels it when the next
    # request's data arrives (call_later and cancel: ~1.8 µs a request). Here one timer
    # stays armed across requests; when it fires, it closes the connection only if it
    # has been idle for the whole timeout, and otherwise waits for the rest of it.

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # data arrived: busy (the timer stays armed)

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive timer armed only when none is."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            self._idle_since = None
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None:  # busy: its response arms the timer again
            return
        left = idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def on_headers_complete(self) -> None:
        handler = self._direct_route()
        if handler is None:
            super().on_headers_complete()
            return
        scope = cast(dict[str, Any], self.scope)
        exchange = DirectExchange(self, self.parser.should_keep_alive(), self.expect_100_continue)
        self.cycle = cast(Any, exchange)
        task = self.loop.create_task(self._run_direct(handler, scope, exchange))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _direct_route(self) -> DirectHandler | None:
        direct = self._direct
        parser = self.parser
        if (
            direct is None
            or self.root_path
            or self.limit_concurrency is not None
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or not (self.cycle is None or self.cycle.response_complete)  # pipelined: ASGI
        ):
            return None
        parsed = httptools.parse_url(self.url)
        raw_path: bytes = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = cast(dict[str, Any], self.scope)
        scope["method"] = "POST"
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = parsed.query or b""
        return direct(scope)

    async def _run_direct(
        self, handler: DirectHandler, scope: dict[str, Any], exchange: DirectExchange
    ) -> None:
        try:
            await handler(scope, exchange)
        except asyncio.CancelledError:
            if not exchange.response_complete:
                exchange.disconnected = True
                self.transport.close()
            raise
        except Exception:  # the handler answers its own errors: this is a bug
            log.exception("direct route failed: POST %s", scope["path"])
            if not exchange.response_complete:
                exchange.keep_alive = False
                await exchange.respond(500, _INTERNAL_ERROR_HEADERS, _INTERNAL_ERROR)
