"""Request body schemas, published in the OpenAPI document.

The routes parse bodies by hand (orjson, with NaN/Infinity reaching validation as 422
and no per-request pydantic cost on the hot path); these models only describe the
bodies for clients, ``/docs`` and the schema fuzzer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Step = list[float]
Sequence = list[Step]


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: Sequence | list[Sequence] | None = Field(
        default=None, description="One sequence (steps of features) or a batch of sequences."
    )
    text: str | list[str] | None = Field(default=None, description="Text models: text input.")
    version: int | None = Field(default=None, ge=1)
    return_: Literal["last", "all"] = Field(default="last", alias="return")


class _GenerateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: Sequence | str | None = None
    steps: int = Field(default=1, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=100)
    top_k: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0)
    stream: bool = False


class GenerateBody(_GenerateOptions):
    version: int | None = Field(default=None, ge=1)


class SessionGenerateBody(_GenerateOptions):
    advance: bool = False


class CreateSessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    version: int | None = Field(default=None, ge=1)
    ttl_seconds: int | None = Field(default=None, ge=1)
    state: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="State tensors as GET /v1/sessions/{id}/state gives them: "
        '{"h": {"shape": [...], "dtype": "float32", "data_b64": "..."}, ...}',
    )
    steps: int | None = Field(default=None, ge=0)


class StepBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: Sequence | None = None
    text: str | None = None
    offset: int | None = Field(default=None, ge=0)


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_seconds: int | None = Field(default=None, ge=1)


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
