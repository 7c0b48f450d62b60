"""Per-key request rate limiting: one token bucket per key, in this process."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from service.errors import RateLimited


class RateLimiter:
    """``rate`` requests per second sustained, ``burst`` at once; per replica."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise ``RateLimited`` with the wait in Retry-After."""
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise RateLimited(
                f"rate limit of {self.rate:g} requests/s exceeded",
                retry_after=max(1, math.ceil(wait)),
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full = [
            k
            for k, (t, last) in self._buckets.items()
            if t + (now - last) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
