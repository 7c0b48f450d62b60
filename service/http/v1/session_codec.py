"""``/v1`` session bodies ↔ the session manager: the views of a session, and a step
request's inputs and offset in, its outputs out (``SessionManager.advance`` itself takes
and returns arrays). The ``/v1`` step route and the WebSocket stream both use these."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from service.errors import InvalidInput
from service.models.distribution import steps_view
from service.models.encoding import decode_steps, parse_step_inputs
from service.models.registry import LoadedModel
from service.sessions.advance import Advance, InputsOf
from service.sessions.record import SessionRecord


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def session_view(rec: SessionRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "model": rec.model,
        "version": rec.version,
        "steps": rec.steps,
        "created_at": _iso(rec.created_at),
        "expires_at": _iso(rec.expires_at),
        "ttl_seconds": rec.ttl_seconds,
    }


def step_offset(body: dict[str, Any]) -> int | None:
    """The step body's ``offset``, when it has one."""
    offset = body.get("offset")
    if offset is None:
        return None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidInput("offset must be a non-negative integer")
    return offset


def step_parser(body: dict[str, Any], max_steps: int) -> InputsOf:
    """The step body's inputs (``inputs`` or ``text``), read for the session's model."""

    def parse(model: LoadedModel) -> np.ndarray:
        return parse_step_inputs(model.manifest, body, max_steps)

    return parse


def group_parser(bodies: list[dict[str, Any]], max_steps: int) -> InputsOf:
    """Several step bodies' inputs, one after another, as one request's."""

    def parse(model: LoadedModel) -> np.ndarray:
        return np.concatenate([parse_step_inputs(model.manifest, b, max_steps) for b in bodies])

    return parse


def step_outputs(done: Advance, top_k: int) -> list[Any]:
    """The wire outputs of an ``Advance``, one per step."""
    return decode_steps(done.model.manifest, done.outputs, top_k, done.wire)


def step_distributions(done: Advance) -> list[Any] | None:
    """A probabilistic model's ``distribution`` of each step (None for a point model)."""
    return steps_view(done.model.manifest, done.outputs, done.wire)


def step_response(done: Advance, top_k: int) -> bytes:
    """The step response (``{"id", "steps", "outputs"}``, a probabilistic model's
    ``distribution``, and ``"replayed": true``)."""
    body: dict[str, Any] = {
        "id": done.session_id,
        "steps": done.steps,
        "outputs": step_outputs(done, top_k),
    }
    views = step_distributions(done)
    if views is not None:
        body["distribution"] = views
    if done.replayed:
        body["replayed"] = True
    return orjson.dumps(body)
