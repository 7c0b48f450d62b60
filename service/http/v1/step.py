"""``POST /v1/sessions/{id}/step``: the session step, a declared route of the app.

The step is the hot path, so its endpoint is a plain ASGI app mounted as a Starlette
route (``app.add_route``): it passes the whole middleware stack like every other route
(the request context, any middleware added later), but skips FastAPI's per-request
dependency solving. It uses the same pieces the FastAPI routes use: the same
authentication and rate limit, body limit and JSON parsing (``service.http.deps``), the
same session manager call and the same problem details (``service.http.problems``).
FastAPI documents only its own routes, so ``openapi_operation`` describes this one for the
OpenAPI document (``service.http.app`` adds it there).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service.errors import ServeError
from service.http.deps import admit_body, parse_json_object
from service.http.endpoint import operation
from service.http.problems import (
    CLIENT_DISCONNECTED,
    PROBLEM_JSON,
    error_headers,
    problem_body,
    problem_of,
    status_of,
)
from service.http.state import AppState
from service.http.v1.schemas import PROBLEM_RESPONSES, StepBody, request_body, validate_step
from service.http.v1.session_codec import step_offset, step_parser, step_response

log = logging.getLogger(__name__)

ROUTE = "/v1/sessions/{session_id}/step"
_JSON = [(b"content-type", b"application/json")]
_PROBLEM = [(b"content-type", PROBLEM_JSON.encode())]
_INTERNAL = orjson.dumps(problem_body(500, "Internal error", "internal error", "internal_error"))


class StepEndpoint:
    """The step as an ASGI app; Starlette's router has already matched the path."""

    path = ROUTE
    """The route's template, for metrics and the access log."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        core: AppState = scope["app"].state.core
        try:
            owner, raw = await admit_body(core, scope, receive, json_only=True)
            body = validate_step(parse_json_object(raw))
            settings = core.settings
            done = await core.sessions.advance(
                owner,
                scope["path_params"]["session_id"],
                step_parser(body, settings.max_steps_per_request),
                offset=step_offset(body),
            )
            status, headers, payload = 200, _JSON, step_response(done, settings.top_k_default)
        except ServeError as exc:
            status = status_of(exc)
            headers = _PROBLEM + [
                (k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()
            ]
            payload = orjson.dumps(problem_of(exc))
        except ClientDisconnect:
            status, headers, payload = 400, _PROBLEM, orjson.dumps(CLIENT_DISCONNECTED)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            status, headers, payload = 500, _PROBLEM, _INTERNAL
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


STEP_RESPONSE_SCHEMA: dict[str, Any] = {
    "title": "StepResponse",
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "steps", "outputs"],
    "properties": {
        "id": {"type": "string"},
        "steps": {"type": "integer", "minimum": 0},
        "outputs": {"type": "array", "description": "One output per input step"},
        "replayed": {"type": "boolean", "description": "A retry answered without advancing"},
        "distribution": {
            "type": "array",
            "description": "Probabilistic forecasters only: each step's scale and quantiles "
            "per feature (the step's output is the mean)",
            "items": {
                "type": "object",
                "required": ["scale", "quantiles"],
                "additionalProperties": False,
                "properties": {
                    "scale": {"type": "array", "items": {"type": "number"}},
                    "quantiles": {
                        "type": "object",
                        "additionalProperties": {"type": "array", "items": {"type": "number"}},
                    },
                },
            },
        },
    },
}
"""The step's answer (``session_codec.step_response``)."""


def openapi_operation() -> dict[str, Any]:
    """The step's operation in the OpenAPI document, from the same ``StepBody`` schema."""
    return operation(
        "sessions",
        "Step Session",
        "step_session",
        ["session_id"],
        {
            "description": "The step's outputs, one per input step",
            "content": {"application/json": {"schema": STEP_RESPONSE_SCHEMA}},
        },
        PROBLEM_RESPONSES,
        request_body(StepBody),
    )
