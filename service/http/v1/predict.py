"""``POST /v1/models/{name}/predict``: whole sequences in, predictions out.

A hot route, so a plain Starlette route (``service.http.endpoint``): it calls the gate
(``admit_body``) and validates its body with ``PredictBody`` itself, as the FastAPI routes
do through their dependencies, and raises the core's errors to the app's problem
handlers.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.http.deps import admit_body, parse_json_object
from service.http.endpoint import operation
from service.http.gate import check_output_budget
from service.http.state import AppState
from service.http.v1.schemas import (
    PROBLEM_RESPONSES,
    PredictBody,
    given,
    json_response,
    request_body,
    validate_body,
)
from service.models.distribution import sequence_view
from service.models.encoding import decode_sequence, parse_body_inputs
from service.models.output_size import v1_outputs_bytes

ROUTE = "/v1/models/{name}/predict"


async def predict(request: Request) -> Response:
    core: AppState = request.app.state.core
    _, raw = await admit_body(core, request.scope, request.receive, json_only=True)
    body = validate_body(PredictBody, parse_json_object(raw))
    model = core.registry.get(request.path_params["name"], body.version)
    mode = body.return_
    settings = core.settings
    seqs, batched = parse_body_inputs(
        model.manifest,
        given(body, "inputs", "text"),
        settings.max_steps_per_request,
        settings.max_batch_sequences,
    )
    estimate = v1_outputs_bytes(
        model.manifest, [len(s) for s in seqs], mode == "all", settings.top_k_default
    )
    check_output_budget(estimate, settings.max_response_bytes, "this prediction")
    results = await core.runner.run(model, seqs)
    m = model.manifest
    outputs = [decode_sequence(m, r.outputs, mode, settings.top_k_default, r.wire) for r in results]
    out: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "outputs": outputs if batched else outputs[0],
    }
    if m.distribution is not None:
        views = [sequence_view(m, r.outputs, r.wire, mode) for r in results]
        out["distribution"] = views if batched else views[0]
    return json_response(out)


def openapi_operation() -> dict[str, Any]:
    """The predict's operation in the OpenAPI document, from the same ``PredictBody``."""
    return operation(
        "models",
        "Predict",
        "predict",
        ["name"],
        {"description": "Successful Response", "content": {"application/json": {"schema": {}}}},
        PROBLEM_RESPONSES,
        request_body(PredictBody),
    )
