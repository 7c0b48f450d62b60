"""The access log: one JSON line per HTTP request, built on the event loop, written by a thread.

A request's line is built once with orjson (no ``logging.LogRecord``, formatter or filter
chain per request) and appended to a bounded queue; a writer thread drains the queue in
bulk and writes each batch with one call, so a slow or blocked log stream never holds the
event loop. The writer wakes every ``FLUSH_SECONDS`` or when ``WAKE_LINES`` lines wait, so
a line reaches the stream within about 50 ms. The queue holds at most ``QUEUE_LINES``
lines: when it is full a line is not queued, and each such line is counted in
``lstm_serve_access_log_dropped_total``, never dropped silently.

A line has, in this order: ``ts`` (Unix seconds), ``level``, ``logger``
(``service.access``), ``msg`` (``request``), ``request_id``, ``method``, ``path``,
``route``, ``status``, ``duration_ms``: the shape of the service's other JSON log lines.
No header or body is logged. The path comes without its query string, and the values a
client chooses (the path, ``X-Request-ID``, an unusual method) pass through
``service.redaction`` as every other log line does.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections import deque
from typing import IO, Any

import orjson

from service.metrics import Metrics
from service.redaction import redact_if_needed

QUEUE_LINES = 65_536
"""Lines waiting for the writer at most (about 200 bytes each); beyond them, lines are
counted as dropped."""

FLUSH_SECONDS = 0.05
"""The writer writes what is queued at least this often..."""
WAKE_LINES = 1024
"""...and as soon as this many lines wait (waking it per line would cost more than the
line itself)."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AccessLog:
    """The queue and its writer thread, started with the first line, stopped by ``close``."""

    def __init__(
        self, metrics: Metrics, stream: IO[Any] | None = None, bound: int = QUEUE_LINES
    ) -> None:
        self._metrics = metrics
        self._stream = stream
        self._bound = bound
        self._queue: deque[bytes] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False

    def write(
        self,
        request_id: str,
        method: str,
        path: str,
        route: str,
        status: int,
        seconds: float,
    ) -> None:
        """Queue one request's line (from the event loop; never blocks)."""
        queue = self._queue
        if len(queue) >= self._bound:
            self._metrics.access_log_dropped.inc()
            return
        queue.append(
            orjson.dumps(
                {
                    "ts": round(time.time(), 3),
                    "level": "info",
                    "logger": "service.access",
                    "msg": "request",
                    "request_id": redact_if_needed(request_id),
                    "method": method if method in _METHODS else redact_if_needed(method),
                    "path": redact_if_needed(path),
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
        )
        if len(queue) == WAKE_LINES:
            self._wake.set()
        elif self._thread is None:
            self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lstm-serve-access-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        queue = self._queue
        wake = self._wake
        while True:
            wake.wait(FLUSH_SECONDS)
            wake.clear()  # before draining: a line queued from now on may set it again
            while queue:
                batch: list[bytes] = []
                while queue and len(batch) < 4096:
                    batch.append(queue.popleft())
                self._emit(b"".join(batch))
            if self._closing:
                return

    def _emit(self, data: bytes) -> None:
        stream: Any = self._stream if self._stream is not None else sys.stderr
        try:
            if isinstance(stream, io.TextIOBase):
                binary = getattr(stream, "buffer", None)
                if binary is None:
                    stream.write(data.decode())
                    stream.flush()
                    return
                stream.flush()  # text written before, then these lines
                stream = binary
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: count, keep serving
            self._metrics.access_log_dropped.inc(data.count(b"\n"))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer (waits up to ``timeout`` seconds)."""
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        self._wake.set()
        thread.join(timeout)
        if not thread.is_alive():  # lines queued while it stopped: written here
            self._wake.clear()
            self._thread = None
            self._closing = False
            while self._queue:
                self._emit(b"".join([self._queue.popleft() for _ in range(len(self._queue))]))
