"""The ``/v1`` REST adapter: models, prediction, generation and sessions."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from service.errors import InvalidInput, ServeError
from service.http.deps import Core, Owner, body_of
from service.http.gate import check_output_budget
from service.http.problems import INTERNAL_PROBLEM, problem_of
from service.http.state import AppState
from service.http.v1.schemas import (
    PROBLEM_RESPONSES,
    CreateSessionBody,
    ForkBody,
    GenerateBody,
    SessionGenerateBody,
    json_response,
    request_body,
)
from service.http.v1.session_codec import session_view
from service.inference.generation import (
    GenerateOptions,
    GenStep,
    Rollout,
    check_generate_options,
    collect,
    rollout,
)
from service.models.encoding import parse_body_inputs
from service.models.manifest import TextInput, is_version_number
from service.models.output_size import v1_generated_step_bytes
from service.models.registry import LoadedModel
from service.sessions.manager import SessionManager

log = logging.getLogger(__name__)


def _operation_id(route: APIRoute) -> str:
    """Operation ids are the route functions' names (``create_session``, ``step_session``)."""
    return route.name


router = APIRouter(
    prefix="/v1", responses=PROBLEM_RESPONSES, generate_unique_id_function=_operation_id
)
"""The ``/v1`` routes but the session step (``service.http.v1.step``) and the predict
(``service.http.v1.predict``)."""

GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The generated steps; with stream: true, Server-Sent Events",
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}


class SessionView(BaseModel):
    """A session as ``POST /v1/sessions``, ``GET /v1/sessions/{id}``, reset and fork show it."""

    model_config = ConfigDict(extra="forbid")
    id: str
    model: str
    version: int
    steps: int = Field(ge=0)
    created_at: str
    expires_at: str
    ttl_seconds: int = Field(ge=1)


class SessionList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sessions: list[SessionView]


_SESSION_ID = {"session_id": "$response.body#/id"}
SESSION_LINKS: dict[str, dict[str, Any]] = {
    name: {"operationId": op, "parameters": _SESSION_ID}
    for name, op in {
        "GetSession": "get_session",
        "StepSession": "step_session",
        "ForkSession": "fork_session",
        "ResetSession": "reset_session",
        "GetSessionState": "get_session_state",
        "GenerateFromSession": "generate_session",
        "DeleteSession": "delete_session",
    }.items()
}
"""OpenAPI links from a new session (create, fork) to the operations on it."""

CREATED_SESSION: dict[int | str, dict[str, Any]] = {
    201: {"model": SessionView, "description": "The new session", "links": SESSION_LINKS}
}
SESSION: dict[int | str, dict[str, Any]] = {200: {"model": SessionView}}


def _version(value: object, where: str = "version") -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not is_version_number(value):
            raise InvalidInput(f"{where} must be a positive integer")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(f"{where} must be a positive integer")
    return value


Generate = Annotated[GenerateBody, Depends(body_of(GenerateBody))]
SessionGenerate = Annotated[SessionGenerateBody, Depends(body_of(SessionGenerateBody))]
CreateSession = Annotated[CreateSessionBody, Depends(body_of(CreateSessionBody))]
Fork = Annotated[ForkBody, Depends(body_of(ForkBody, required=False))]
"""Bodies validated by the models ``/openapi.json`` publishes (``service.http.deps.body_of``)."""


def _options(body: GenerateBody | SessionGenerateBody) -> dict[str, Any]:
    return {
        "steps": body.steps,
        "temperature": body.temperature,
        "top_k": body.top_k,
        "seed": body.seed,
        "samples": body.samples,
        "return_paths": body.return_paths,
    }


# -- models -------------------------------------------------------------------------------


@router.get("/models", tags=["models"])
async def list_models(core: Core, owner: Owner) -> Response:
    reg = core.registry
    models = []
    for name in reg.names():
        m = reg.get(name).manifest
        models.append(
            {
                "name": name,
                "versions": reg.versions(name),
                "default_version": reg.default_version(name),
                "cell": m.cell,
                "task": m.task,
                "description": m.description,
            }
        )
    return json_response({"models": models})


