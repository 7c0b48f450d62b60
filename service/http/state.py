"""The objects one app instance is built from, kept together on ``app.state.core``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from service.http.gate import Gate
from service.http.rate_limit import RateLimiter
from service.inference.runner import Runner
from service.metrics import Metrics
from service.models.registry import ModelRegistry
from service.sessions.manager import SessionManager
from service.sessions.store import SessionStore
from service.settings import Settings


class OpenStream(Protocol):
    """An open WebSocket stream, as the app needs to see it: its owner, and how to close it."""

    owner: str

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry
    store: SessionStore
    runner: Runner
    sessions: SessionManager
    metrics: Metrics
    rate_limiter: RateLimiter
    api_keys: list[bytes] = field(default_factory=list)
    draining: bool = False
    streams: set[OpenStream] = field(default_factory=set)
    """Open WebSocket streams, closed with 1001 when the server shuts down."""
    gate: Gate = field(init=False)
    """Every rule a request or frame must pass (``service.http.gate``), for every door."""

    def __post_init__(self) -> None:
        s = self.settings
        self.gate = Gate(
            self.api_keys,
            self.rate_limiter,
            s.max_body_bytes,
            s.max_streams_per_key,
            s.max_streams,
        )

    def streams_of(self, owner: str) -> int:
        return sum(1 for s in self.streams if s.owner == owner)

    async def close_streams(self, code: int, reason: str) -> None:
        for stream in list(self.streams):
            await stream.close(code, reason)
