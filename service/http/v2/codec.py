"""The Open Inference Protocol's wire format: JSON tensors and Triton's binary tensor data.

A request body is a JSON header, optionally followed by raw tensor bytes; the header's
length is then given by ``Inference-Header-Content-Length`` and each binary input says
its size in ``parameters.binary_data_size``, in input order. Bodies may arrive gzip- or
deflate-compressed (``Content-Encoding``). Responses mirror this: outputs asked for with
``binary_data`` (or request-level ``binary_data_output``) follow the JSON header as raw
little-endian bytes.

Everything a client can get wrong raises ``MalformedRequest`` or ``InvalidInput``
(both 400 on ``/v2``), never anything else.
"""

from __future__ import annotations

import gzip
import math
import zlib
from typing import Annotated, Any, NotRequired

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from service.errors import InvalidInput, MalformedRequest, RequestTooLarge
from service.http.deps import parse_json
from service.http.v1.schemas import validate_body
from service.oip.messages import (
    DTYPES,
    MAX_RANK,
    InferRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    array_from_bytes,
    tensor_shape,
)

HEADER_LENGTH = "inference-header-content-length"

_STRICT = ConfigDict(extra="forbid", strict=True)
Dim = Annotated[int, Field(ge=0, le=2**63 - 1)]


class RequestInput(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    name: Annotated[str, Field(min_length=1)]
    datatype: str
    shape: Annotated[list[Dim], Field(max_length=MAX_RANK)]
    parameters: NotRequired[dict[str, Any]]
    data: NotRequired[list[Any]]


class RequestOutput(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    name: str
    parameters: NotRequired[dict[str, Any]]


class InferRequestBody(BaseModel):
    """The Open Inference Protocol's inference request (its JSON header): unknown fields
    are refused (422, naming them)."""

    model_config = _STRICT
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


# -- request body ------------------------------------------------------------------------


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate), refusing output larger than ``limit``."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return raw
    if enc in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        wbits = zlib.MAX_WBITS if raw[:1] and (raw[0] & 0x0F) == 8 else -zlib.MAX_WBITS
    else:
        raise MalformedRequest(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(raw, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise RequestTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
        out += d.flush()
    except zlib.error as exc:
        raise MalformedRequest(f"request body is not valid {enc} data: {exc}") from exc
    if not d.eof:
        raise MalformedRequest(f"request body is truncated {enc} data")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tail, by ``Inference-Header-Content-Length``."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length.strip())
    except ValueError as exc:
        raise MalformedRequest(
            f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
        ) from exc
    if n <= 0 or n > len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes"
        )
    return body[:n], body[n:]


def flat_data(data: object, shape: tuple[int, ...], where: str) -> list[Any]:
    """``data`` as a flat row-major list: given flat, or nested exactly as ``shape``.

    Level by level, without recursion: however deep a client nests its lists, this looks
    at most ``len(shape) + 1`` levels down (at most ``MAX_RANK``) and answers
    ``InvalidInput`` for anything that does not match the shape.
    """
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: data must be a list")
    if not any(isinstance(v, list) for v in data):
        return data
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{where}: shape has more than {MAX_RANK} dimensions")
    level: list[Any] = [data]
    for dim in shape:
        below: list[Any] = []
        for node in level:
            if not isinstance(node, list) or len(node) != dim:
                raise InvalidInput(f"{where}: nested data does not match shape {list(shape)}")
            below.extend(node)
        level = below
    if any(isinstance(v, list) for v in level):
        raise InvalidInput(f"{where}: nested data is deeper than shape {list(shape)}")
    return level


_FLOAT_DATA = frozenset({float, int})
_INT_DATA = frozenset({int})


def _json_numbers(
    data: object, dtype: np.dtype[Any], shape: tuple[int, ...], where: str
) -> np.ndarray:
    count = math.prod(shape)
    if type(data) is list and len(data) == count and dtype.kind in "fiu":
        # the common case, flat numbers, checked with one C-level pass over the types
        # (JSON gives exact ints and floats; bool is a type of its own): the same checks
        # as below, which say what is wrong
        kinds = set(map(type, data))
        if kinds <= (_FLOAT_DATA if dtype.kind == "f" else _INT_DATA):
            return _number_array(data, dtype, where)
    flat = flat_data(data, shape, where)
    if len(flat) != count:
        raise InvalidInput(f"{where}: shape needs {count} elements, data has {len(flat)}")
    if dtype.kind == "b":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInput(f"{where}: BOOL data must be true or false")
        return np.asarray(flat, dtype=dtype)
    for v in flat:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InvalidInput(f"{where}: data must be numbers, got {type(v).__name__}")
        if dtype.kind in "iu" and not isinstance(v, int):
            raise InvalidInput(f"{where}: integer datatype needs integer data")
    return _number_array(flat, dtype, where)


def _number_array(flat: list[Any], dtype: np.dtype[Any], where: str) -> np.ndarray:
    try:
        # a float beyond the datatype's range becomes inf, refused just below; numpy's
        # overflow warning for that cast would only be noise on stderr
        with np.errstate(over="ignore"):
            arr = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"{where}: data does not fit the datatype: {exc}") from exc
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInput(f"{where}: data must be finite (no NaN or Infinity)")
    return arr


def _json_bytes(data: object, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = math.prod(shape)
    flat = flat_data(data, shape, where)
    if len(flat) != count:
        raise InvalidInput(f"{where}: shape needs {count} elements, data has {len(flat)}")
    if not all(isinstance(v, str) for v in flat):
        raise InvalidInput(f"{where}: BYTES data must be strings")
    return np.asarray([v.encode() for v in flat] or [], dtype=object)


def parse_request(header: bytes, binary: bytes) -> InferRequest:
    """Parse the JSON header and slice the binary tail into the inputs that claim it."""
    if not header.strip():
        raise MalformedRequest("request body is empty; send an inference request")
    doc = parse_json(header)
    if not isinstance(doc, dict):
        raise MalformedRequest("inference request must be a JSON object")
    body = validate_body(InferRequestBody, doc)
    parameters = body.parameters or {}
    inputs: list[InputTensor] = []
    offset = 0
    seen: set[str] = set()
    for t in body.inputs:
        name = t["name"]
        where = f"input '{name}'"
        if name in seen:
            raise InvalidInput(f"{where} is given more than once")
        seen.add(name)
        datatype = t["datatype"]
        if datatype not in DTYPES and datatype != "BYTES":
            raise InvalidInput(f"{where}: unsupported datatype {datatype!r}")
        shape = tensor_shape(t["shape"], where)
        params = t.get("parameters") or {}
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
            if "data" in t:
                raise InvalidInput(f"{where}: give either data or binary_data_size, not both")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"{where}: binary_data_size {size} overruns the {len(binary) - offset} "
                    "bytes of binary data left"
                )
            chunk = binary[offset : offset + size]
            offset += size
            array = array_from_bytes(chunk, datatype, shape, where)
        elif "data" in t:
            if datatype == "BYTES":
                array = _json_bytes(t["data"], shape, where)
            else:
                array = _json_numbers(t["data"], DTYPES[datatype], shape, where).reshape(shape)
        else:
            raise InvalidInput(f"{where}: no data and no binary_data_size")
        inputs.append(InputTensor(name, datatype, shape, array))
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    return InferRequest(inputs, _requested_outputs(body.outputs), parameters, body.id)


def _requested_outputs(value: list[RequestOutput] | None) -> list[RequestedOutput] | None:
    if value is None:
        return None
    result: list[RequestedOutput] = []
    for o in value:
        params = o.get("parameters") or {}
        if params.get("classification"):
            raise InvalidInput("the classification extension is not supported")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output '{o['name']}': binary_data must be true or false")
        result.append(RequestedOutput(o["name"], binary))
    return result


# -- response body -----------------------------------------------------------------------


def encode_response(
    model_name: str,
    model_version: int,
    outputs: list[OutputTensor],
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    tensors: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for out in outputs:
        arr = np.ascontiguousarray(out.array, dtype="<f4")
        doc: dict[str, Any] = {"name": out.name, "datatype": "FP32", "shape": list(arr.shape)}
        if out.binary:
            raw = arr.tobytes()
            doc["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            doc["data"] = arr.reshape(-1)
        tensors.append(doc)
    head: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = tensors
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return header, None
    return header + b"".join(tail), len(header)


def compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress a response when the client asked for gzip or deflate (gzip preferred)."""
    accepted = {
        part.split(";")[0].strip().lower()
        for part in (accept_encoding or "").split(",")
        if part.strip() and not part.strip().endswith("q=0")
    }
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=5), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 5), "deflate"
    return body, None
