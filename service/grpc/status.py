"""The one table from the service's typed errors to gRPC status codes.

Triton answers ``INVALID_ARGUMENT`` for the inference errors its HTTP door answers 400
(bad tensors, an unknown sequence, invalid parameters), so the core's invalid input,
inference and sequence errors map there, as ``/v2`` folds them into 400. The rest follow
the HTTP status each error has on ``/v1``: 401 ``UNAUTHENTICATED``, 404 ``NOT_FOUND``,
413 and 429 ``RESOURCE_EXHAUSTED``, 503 ``UNAVAILABLE``.
"""

from __future__ import annotations

import grpc

from service.errors import (
    CapacityReached,
    InferenceError,
    InvalidInput,
    ModelNotFound,
    NotReady,
    OffsetConflict,
    RateLimited,
    RequestTooLarge,
    ServeError,
    SessionGone,
    SessionNotFound,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)

STATUS: list[tuple[type[ServeError], grpc.StatusCode]] = [
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (InferenceError, grpc.StatusCode.INVALID_ARGUMENT),
    (SessionNotFound, grpc.StatusCode.INVALID_ARGUMENT),
    (SessionGone, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedMediaType, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (OffsetConflict, grpc.StatusCode.ABORTED),
    (RequestTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CapacityReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
]


def code_of(exc: ServeError) -> grpc.StatusCode:
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def trailers(exc: ServeError) -> tuple[tuple[str, str], ...]:
    """The error's stable ``code`` (as ``/v1`` problems carry it) and, where retrying
    helps, ``retry-after`` seconds, as trailing metadata."""
    out: list[tuple[str, str]] = [("lstm-serve-error-code", exc.code)]
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int):
        out.append(("retry-after", str(retry_after)))
    return tuple(out)
