"""Session state as JSON (shape, dtype, base64 float32 data), for export and restore."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.models.registry import LoadedModel, State


def encode_state(state: State) -> dict[str, Any]:
    """State tensors as the JSON form ``GET /v1/sessions/{id}/state`` shows."""
    return {
        name: {
            "shape": list(arr.shape),
            "dtype": "float32",
            "data_b64": base64.b64encode(np.ascontiguousarray(arr, dtype="<f4").tobytes()).decode(),
        }
        for name, arr in state.items()
    }


def decode_state(model: LoadedModel, doc: object) -> State:
    """``encode_state``'s form back to tensors, checked against ``model``'s state spec."""
    if not isinstance(doc, dict):
        raise InvalidInput("state must be an object of state tensors", code="invalid_state")
    want = {s.name: s for s in model.manifest.state}
    if set(doc) != set(want):
        raise InvalidInput(
            f"state must have exactly the tensors {sorted(want)}, got {sorted(doc)}",
            code="invalid_state",
        )
    out: State = {}
    for name, spec in want.items():
        t = doc[name]
        if not isinstance(t, dict):
            raise InvalidInput(f"state.{name} must be an object", code="invalid_state")
        if t.get("dtype") != "float32":
            raise InvalidInput(f"state.{name}.dtype must be float32", code="invalid_state")
        if t.get("shape") != spec.shape:
            raise InvalidInput(
                f"state.{name}.shape must be {spec.shape}, got {t.get('shape')}",
                code="invalid_state",
            )
        data = t.get("data_b64")
        if not isinstance(data, str):
            raise InvalidInput(f"state.{name}.data_b64 must be a string", code="invalid_state")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(
                f"state.{name}.data_b64 is not valid base64", code="invalid_state"
            ) from exc
        n = int(np.prod(spec.shape))
        if len(raw) != 4 * n:
            raise InvalidInput(
                f"state.{name} needs {4 * n} bytes of float32 data, got {len(raw)}",
                code="invalid_state",
            )
        arr = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(spec.shape)
        if not np.isfinite(arr).all():
            raise InvalidInput(f"state.{name} has non-finite values", code="invalid_state")
        out[name] = arr
    return out