@router.get("/models/{name}", tags=["models"])
async def get_model(core: Core, owner: Owner, name: str, version: str | None = None) -> Response:
    model = core.registry.get(name, _version(version))
    doc = model.manifest.public(core.registry.versions(name))
    doc["default_version"] = core.registry.default_version(name)
    return json_response(doc)


def _context(
    model: LoadedModel, body: GenerateBody | SessionGenerateBody, max_steps: int, required: bool
) -> np.ndarray | None:
    context = body.context
    if context is None:
        if required:
            raise InvalidInput("context is required", code="missing_context")
        return None
    takes_text = isinstance(model.manifest.input, TextInput)
    if isinstance(context, str) != takes_text and isinstance(context, str | list):
        wanted = "a string" if takes_text else "feature rows [[f1, ..., fF], ...], not text"
        raise InvalidInput(
            f"context: model {model.manifest.name!r} takes {wanted}", code="wrong_input_kind"
        )
    key = "text" if takes_text else "inputs"
    try:
        seqs, batched = parse_body_inputs(model.manifest, {key: context}, max_steps, 1)
    except InvalidInput as exc:  # name the field the client sent
        detail = re.sub(r"^(inputs|text)\b", "context", exc.detail)
        raise InvalidInput(detail, code=exc.code, **exc.extra) from exc
    if batched:
        raise InvalidInput("context must be one sequence")
    return seqs[0]


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _sse_stream(
    steps: AsyncIterator[GenStep], request: Request, end: dict[str, Any], result: Rollout
) -> AsyncIterator[bytes]:
    try:
        async for step in steps:
            if await request.is_disconnected():
                return
            yield _sse("step", step.event())
        if result.text:
            end = {**end, "text": result.text}
        yield _sse("end", {**end, "steps": len(result.text) if result.text else end.get("steps")})
    except ServeError as exc:
        yield _sse("error", problem_of(exc))
    except Exception:  # the status line is sent: end the stream with an error event
        log.exception("generation failed on %s", request.url.path)
        yield _sse("error", INTERNAL_PROBLEM)
    finally:
        await steps.aclose()  # type: ignore[attr-defined]


def _generate_options(
    core: AppState, model: LoadedModel, body: GenerateBody | SessionGenerateBody
) -> GenerateOptions:
    """The body's options, checked against the model, the step caps and the output budget."""
    settings = core.settings
    opts = check_generate_options(
        model, _options(body), settings.max_generate_steps, settings.max_batch_sequences
    )
    per_step = v1_generated_step_bytes(model.manifest, opts.samples, opts.return_paths)
    check_output_budget(opts.steps * per_step, settings.max_response_bytes, "this generation")
    return opts


