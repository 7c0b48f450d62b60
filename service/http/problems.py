"""The one place where core errors become HTTP responses.

``/v1`` answers RFC 9457 problem details; ``/v2`` answers the Open Inference Protocol's
``{"error": "..."}`` with the same status codes.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.errors import (
    CapacityReached,
    InferenceError,
    InvalidInput,
    MalformedRequest,
    ModelNotFound,
    NotReady,
    OffsetConflict,
    RateLimited,
    RequestTooLarge,
    ServeError,
    SessionCorrupt,
    SessionGone,
    SessionNotFound,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_STATUS: list[tuple[type[ServeError], int]] = [
    (MalformedRequest, 400),
    (InvalidInput, 422),
    (Unauthorized, 401),
    (ModelNotFound, 404),
    (SessionNotFound, 404),
    (OffsetConflict, 409),
    (SessionCorrupt, 410),
    (SessionGone, 410),
    (RequestTooLarge, 413),
    (UnsupportedMediaType, 415),
    (CapacityReached, 429),
    (RateLimited, 429),
    (StoreUnavailable, 503),
    (NotReady, 503),
    (InferenceError, 422),
]

_HTTP_CODES = {
    400: "malformed_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    503: "unavailable",
}


def status_of(exc: ServeError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_headers(exc: ServeError) -> dict[str, str]:
    """``Retry-After`` and ``WWW-Authenticate`` where the error calls for them."""
    headers: dict[str, str] = {}
    if (
        isinstance(exc, CapacityReached | RateLimited | StoreUnavailable | NotReady)
        and exc.retry_after is not None
    ):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="lstm-serve"'
    return headers


def problem_body(status: int, title: str, detail: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def problem_of(exc: ServeError) -> dict[str, Any]:
    return problem_body(status_of(exc), exc.title, exc.detail, exc.code, **exc.extra)


def _is_v2(request: Request) -> bool:
    return request.url.path == "/v2" or request.url.path.startswith("/v2/")


def error_response(request: Request, exc: ServeError) -> Response:
    status = status_of(exc)
    headers = error_headers(exc)
    if _is_v2(request):
        return Response(
            orjson.dumps({"error": exc.detail}),
            status_code=status,
            media_type="application/json",
            headers=headers,
        )
    return Response(
        orjson.dumps(problem_of(exc)), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


async def serve_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    return error_response(request, exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if _is_v2(request):
        return Response(
            orjson.dumps({"error": detail}),
            status_code=status,
            media_type="application/json",
            headers=headers,
        )
    body = problem_body(status, detail, detail, _HTTP_CODES.get(status, "http_error"))
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors
    )
    return error_response(request, InvalidInput(detail or "invalid request"))


INTERNAL_PROBLEM = problem_body(500, "Internal error", "internal error", "internal_error")

CLIENT_DISCONNECTED = problem_body(
    400, "Client disconnected", "the request body was cut off", "client_disconnected"
)


async def client_disconnect_handler(request: Request, exc: Exception) -> Response:
    """The client went away while its body was being read: nothing was applied, nobody
    reads the answer; no traceback, no 500."""
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(orjson.dumps(CLIENT_DISCONNECTED), status_code=400, media_type=PROBLEM_JSON)


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    if _is_v2(request):
        return Response(
            orjson.dumps({"error": "internal error"}),
            status_code=500,
            media_type="application/json",
        )
    return Response(orjson.dumps(INTERNAL_PROBLEM), status_code=500, media_type=PROBLEM_JSON)
