"""Request body schemas: what ``/openapi.json`` publishes is what the server enforces.

Every ``/v1`` body (and each WebSocket frame, which is a step body) is validated by the
model published for it: ``extra="forbid"`` makes an unknown or misspelled field a 422
``invalid_input`` naming it, and types and ranges are checked here, strictly as JSON has
them (a string is not a number, ``1.0`` is not an integer, ``true`` is not a number).
What depends on the model or the settings (feature count, vocabulary, step limits) is
checked by the core afterwards.

The session step is the hot path: it is validated by ``STEP_BODY``, a pydantic
``TypeAdapter`` over a ``TypedDict`` generated from ``StepBody``'s own fields, which
returns the plain dict the core takes instead of building a model instance.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.responses import Response
from typing_extensions import TypedDict

from service.errors import InvalidInput, UnknownField
from service.sessions.limits import MAX_RESTORED_STEPS

F32_MAX = float(np.finfo(np.float32).max)
INT64_MAX = 2**63 - 1

Feature = Annotated[float, Field(ge=-F32_MAX, le=F32_MAX, allow_inf_nan=False)]
"""One input value: a finite number in float32's range."""
Step = list[Feature]
Sequence = list[Step]
Version = Annotated[int, Field(ge=1, le=INT64_MAX)]
Temperature = (
    Annotated[float, Field(ge=0, le=0, description="0: always the most likely token")]
    | Annotated[float, Field(ge=1e-3, le=100)]
)

_BODY = ConfigDict(extra="forbid", strict=True)
M = TypeVar("M", bound=BaseModel)


class PredictBody(BaseModel):
    model_config = _BODY
    inputs: Sequence | list[Sequence] | None = Field(
        default=None, description="One sequence (steps of features) or a batch of sequences."
    )
    text: str | list[str] | None = Field(default=None, description="Text models: text input.")
    version: Version | None = None
    return_: Literal["last", "all"] = Field(default="last", alias="return")


class _GenerateOptions(BaseModel):
    model_config = _BODY
    context: Sequence | str | None = None
    steps: Annotated[int, Field(ge=1, le=INT64_MAX)] = 1
    temperature: Temperature = Field(
        default=1.0, description="0 (greedy), or between 0.001 and 100."
    )
    top_k: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None
    seed: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None
    stream: bool = False
    samples: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = Field(
        default=None,
        description="Probabilistic forecasters: sample paths to draw (default 100, at most "
        "the batch limit); outputs are their mean, fan their quantiles per horizon.",
    )
    return_paths: bool = Field(
        default=False,
        description="Probabilistic forecasters: also give every sample path (paths).",
    )


class GenerateBody(_GenerateOptions):
    version: Version | None = None


class SessionGenerateBody(_GenerateOptions):
    advance: bool = False


class CreateSessionBody(BaseModel):
    model_config = _BODY
    model: Annotated[str, Field(min_length=1)]
    version: Version | None = None
    ttl_seconds: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None
    state: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="State tensors as GET /v1/sessions/{id}/state gives them: "
        '{"h": {"shape": [...], "dtype": "float32", "data_b64": "..."}, ...}',
    )
    steps: Annotated[int, Field(ge=0, le=MAX_RESTORED_STEPS)] | None = None


class StepBody(BaseModel):
    model_config = _BODY
    inputs: Sequence | None = None
    text: str | None = None
    offset: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None


class ForkBody(BaseModel):
    model_config = _BODY
    ttl_seconds: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None


def typed_dict_of(model: type[BaseModel]) -> Any:
    """A ``TypedDict`` with ``model``'s fields (by alias, every one optional), constraints
    and config: validating with it checks exactly what ``model`` checks and returns a dict.
    Fields whose value is None are simply absent in a body, as the core reads them."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[info.alias or name] = NotRequired[annotation]
    typed = TypedDict(model.__name__ + "Fields", fields)  # type: ignore[misc]
    typed.__pydantic_config__ = model.model_config  # type: ignore[attr-defined]
    return typed


STEP_BODY: TypeAdapter[dict[str, Any]] = TypeAdapter(typed_dict_of(StepBody))
"""The session step's (and a WebSocket frame's) validator: ``StepBody``'s schema, as a dict."""


_OUT_OF_RANGE = {"finite_number", "greater_than_equal", "less_than_equal"}
_INPUT_FIELDS = {"inputs", "context"}


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict", "literal", "typed-dict"}


def _where(loc: tuple[int | str, ...]) -> str:
    """``inputs[0][2]`` for pydantic's location, without the tags of union members."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out and ("[" in part or "-" in part or part in _TYPE_TAGS):
            continue  # a union member's tag (``list[...]``, ``constrained-float``, ...)
        else:
            out += ("." if out else "") + part
    return out or "body"


def invalid_body(exc: ValidationError) -> InvalidInput:
    """A body that does not match its schema: 422 ``invalid_input`` naming each field
    (``non_finite`` when the problem is an input value outside float32's finite range)."""
    errors = exc.errors(include_url=False)
    unknown = [_where(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        return UnknownField(f"unknown field {names}: not in the request schema", fields=unknown)
    seen: dict[str, list[str]] = {}
    codes: set[str] = set()
    for e in errors:
        where = _where(e["loc"])
        msgs = seen.setdefault(where, [])
        if e["msg"] not in msgs:
            msgs.append(e["msg"])
        root = e["loc"][0] if e["loc"] else ""
        if root in _INPUT_FIELDS and (
            e["type"] in _OUT_OF_RANGE
            or (e["type"] == "float_type" and type(e.get("input")) is int)  # past any float
        ):
            codes.add("non_finite")
    fields = list(seen)
    detail = "; ".join(f"{where}: {' or '.join(msgs)}" for where, msgs in list(seen.items())[:5])
    code = "non_finite" if codes and all(_is_value(f) for f in fields) else None
    return InvalidInput(detail, code=code, fields=fields)


def _is_value(where: str) -> bool:
    """A location inside an input sequence (``inputs[0][2]``), not the field itself."""
    return where.endswith("]") and where.count("[") >= 2


def validate_body(model: type[M], body: object) -> M:
    """``body`` (decoded JSON) as ``model``, or ``InvalidInput`` naming what is wrong."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc) from None


def validate_step(body: object) -> dict[str, Any]:
    """A step body (HTTP or WebSocket frame) validated by ``STEP_BODY``."""
    try:
        return STEP_BODY.validate_python(body)
    except ValidationError as exc:
        raise invalid_body(exc) from None


def request_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body ``model`` describes."""
    schema = model.model_json_schema(by_alias=True)
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": schema}},
        }
    }


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
    },
}

_PROBLEM_STATUSES = {
    400: "Malformed body",
    401: "Missing or invalid API key",
    404: "Unknown model, version or session",
    405: "Method not allowed",
    409: "Offset conflict",
    410: "Session expired or evicted",
    413: "Request too large",
    415: "Body not sent as application/json",
    422: "Well-formed but invalid",
    429: "Session capacity or rate limit reached (Retry-After)",
    503: "Not ready or session store unavailable (Retry-After)",
}

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": text,
        "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
    }
    for status, text in _PROBLEM_STATUSES.items()
}
"""Every /v1 route's documented error responses: RFC 9457 problem details."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def given(body: BaseModel, *names: str) -> dict[str, Any]:
    """The fields among ``names`` that the client sent, by name (the core's body form)."""
    sent = body.model_fields_set
    return {name: getattr(body, name) for name in names if name in sent}
