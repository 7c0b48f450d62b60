"""Redis and socket errors as the core's errors, for ``service.sessions.redis_store``.

An outage (refused connection, timeout, a Redis that is loading, out of memory, or
read-only after a failover) is ``StoreUnavailable`` with a retry hint. An error reply about
a session's own keys (``WRONGTYPE``) is ``SessionCorrupt``: that session can only be
deleted. Any other error reply is ``StoreUnavailable`` without a retry hint. Details
(address, command, key) are logged, never put in the error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from service.errors import ServeError, StoreUnavailable
from service.sessions.redis_codec import corrupt

log = logging.getLogger("service.sessions.redis_store")

_OUTAGE_REPLIES = (
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "NOREPLICAS",
    "OOM",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
)
"""Error replies of a Redis that is (for now) not serving writes: retrying can help."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis is unreachable or not serving (retrying can help), as
    opposed to an error reply about what it was asked (``WRONGTYPE``, a script error)."""
    if isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | OSError
        | ReadOnlyError
        | OutOfMemoryError
        | TryAgainError
        | ClusterDownError
        | RedisClusterException,  # no node of a Redis Cluster reachable, a slot unserved
    ):
        return True
    if isinstance(exc, ResponseError):
        reply = str(exc).lstrip()
        return reply.startswith(_OUTAGE_REPLIES)
    return False


def unavailable(op: str, exc: BaseException) -> StoreUnavailable:
    log.warning("session store %s failed: %s", op, exc)
    return StoreUnavailable("the session store is not answering; retry later")


def core_error(op: str, exc: BaseException, session_id: str | None = None) -> ServeError:
    """The core's error for a Redis or socket error (see the module's docstring)."""
    if is_outage(exc):
        return unavailable(op, exc)
    if session_id is not None:
        log.error("session store %s of session %s failed: %s", op, session_id, exc)
        return corrupt(session_id, None)
    log.error("session store %s failed: %s", op, exc)
    return StoreUnavailable("the session store failed; the server's log says why", retry_after=None)


@contextmanager
def translated(op: str, session_id: str | None = None) -> Iterator[None]:
    """Raise Redis and socket errors inside the block as the core's errors."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        raise core_error(op, exc, session_id) from exc


def no_maint_notifications() -> dict[str, Any]:
    """Turn off redis-py's maintenance notifications (redis-py 7+, default ``"auto"``).

    While they are on, the pool skips its check for connections the server closed, so
    the first request after a Redis restart would fail on a dead pooled connection.
    """
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # older redis-py: nothing to turn off
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def text(raw: object) -> str | None:
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None
    return None
