"""``TickBatch``: calls made in one event-loop iteration, sent to a store as one.

When an onnxruntime batch answers, the batcher resolves every request's future in one
callback, so all the steps of that batch resume in the same loop iteration and each saves
its session. A ``TickBatch`` queues those calls and, at the end of the iteration, hands
them to one ``run`` (a Redis pipeline): one round trip per batch instead of one per
session, while each caller still awaits its own outcome.

A caller cancelled while waiting does not cancel its call: the batch completes (or fails)
as a whole, so a write is all or nothing whatever happens to the request that made it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")

Run = Callable[[list[A]], Awaitable[Sequence[R | BaseException]]]
"""Runs a batch: one outcome per argument, in order (a value, or the exception to raise)."""


class TickBatch(Generic[A, R]):
    """Gathers ``submit`` calls until the end of the loop iteration, then runs them in
    chunks of at most ``max_size`` (each chunk one ``run``, all chunks at once)."""

    def __init__(self, run: Run[A, R], max_size: int = 256) -> None:
        self._run = run
        self._max_size = max_size
        self._pending: list[tuple[A, asyncio.Future[R]]] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, arg: A) -> asyncio.Future[R]:
        """Queue one call; await the future for its outcome."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((arg, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        size = self._max_size
        for i in range(0, len(pending), size):
            task = loop.create_task(self._execute(pending[i : i + size]))
            self._running.add(task)  # the loop holds tasks only weakly
            task.add_done_callback(self._running.discard)

    async def _execute(self, calls: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._run([arg for arg, _ in calls])
        except Exception as exc:  # the whole batch failed (an outage): every call fails
            outcomes = [exc] * len(calls)
        for (_, fut), outcome in zip(calls, outcomes, strict=True):
            if fut.done():  # its caller was cancelled; the call itself completed
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    async def drain(self) -> None:
        """Wait for the batches already sent (before closing the connection)."""
        while self._pending or self._running:
            if self._pending:
                await asyncio.sleep(0)
                continue
            await asyncio.gather(*self._running, return_exceptions=True)
