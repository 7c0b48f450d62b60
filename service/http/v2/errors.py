"""Core errors → the Open Inference Protocol's ``{"error": "..."}`` with Triton's status codes.

Triton answers 400 for nearly every inference error (bad tensors, unknown sequence,
invalid parameters), so ``/v2`` folds the core's 422s into 400, except a field the
published schema does not have (``UnknownField``), which is 422 at every door. Everything else keeps
the status ``service.http.problems`` gives it, including its ``Retry-After`` headers.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

from service.errors import (
    InferenceError,
    InvalidInput,
    ServeError,
    SessionGone,
    SessionNotFound,
    UnknownField,
)
from service.http.problems import error_headers, status_of


def v2_status(exc: ServeError) -> int:
    """Triton's status: the core's invalid input, inference and sequence errors are 400;
    an unknown field is 422, as the published schema says."""
    if isinstance(exc, UnknownField):
        return 422
    if isinstance(exc, InvalidInput | InferenceError | SessionNotFound | SessionGone):
        return 400
    return status_of(exc)


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def v2_error(exc: ServeError) -> Response:
    return error_response(exc.detail, v2_status(exc), error_headers(exc))
