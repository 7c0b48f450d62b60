"""Per-session FIFO locks: requests on one session apply one at a time, in arrival order."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class SessionLocks:
    """Per-session FIFO locks that exist only while someone holds or waits for them.

    The lock is handed straight to the next waiter on release, so requests on one session
    apply in arrival order. An uncontended acquire allocates nothing but a dict entry.
    """

    def __init__(self) -> None:
        # held keys → their waiters (None until somebody waits: most steps never contend)
        self._waiters: dict[str, deque[asyncio.Future[None]] | None] = {}

    def __call__(self, key: str) -> HeldLock:
        return HeldLock(self, key)

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


class HeldLock:
    __slots__ = ("_key", "_owner")

    def __init__(self, owner: SessionLocks, key: str) -> None:
        self._owner, self._key = owner, key

    async def __aenter__(self) -> None:
        await self._owner.acquire(self._key)

    async def __aexit__(self, *exc: object) -> None:
        self._owner.release(self._key)