def _generation_response(
    request: Request,
    steps: AsyncIterator[GenStep],
    stream: bool,
    head: dict[str, Any],
    result: Rollout,
) -> Response | None:
    if stream:
        return StreamingResponse(
            _sse_stream(steps, request, head, result),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return None


@router.post("/models/{name}/generate", tags=["models"], openapi_extra=request_body(GenerateBody))
async def generate(
    request: Request, core: Core, owner: Owner, name: str, body: Generate
) -> Response:
    model = core.registry.get(name, body.version)
    opts = _generate_options(core, model, body)
    context = _context(model, body, core.settings.max_steps_per_request, required=True)
    stream = body.stream
    result = Rollout(state={}, last_output=np.zeros(0), fed_steps=0)
    steps = rollout(core.runner, model, model.zero_state(), None, context, opts, result)
    head = {"model": model.name, "version": model.version, "steps": opts.steps}
    streamed = _generation_response(request, steps, stream, head, result)
    if streamed is not None:
        return streamed
    out: dict[str, Any] = {"model": model.name, "version": model.version, **await collect(steps)}
    if isinstance(model.manifest.input, TextInput):
        out["text"] = result.text
    return json_response(out)


# -- sessions -----------------------------------------------------------------------------


def _session_response(core: AppState, view: dict[str, Any], status: int = 200) -> Response:
    headers = {"Location": f"/v1/sessions/{view['id']}"} if status == 201 else None
    return json_response(view, status, headers)


@router.post(
    "/sessions",
    tags=["sessions"],
    status_code=201,
    openapi_extra=request_body(CreateSessionBody),
    responses=CREATED_SESSION,
)
async def create_session(core: Core, owner: Owner, body: CreateSession) -> Response:
    rec = await core.sessions.create(
        owner, body.model, body.version, ttl=body.ttl_seconds, state=body.state, steps=body.steps
    )
    core.metrics.sessions_active.set(await core.store.count())
    return _session_response(core, session_view(rec), 201)


@router.get("/sessions", tags=["sessions"], responses={200: {"model": SessionList}})
async def list_sessions(core: Core, owner: Owner) -> Response:
    recs = await core.sessions.list(owner)
    return json_response({"sessions": [session_view(r) for r in recs]})


@router.get("/sessions/{session_id}", tags=["sessions"], responses=SESSION)
async def get_session(core: Core, owner: Owner, session_id: str) -> Response:
    return json_response(session_view(await core.sessions.get(owner, session_id)))


@router.delete(
    "/sessions/{session_id}",
    tags=["sessions"],
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Deleted"}},
)
async def delete_session(core: Core, owner: Owner, session_id: str) -> Response:
    await core.sessions.delete(owner, session_id)
    core.metrics.sessions_active.set(await core.store.count())
    return Response(status_code=204)


# POST /sessions/{session_id}/step: service.http.v1.step (the hot path, its own route)


@router.post("/sessions/{session_id}/reset", tags=["sessions"], responses=SESSION)
async def reset_session(core: Core, owner: Owner, session_id: str) -> Response:
    return json_response(session_view(await core.sessions.reset(owner, session_id)))


@router.post(
    "/sessions/{session_id}/fork",
    tags=["sessions"],
    status_code=201,
    openapi_extra=request_body(ForkBody, required=False),
    responses=CREATED_SESSION,
)
async def fork_session(core: Core, owner: Owner, session_id: str, body: Fork) -> Response:
    rec = await core.sessions.fork(owner, session_id, ttl=body.ttl_seconds)
    core.metrics.sessions_active.set(await core.store.count())
    return _session_response(core, session_view(rec), 201)


@router.get("/sessions/{session_id}/state", tags=["sessions"])
async def get_session_state(core: Core, owner: Owner, session_id: str) -> Response:
    rec = await core.sessions.get(owner, session_id)
    return json_response(
        {
            "id": rec.id,
            "model": rec.model,
            "version": rec.version,
            "steps": rec.steps,
            "state": SessionManager.encode_state(rec),
        }
    )


@router.post(
    "/sessions/{session_id}/generate",
    tags=["sessions"],
    openapi_extra=request_body(SessionGenerateBody),
    responses=GENERATE_RESPONSES,
)
async def generate_session(
    request: Request, core: Core, owner: Owner, session_id: str, body: SessionGenerate
) -> Response:
    rec = await core.sessions.get(owner, session_id)
    model = core.sessions.model_of(rec)
    opts = _generate_options(core, model, body)
    context = _context(model, body, core.settings.max_steps_per_request, required=False)
    if context is None and rec.last_output is None:
        raise InvalidInput(
            "the session has no steps yet: give a context to generate from", code="missing_context"
        )
    advance = body.advance
    stream = body.stream
    result = Rollout(state={}, last_output=np.zeros(0), fed_steps=0)
    steps = core.sessions.generate(owner, session_id, context, opts, advance, result)
    head = {"id": session_id, "model": model.name, "version": model.version, "steps": opts.steps}
    streamed = _generation_response(request, steps, stream, head, result)
    if streamed is not None:
        return streamed
    out: dict[str, Any] = {
        "id": session_id,
        "model": model.name,
        "version": model.version,
        **await collect(steps),
    }
    if isinstance(model.manifest.input, TextInput):
        out["text"] = result.text
    if advance:
        out["session_steps"] = rec.steps + result.fed_steps
    return json_response(out)
