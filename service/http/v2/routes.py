"""``/v2``: the Open Inference Protocol's HTTP routes, a thin layer over the core.

Inference goes through ``core.runner`` and sequence state through ``core.sessions``;
this module only reads requests, checks them against the model and writes responses.
Every ``ServeError`` raised here (or in a dependency, such as authentication) becomes
``{"error": ...}`` with Triton's status code through ``V2Route``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from service.errors import InvalidInput, ModelNotFound, ServeError
from service.http.deps import Core, Owner, read_body
from service.http.gate import check_output_budget
from service.http.health import readiness
from service.http.state import AppState
from service.http.v2 import codec, tensors
from service.http.v2.errors import error_response, v2_error
from service.http.v2.sequences import SequenceParams, Sequences, sequence_params
from service.inference.runner import SeqResult
from service.models.manifest import is_version_number
from service.models.registry import LoadedModel

SERVER_NAME = "lstm-serve"
EXTENSIONS = ["binary_tensor_data", "parameters", "sequence", "model_configuration"]


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


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _version(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not is_version_number(value):
        raise ModelNotFound(f"model version {value!r} is not a positive integer")
    return int(value)


def _server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lstm-serve")
    except PackageNotFoundError:
        return "0"


# -- server and health --------------------------------------------------------------------


@router.get("")
async def server_metadata(core: Core, owner: Owner) -> Response:
    return _json({"name": SERVER_NAME, "version": _server_version(), "extensions": EXTENSIONS})


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


def _model(core: AppState, name: str, version: str | None) -> LoadedModel:
    return core.registry.get(name, _version(version))


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(
    core: Core, owner: Owner, name: str, version: str | None = None
) -> Response:
    model = _model(core, name, version)
    return _json(tensors.metadata(model, core.registry.versions(name)))


@router.get("/models/{name}/ready", response_class=Response, responses=EMPTY_OK)
@router.get("/models/{name}/versions/{version}/ready", response_class=Response, responses=EMPTY_OK)
async def model_ready(core: Core, owner: Owner, name: str, version: str | None = None) -> Response:
    _model(core, name, version)
    return Response(status_code=200)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(core: Core, owner: Owner, name: str, version: str | None = None) -> Response:
    model = _model(core, name, version)
    s = core.settings
    return _json(tensors.config(model, s.max_batch_sequences, s.session_ttl_seconds))


# -- inference ----------------------------------------------------------------------------


async def _run(
    core: AppState,
    owner: str,
    model: LoadedModel,
    params: SequenceParams,
    inputs: tensors.ModelInputs,
) -> list[SeqResult]:
    if params.id is None:
        return await core.runner.run(model, inputs.seqs, inputs.states)
    if len(inputs.seqs) != 1:
        raise InvalidInput(
            f"a request in sequence {params.id} must have batch size 1, got {len(inputs.seqs)}"
        )
    explicit = inputs.states[0] if inputs.states is not None else None
    result = await Sequences(core.sessions).step(owner, model, params, inputs.seqs[0], explicit)
    return [result]


def _select_outputs(
    model: LoadedModel, request: codec.InferRequest, values: dict[str, np.ndarray]
) -> list[codec.OutputTensor]:
    default_binary = request.binary_output_default
    if request.outputs is None:
        return [codec.OutputTensor(n, values[n], default_binary) for n in values]
    chosen: list[codec.OutputTensor] = []
    for out in request.outputs:
        if out.name not in values:
            raise InvalidInput(
                f"unexpected inference output '{out.name}' for model '{model.name}'; "
                f"it gives {list(values)}"
            )
        binary = default_binary if out.binary is None else out.binary
        chosen.append(codec.OutputTensor(out.name, values[out.name], binary))
    return chosen


@router.post("/models/{name}/infer", responses=INFER_OK)
@router.post("/models/{name}/versions/{version}/infer", responses=INFER_OK)
async def infer(
    request: Request, core: Core, owner: Owner, name: str, version: str | None = None
) -> Response:
    settings = core.settings
    raw = await read_body(request, json_only=False)
    body = codec.decompress(raw, request.headers.get("content-encoding"), settings.max_body_bytes)
    header, binary = codec.split_body(body, request.headers.get(codec.HEADER_LENGTH))
    req = codec.parse_request(header, binary)
    params = sequence_params(req.parameters)
    model = await Sequences(core.sessions).resolve(owner, name, _version(version), params)
    inputs = tensors.model_inputs(
        model, req.inputs, settings.max_steps_per_request, settings.max_batch_sequences
    )
    estimate = tensors.response_bytes(model.manifest, inputs, req)
    check_output_budget(estimate, settings.max_response_bytes, "this inference request")
    results = await _run(core, owner, model, params, inputs)
    m = model.manifest
    values = {
        tensors.OUTPUT: tensors.model_outputs(m, results),
        **tensors.state_outputs(m, [r.state for r in results]),
    }
    chosen = _select_outputs(model, req, values)
    out, header_length = codec.encode_response(model.name, model.version, chosen, req.id)
    out, encoding = codec.compress(out, request.headers.get("accept-encoding"))
    headers: dict[str, str] = {}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if header_length is None:
        return Response(out, media_type="application/json", headers=headers)
    headers[codec.HEADER_LENGTH] = str(header_length)
    return Response(out, media_type="application/octet-stream", headers=headers)
