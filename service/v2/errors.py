"""Core errors → the Open Inference Protocol's ``{"error": "..."}`` with Triton's status codes.

Triton answers 400 for nearly every inference error (bad tensors, unknown sequence,
invalid parameters), so ``/v2`` folds the core's 422s into 400. Everything else keeps
the status ``service.api.problems`` gives it, including its ``Retry-After`` headers.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

from service.errors import (
    CapacityReached,
    InferenceError,
    InvalidInput,
    ModelNotFound,
    NotReady,
    RequestTooLarge,
    ServeError,
    SessionGone,
    SessionNotFound,
    StoreUnavailable,
    Unauthorized,
)

_STATUS: list[tuple[type[ServeError], int]] = [
    (InvalidInput, 400),
    (InferenceError, 400),
    (SessionNotFound, 400),
    (SessionGone, 400),
    (Unauthorized, 401),
    (ModelNotFound, 404),
    (RequestTooLarge, 413),
    (CapacityReached, 429),
    (StoreUnavailable, 503),
    (NotReady, 503),
]


def v2_status(exc: ServeError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def v2_error(exc: ServeError) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, CapacityReached | StoreUnavailable | NotReady):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="lstm-serve"'
    return error_response(exc.detail, v2_status(exc), headers)
