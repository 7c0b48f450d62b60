"""What a session store keeps per session: ``SessionRecord`` and its ``LastApplied`` request.

Both are protocol-free: state, outputs and inputs are numpy arrays and plain numbers, so
every adapter (``/v1``, the WebSocket stream, ``/v2`` sequences) can answer from them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from service.errors import SessionGone, SessionNotFound

Clock = Callable[[], float]


class LastApplied(NamedTuple):
    """The most recently applied step request, kept so that a retry can be answered again.

    ``outputs`` are that request's raw model outputs (``[n_steps, out]``, model units);
    the adapter that answers a retry encodes them as it encodes any step's outputs.

    A named tuple, not a frozen dataclass: every session step makes one, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__`` (2x slower).
    Compare two with ``same_last_applied`` (``==`` would compare the arrays elementwise).
    """

    offset: int
    n_steps: int
    digest: str
    """``service.models.encoding.inputs_digest`` of the request's inputs."""
    outputs: np.ndarray


def same_last_applied(a: LastApplied | None, b: LastApplied | None) -> bool:
    """Whether ``a`` and ``b`` record the same request with the same outputs."""
    if a is None or b is None:
        return a is b
    return (
        a[:3] == b[:3]
        and a.outputs.shape == b.outputs.shape
        and bool(np.array_equal(a.outputs, b.outputs))
    )


@dataclass(frozen=True)
class SessionRecord:
    id: str
    owner: str
    model: str
    version: int
    steps: int
    created_at: float
    ttl_seconds: int
    expires_at: float
    state: dict[str, np.ndarray]
    last_output: np.ndarray | None = None
    last: LastApplied | None = None
    revision: int = 0
    kind: str = "session"
    """``session`` for /v1 sessions, ``sequence`` for /v2 sequence-extension state."""

    def touched(self, now: float) -> SessionRecord:
        return replace(self, expires_at=now + self.ttl_seconds)

    def advanced(
        self,
        steps: int,
        state: dict[str, np.ndarray],
        last_output: np.ndarray | None,
        last: LastApplied | None,
        now: float,
    ) -> SessionRecord:
        """The record after a step: new state, next revision, expiry renewed from ``now``.

        ``last_output`` is copied when it is a view (a row of a batch's outputs): kept in
        an idle session, a view would keep the whole batch's array alive (in the model
        process's case, the whole reply frame with every row's state). ``last.outputs``
        must own its memory already (the session manager copies it when it is a view).

        Every session step makes one, so it copies the fields' dict and changes five of
        them instead of running the frozen ``__init__`` (which sets 13 fields one by one
        through ``object.__setattr__``: 2.3 against 1.0 µs). The record stays immutable to
        its users; this is the one place that builds it around ``__init__``.
        """
        new = object.__new__(SessionRecord)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields["steps"] = steps
        fields["expires_at"] = now + self.ttl_seconds
        fields["state"] = state
        if last_output is not None and last_output.base is not None:
            last_output = last_output.copy()
        fields["last_output"] = last_output
        fields["last"] = last
        fields["revision"] = self.revision + 1
        return new


def new_session_id() -> str:
    """160 random bits, URL-safe."""
    return secrets.token_urlsafe(20)


def owned(rec: SessionRecord, owner: str, kind: str) -> SessionRecord:
    """``rec`` if it is ``owner``'s session of ``kind``; else it is not found (404)."""
    if rec.owner != owner or rec.kind != kind:
        raise SessionNotFound(f"no session {rec.id!r}")
    return rec


def hide_foreign(exc: SessionGone, owner: str, session_id: str) -> None:
    """Another key's expired, evicted or corrupt session is not found (404) to ``owner``,
    exactly as an id that never existed."""
    if exc.owner is not None and exc.owner != owner:
        raise SessionNotFound(f"no session {session_id!r}") from None
