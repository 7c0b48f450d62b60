"""``/v2``: the Open Inference Protocol's HTTP routes, a thin layer over the core.

What a request does is the shared ``service.oip.dataplane.DataPlane`` (the gRPC door calls
it too); this module only reads the HTTP wire format (``codec``) and writes responses.
Every ``ServeError`` raised here (or in a dependency, such as authentication) becomes
``{"error": ...}`` with Triton's status code through ``V2Route``. The infer is
``service.http.v2.infer``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from service.errors import ServeError
from service.http.deps import Core, Owner
from service.http.health import readiness
from service.http.v2.errors import error_response, v2_error
from service.oip.dataplane import DataPlane


class V2Route(APIRoute):
    """Answers every core error of a ``/v2`` route as ``{"error": ...}``, Triton's way."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except ServeError as exc:
                return v2_error(exc)

        return guarded


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for status, text in {
        400: "Invalid request (Triton's status for most inference errors)",
        401: "Missing or invalid API key",
        404: "Unknown model or version",
        413: "Request too large",
        422: "Invalid parameters",
        429: "Rate limit reached",
        503: "Not ready or session store unavailable",
    }.items()
}
EMPTY_OK: dict[int | str, dict[str, Any]] = {200: {"description": "OK, empty body"}}
INFER_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON tensors, or a JSON header followed by binary tensor data",
        "content": {"application/json": {}, "application/octet-stream": {}},
    }
}


router = APIRouter(prefix="/v2", tags=["v2"], route_class=V2Route, responses=ERROR_RESPONSES)
"""The ``/v2`` routes but the infer (``service.http.v2.infer``)."""


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _plane(core: Core) -> DataPlane:
    return DataPlane(core.sessions)


# -- server and health --------------------------------------------------------------------


@router.get("")
async def server_metadata(core: Core, owner: Owner) -> Response:
    return _json(_plane(core).server_metadata())


@router.get("/health/live", response_class=Response, responses=EMPTY_OK)
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", response_class=Response, responses=EMPTY_OK)
async def ready(core: Core) -> Response:
    ok, _ = await readiness(core)
    if ok:
        return Response(status_code=200)
    return error_response("server is not ready", 503, {"Retry-After": "1"})


# -- models -------------------------------------------------------------------------------


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(
    core: Core, owner: Owner, name: str, version: str | None = None
) -> Response:
    return _json(_plane(core).model_metadata(name, version))


@router.get("/models/{name}/ready", response_class=Response, responses=EMPTY_OK)
@router.get("/models/{name}/versions/{version}/ready", response_class=Response, responses=EMPTY_OK)
async def model_ready(core: Core, owner: Owner, name: str, version: str | None = None) -> Response:
    _plane(core).model(name, version)
    return Response(status_code=200)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(core: Core, owner: Owner, name: str, version: str | None = None) -> Response:
    return _json(_plane(core).model_config(name, version))
