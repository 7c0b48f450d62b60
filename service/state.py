"""The objects one app instance is built from, kept together on ``app.state.core``."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.metrics import Metrics
from service.rate_limit import RateLimiter
from service.registry import ModelRegistry
from service.runner import Runner
from service.session_store import SessionStore
from service.sessions import SessionManager
from service.settings import Settings


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
