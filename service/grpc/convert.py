"""Triton's protobuf messages to and from the protocol's plain values (``service.oip``).

Inputs arrive as typed ``contents`` or as ``raw_input_contents`` (one entry per input,
little-endian values or Triton's ``BYTES`` serialisation); outputs always go back as
``raw_output_contents``, as Triton sends them. Metadata and configuration are the same
documents ``/v2`` answers over HTTP, parsed into their messages.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from service.errors import InvalidInput
from service.oip.dataplane import InferResult
from service.oip.messages import (
    DTYPES,
    InferRequest,
    InputTensor,
    RequestedOutput,
    array_from_bytes,
    tensor_shape,
)

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The ``InferTensorContents`` field each datatype's typed values use (FP16 has none: it
is sent raw)."""


def parameters(params: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as plain values (bool, int, str or float)."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


def _typed(t: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise InvalidInput(f"{where}: {t.datatype} data must be sent as raw_input_contents")
    values = getattr(t.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"{where}: shape needs {count} elements, data has {len(values)}")
    if t.datatype == "BYTES":
        return np.asarray(list(values) or [], dtype=object)
    try:
        array = np.asarray(values, dtype=DTYPES[t.datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"{where}: data does not fit the datatype: {exc}") from exc
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{where}: data must be finite (no NaN or Infinity)")
    return array


def infer_request(msg: Any) -> InferRequest:
    """A ``ModelInferRequest`` read into the protocol's request; outputs are always raw."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; "
            "send one per input, or none"
        )
    inputs: list[InputTensor] = []
    seen: set[str] = set()
    for i, t in enumerate(msg.inputs):
        where = f"input '{t.name}'"
        if not t.name:
            raise InvalidInput(f"input {i} has no name")
        if t.name in seen:
            raise InvalidInput(f"{where} is given more than once")
        seen.add(t.name)
        if t.datatype not in DTYPES and t.datatype != "BYTES":
            raise InvalidInput(f"{where}: unsupported datatype {t.datatype!r}")
        shape = tensor_shape(list(t.shape), where)
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"{where}: give contents or raw_input_contents, not both")
            array = array_from_bytes(raw[i], t.datatype, shape, where)
        else:
            array = _typed(t, shape, where)
        inputs.append(InputTensor(t.name, t.datatype, shape, array))
    outputs = [RequestedOutput(o.name, None) for o in msg.outputs] or None
    return InferRequest(inputs, outputs, parameters(msg.parameters), msg.id or None, True)


def infer_response(result: InferResult, request_id: str) -> Any:
    """The outputs as a ``ModelInferResponse`` with ``raw_output_contents``."""
    model = result.model
    response = service_pb2.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request_id
    )
    for out in result.outputs:
        array = np.ascontiguousarray(out.array, dtype="<f4")
        response.outputs.add(name=out.name, datatype="FP32", shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


def model_metadata(doc: dict[str, Any]) -> Any:
    return json_format.ParseDict(doc, service_pb2.ModelMetadataResponse())


def model_config(doc: dict[str, Any]) -> Any:
    config = json_format.ParseDict(doc, model_config_pb2.ModelConfig())
    return service_pb2.ModelConfigResponse(config=config)
