"""Running the app under Granian, with limits on what a connection may claim and a drain
before it stops.

Granian (a Rust HTTP server, used through its published embedding API) serves the ASGI app
on this process's event loop. It was chosen by measurement (docs/performance.md) and for
the limits it enforces before a request reaches Python:

- a request head larger than ``LSTM_SERVE_MAX_HEADER_BYTES`` answers 431 and the connection
  closes, without the head being buffered whole;
- a head not complete within ``LSTM_SERVE_HEADER_TIMEOUT_SECONDS`` (on a new connection
  and between requests on a kept-alive one) closes the connection;
- at most ``LSTM_SERVE_MAX_CONNECTIONS`` connections are served at once; more wait in the
  listen backlog, unread, until one closes.

HTTP/1.1 only: HTTP/2 would have its own, larger header limit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from typing import Any

import uvloop
from fastapi import FastAPI
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server.embed import Server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import redaction
from service.grpc.server import GrpcDoor
from service.http.state import AppState
from service.settings import Settings

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 10_000
"""Net allocations between young collections in a serving process (CPython's default: 700)."""

LISTEN_BACKLOG = 2048
"""Connections the kernel queues for the server beyond those it serves."""

_GRANIAN_LOGGING: dict[str, Any] = {
    # Granian's records go to the root logger's handlers (JSON, secrets redacted), not
    # to a console handler of its own.
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {},
    "handlers": {},
    "loggers": {
        "_granian": {"handlers": [], "propagate": True},
        "granian.access": {"handlers": [], "propagate": True},
    },
}


def tune_gc() -> None:
    """What startup built (the app, models, libraries) lives as long as the process.
    Frozen, the cyclic collector stops walking it in every full collection, which put a
    step's p99 latency at 60-75 ms under load (19-23 ms frozen). Under load, a burst of
    answers allocates more than 700 objects before any is freed, so the default threshold
    ran a young collection every ~40 requests, freeing nothing (requests make no cyclic
    garbage)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class ServedApp:
    """The app as the server runs it (pure ASGI): it counts the HTTP requests in flight,
    tunes the collector once the lifespan startup is complete, and holds the lifespan
    shutdown until the requests in flight have finished (at most ``graceful_timeout``).
    With a gRPC door (``service.grpc.server``) it starts the door once the core is built
    and, at shutdown, waits for the door's calls in flight too."""

    def __init__(self, app: ASGIApp, graceful_timeout: float, grpc: GrpcDoor | None = None) -> None:
        self.app = app
        self.graceful_timeout = graceful_timeout
        self.grpc = grpc
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self.in_flight += 1
            self._idle.clear()
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()
        elif kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
        else:
            await self.app(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.drained()
                if self.grpc is not None:
                    await self.grpc.stopped()
            return message

        return lifespan_receive

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete" and self.grpc is not None:
                await self.grpc.start()
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                tune_gc()

        return lifespan_send

    async def drained(self) -> None:
        """Wait until no HTTP request is in flight, or the graceful timeout has passed."""
        try:
            await asyncio.wait_for(self._idle.wait(), self.graceful_timeout)
        except TimeoutError:
            log.warning("graceful timeout: %d requests still in flight at shutdown", self.in_flight)


def server_for(app: ASGIApp, settings: Settings, host: str, port: int) -> Server:
    """Granian's embedded server for ``app``, with the limits of ``settings``."""
    return Server(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        websockets=True,
        backlog=LISTEN_BACKLOG,
        backpressure=settings.max_connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=round(settings.header_timeout_seconds * 1000),
            keep_alive=True,
            max_buffer_size=settings.max_header_bytes,
        ),
        log_dictconfig=_GRANIAN_LOGGING,
        log_access=False,  # the service writes its own access log, without query strings
    )


async def run(
    app: FastAPI, settings: Settings, server: Server, grpc: GrpcDoor | None = None
) -> int | None:
    """Serve until SIGTERM or SIGINT, then drain and stop; the signal that stopped it.

    On the signal: readiness turns 503 and WebSocket streams close with 1001 (going
    away); then the server stops accepting, the requests in flight finish (bounded by the
    graceful timeout) and the lifespan shutdown closes the runner and the store. A step
    being applied on a closing stream finishes first: the session is never left
    half-stepped."""
    loop = asyncio.get_running_loop()
    stopped_by: list[int] = []
    draining: list[asyncio.Task[None]] = []

    async def drain_and_stop() -> None:
        core: AppState | None = getattr(app.state, "core", None)
        if core is not None:
            core.draining = True
            await core.close_streams(1001, "server_shutting_down")
        if grpc is not None:
            grpc.begin_stop()
        server.stop()  # type: ignore[no-untyped-call]

    def on_signal(signum: int) -> None:
        if not stopped_by:
            stopped_by.append(signum)
            draining.append(loop.create_task(drain_and_stop()))

    if grpc is not None:
        grpc.bind()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await server.serve()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return stopped_by[0] if stopped_by else None


def serve(app: FastAPI, host: str, port: int, graceful_timeout: int) -> None:
    settings: Settings = app.state.settings
    redaction.install()
    grpc = None
    if settings.grpc_port:
        grpc = GrpcDoor(settings, host, graceful_timeout, lambda: app.state.core)
    server = server_for(ServedApp(app, graceful_timeout, grpc), settings, host, port)
    signum = uvloop.run(run(app, settings, server, grpc))
    if signum == signal.SIGTERM:
        # As a process stopped by SIGTERM does (status 143), now that the drain is done.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    # Ctrl-C (SIGINT) ends quietly with status 0 after the same graceful shutdown.
