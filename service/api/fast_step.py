"""``POST /v1/sessions/{id}/step`` as a plain ASGI handler, ahead of FastAPI's routing.

The session step is the hot path, and FastAPI's route matching, dependency solving and
exception middleware cost several times what the step itself does. This middleware
answers exactly that route with the same pieces the FastAPI route uses — the same
authentication and rate limit, body limit and JSON parsing (``service.api.deps``), the
same session manager call and the same problem details (``service.api.problems``) — and
passes everything else on. The FastAPI route stays registered, so the OpenAPI document
and ``/docs`` describe it; requests never reach it.
"""

from __future__ import annotations

import orjson
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import authenticate, parse_json_object, receive_body
from service.api.problems import (
    CLIENT_DISCONNECTED,
    PROBLEM_JSON,
    error_headers,
    problem_of,
    status_of,
)
from service.errors import ServeError
from service.state import AppState

_PREFIX = "/v1/sessions/"
_SUFFIX = "/step"
_JSON = [(b"content-type", b"application/json")]


class FastStepMiddleware:
    def __init__(self, app: ASGIApp, route: APIRoute) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.startswith(_PREFIX)
            or not path.endswith(_SUFFIX)
        ):
            await self.app(scope, receive, send)
            return
        session_id = path[len(_PREFIX) : -len(_SUFFIX)]
        if not session_id or "/" in session_id:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        core: AppState = scope["app"].state.core
        authorization: str | None = None
        content_length: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value.decode("latin-1")
        headers = _JSON
        try:
            owner = authenticate(core.api_keys, authorization)
            core.rate_limiter.check(owner)
            raw = await receive_body(receive, content_length, core.settings.max_body_bytes)
            result = await core.sessions.step(owner, session_id, parse_json_object(raw))
            status = 200
            payload = orjson.dumps(result.body, option=orjson.OPT_SERIALIZE_NUMPY)
        except ServeError as exc:
            status = status_of(exc)
            payload = orjson.dumps(problem_of(exc))
            headers = [(b"content-type", PROBLEM_JSON.encode())] + [
                (k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()
            ]
        except ClientDisconnect:
            status = 400
            payload = orjson.dumps(CLIENT_DISCONNECTED)
            headers = [(b"content-type", PROBLEM_JSON.encode())]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
