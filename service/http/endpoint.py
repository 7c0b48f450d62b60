"""``RequestEndpoint``: a hot route's endpoint as a plain ASGI app, documented by hand.

The session step (``service.http.v1.step``), the predict (``service.http.v1.predict``)
and the ``/v2`` infer (``service.http.v2.infer``) are Starlette routes at the head of the
app's router. Each passes the whole middleware stack like every other route (the request
context, any middleware added later, the exception handlers), but skips FastAPI's
per-request work for its own routes (dependency solving, the matching of included
routers), which cost more than the request's own Python work. They call the same gate and
the same body validation as the FastAPI routes do through their dependencies.

FastAPI documents only its own routes, so each plain route brings its OpenAPI operation
and ``document`` adds them to the app's document, as FastAPI's guide to extending
OpenAPI does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]


class RequestEndpoint:
    """``handler(request)`` as an ASGI app; Starlette's router has already matched the
    path (``request.path_params``). Errors it raises reach the app's exception handlers."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        """The route's template, for metrics and the access log."""
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def path_parameters(*names: str) -> list[dict[str, Any]]:
    """OpenAPI path parameters, as FastAPI describes a ``str`` path parameter."""
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "title": name.replace("_", " ").title()},
        }
        for name in names
    ]


def operation(
    tag: str,
    summary: str,
    operation_id: str,
    params: Sequence[str],
    ok: dict[str, Any],
    errors: Mapping[int | str, dict[str, Any]],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A plain route's OpenAPI operation, laid out as FastAPI lays out its own: its path
    ``params``, its request ``body`` (``{"requestBody": ...}``) if it takes one, ``ok``
    for 200 and then each error status."""
    return {
        "tags": [tag],
        "summary": summary,
        "operationId": operation_id,
        "parameters": path_parameters(*params),
        **(body or {}),
        "responses": {"200": ok, **{str(status): r for status, r in errors.items()}},
    }


Operations = dict[str, dict[str, dict[str, Any]]]
"""Path -> method -> OpenAPI operation."""


def document(app: FastAPI, operations: Operations) -> None:
    """Add the plain routes' ``operations`` to the app's OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for path, methods in operations.items():
            for method, operation in methods.items():
                schema["paths"].setdefault(path, {}).setdefault(method, operation)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
