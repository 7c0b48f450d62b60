"""What the sync and async clients share: bodies, retry policy, response and SSE parsing."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from service.client.errors import ApiError, TransportError, error_from_problem

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Statuses worth another try; a step carries its offset, so a retry applies it at most once."""
SAFE_RETRY_STATUSES = frozenset({429, 503})
"""For requests that are not idempotent (create, fork): the server refused before acting."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transport errors and retryable statuses."""

    attempts: int = 4
    """Tries in all, the first included; 1 disables retries."""
    backoff: float = 0.05
    """First delay in seconds; doubles each try, with jitter."""
    max_backoff: float = 2.0
    """Longest delay, also the cap on a server's ``Retry-After``."""

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        base: float = min(self.max_backoff, self.backoff * 2.0**attempt)
        wait = base * (0.5 + random.random() / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


@dataclass(frozen=True)
class StepResult:
    """One step response: the session's step count after it and one output per step."""

    steps: int
    outputs: list[Any]
    replayed: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def output(self) -> Any:
        """The last step's output."""
        return self.outputs[-1]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> StepResult:
        return cls(
            steps=int(body["steps"]),
            outputs=list(body["outputs"]),
            replayed=bool(body.get("replayed", False)),
            raw=dict(body),
        )


def dumps(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def as_steps(x: Any) -> Any:
    """``[f1, f2, f3]`` or a 1-D array is one step; wrap it as a sequence of one."""
    if getattr(x, "ndim", None) == 1:
        return [x]
    if isinstance(x, list | tuple) and x and isinstance(x[0], int | float):
        return [list(x)]
    return x


def step_body(x: Any, text: str | None, offset: int | None) -> dict[str, Any]:
    if (x is None) == (text is None):
        raise ValueError("give either inputs or text")
    if isinstance(x, str):
        x, text = None, x
    body: dict[str, Any] = {"text": text} if text is not None else {"inputs": as_steps(x)}
    if offset is not None:
        body["offset"] = offset
    return body


def steps_of(body: Mapping[str, Any]) -> int:
    """How many steps a step body adds (one per character of text)."""
    if "text" in body:
        return len(body["text"])
    return len(body["inputs"])


def session_body(
    model: str,
    version: int | None,
    ttl_seconds: int | None,
    state: Mapping[str, Any] | None,
    steps: int | None,
) -> dict[str, Any]:
    """The body of ``POST /v1/sessions``; options left as None are not sent."""
    body: dict[str, Any] = {"model": model}
    for key, value in (
        ("version", version),
        ("ttl_seconds", ttl_seconds),
        ("state", state),
        ("steps", steps),
    ):
        if value is not None:
            body[key] = value
    return body


def predict_body(
    inputs: Any, text: str | list[str] | None, return_: str, version: int | None
) -> dict[str, Any]:
    """A predict body; a string (or a list of strings) given as ``inputs`` is sent as text."""
    if text is None and (
        isinstance(inputs, str)
        or (isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs))
    ):
        inputs, text = None, inputs
    if (inputs is None) == (text is None):
        raise ValueError("give either inputs or text")
    body: dict[str, Any] = {"return": return_}
    body.update({"text": text} if text is not None else {"inputs": inputs})
    if version is not None:
        body["version"] = version
    return body


def generate_body(
    context: Any,
    steps: int,
    stream: bool,
    temperature: float | None,
    top_k: int | None,
    seed: int | None,
    version: int | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"steps": steps, "stream": stream}
    if context is not None:
        body["context"] = context if isinstance(context, str) else as_steps(context)
    for key, value in (
        ("temperature", temperature),
        ("top_k", top_k),
        ("seed", seed),
        ("version", version),
    ):
        if value is not None:
            body[key] = value
    body.update(extra or {})
    return body


def retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def retryable(status: int, idempotent: bool) -> bool:
    return status in (RETRY_STATUSES if idempotent else SAFE_RETRY_STATUSES)


def retryable_transport(exc: httpx.TransportError, idempotent: bool) -> bool:
    """Whether a transport error may be retried: for non-idempotent calls only if unsent."""
    if idempotent:
        return True
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def api_error(resp: httpx.Response, content: bytes) -> ApiError:
    try:
        problem = orjson.loads(content)
    except orjson.JSONDecodeError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"status": resp.status_code, "detail": content.decode(errors="replace")[:500]}
    elif "error" in problem and "code" not in problem:  # a /v2-style body
        problem = {"status": resp.status_code, "detail": str(problem["error"])}
    return error_from_problem(resp.status_code, problem, retry_after(resp))


def transport_error(exc: Exception) -> TransportError:
    return TransportError(f"{type(exc).__name__}: {exc}")


def ws_url(base: str, path: str) -> str:
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + path
    return "ws://" + base.removeprefix("http://") + path


class SSEParser:
    """Server-sent events, one line at a time (``event:`` and ``data:`` fields only)."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, Any] | None:
        """The ``(event, parsed JSON data)`` completed by this line, if any."""
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = "message"
                return None
            event, data = self._event, "\n".join(self._data)
            self._event, self._data = "message", []
            return event, orjson.loads(data)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def event_error(data: Any) -> ApiError:
    """The error an ``error`` event carries (problem details)."""
    problem = data if isinstance(data, dict) else {"detail": str(data)}
    return error_from_problem(int(problem.get("status", 500)), problem)
