"""The client's exceptions: one per problem status, each carrying the server's ``code``.

    ClientError                 base: ``status`` (0 when no answer), ``code``, ``problem``
    ├── TransportError          no usable answer after the retries (connection, timeout, ...)
    └── ApiError                the server answered with problem details
        ├── BadRequest          400 malformed body
        ├── Unauthorized        401 missing or wrong API key (WebSocket close 4401)
        ├── NotFound            404 unknown model, version or session (WebSocket close 4404)
        ├── OffsetConflict      409 ``steps`` holds the session's current step count
        ├── SessionGone         410 expired or evicted; ``reason`` (WebSocket close 4410)
        ├── RequestTooLarge     413
        ├── InvalidInput        422 well-formed but invalid
        ├── TooManyRequests     429 session capacity reached; ``retry_after``
        └── Unavailable         503 not ready or session store unreachable; ``retry_after``

Branch on ``code`` (stable), never on the message.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    status: int = 0
    code: str = "client_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.problem: dict[str, Any] = problem or {}
        self.retry_after = retry_after

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail", self.args[0] if self.args else ""))


class TransportError(ClientError):
    code = "transport_error"


class ApiError(ClientError):
    code = "error"


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class OffsetConflict(ApiError):
    status = 409

    @property
    def steps(self) -> int | None:
        steps = self.problem.get("steps")
        return steps if isinstance(steps, int) else None


class SessionGone(ApiError):
    status = 410

    @property
    def reason(self) -> str:
        return self.code.removeprefix("session_")


class RequestTooLarge(ApiError):
    status = 413


class InvalidInput(ApiError):
    status = 422


class TooManyRequests(ApiError):
    status = 429


class Unavailable(ApiError):
    status = 503


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        NotFound,
        OffsetConflict,
        SessionGone,
        RequestTooLarge,
        InvalidInput,
        TooManyRequests,
        Unavailable,
    )
}

_BY_CLOSE_CODE = {4401: 401, 4404: 404, 4410: 410}


def error_from_problem(
    status: int, problem: dict[str, Any], retry_after: float | None = None
) -> ApiError:
    cls = _BY_STATUS.get(status, ApiError)
    code = problem.get("code")
    detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
    return cls(
        f"{status} {code or 'error'}: {detail}",
        status=status,
        code=code if isinstance(code, str) else None,
        problem=problem,
        retry_after=retry_after,
    )


def error_from_close(code: int, reason: str) -> ClientError:
    """The error for a WebSocket closed by the server with an application close code."""
    status = _BY_CLOSE_CODE.get(code)
    if status is None:
        return TransportError(f"stream closed ({code} {reason})".strip())
    problem = {"status": status, "code": reason or None, "detail": f"stream closed with {code}"}
    return error_from_problem(status, problem)
