"""``POST /v2/models/{name}[/versions/{version}]/infer``: the Open Inference Protocol's
inference over HTTP, JSON or with binary tensor data.

A hot route, so a plain Starlette route (``service.http.endpoint``): it calls the gate
and reads its body through it (``admit_body``) itself, and answers every core error as
``{"error": ...}`` with Triton's status code, as ``V2Route`` does for the other ``/v2``
routes. The work is the shared ``service.oip.dataplane.DataPlane``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.errors import ServeError
from service.http.deps import admit_body
from service.http.endpoint import Operations, operation
from service.http.state import AppState
from service.http.v2 import codec
from service.http.v2.errors import v2_error
from service.http.v2.routes import ERROR_RESPONSES, INFER_OK
from service.oip.dataplane import DataPlane

ROUTE = "/v2/models/{name}/infer"
VERSION_ROUTE = "/v2/models/{name}/versions/{version}/infer"


async def infer(request: Request) -> Response:
    try:
        return await _infer(request)
    except ServeError as exc:
        return v2_error(exc)


async def _infer(request: Request) -> Response:
    core: AppState = request.app.state.core
    owner, raw = await admit_body(core, request.scope, request.receive, json_only=False)
    settings = core.settings
    body = codec.decompress(raw, request.headers.get("content-encoding"), settings.max_body_bytes)
    header, binary = codec.split_body(body, request.headers.get(codec.HEADER_LENGTH))
    req = codec.parse_request(header, binary)
    params = request.path_params
    result = await DataPlane(core.sessions).infer(owner, params["name"], params.get("version"), req)
    model = result.model
    out, header_length = codec.encode_response(model.name, model.version, result.outputs, req.id)
    out, encoding = codec.compress(out, request.headers.get("accept-encoding"))
    headers: dict[str, str] = {}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if header_length is None:
        return Response(out, media_type="application/json", headers=headers)
    headers[codec.HEADER_LENGTH] = str(header_length)
    return Response(out, media_type="application/octet-stream", headers=headers)


def _operation(summary: str, operation_id: str, *params: str) -> dict[str, Any]:
    return operation(
        "v2",
        summary,
        operation_id,
        params,
        {
            **INFER_OK[200],
            "content": {"application/json": {"schema": {}}, "application/octet-stream": {}},
        },
        ERROR_RESPONSES,
    )


def openapi_operations() -> Operations:
    """The two infer operations in the OpenAPI document (ids as FastAPI names them)."""
    return {
        ROUTE: {"post": _operation("Infer", "infer_v2_models__name__infer_post", "name")},
        VERSION_ROUTE: {
            "post": _operation(
                "Infer Version",
                "infer_version_v2_models__name__versions__version__infer_post",
                "name",
                "version",
            )
        },
    }
