"""The protocol's inference request and response as both doors read and write them.

The HTTP door (``service.http.v2.codec``: JSON tensors and binary tensor data) and the
gRPC door (``service.grpc.convert``: protobuf messages, raw contents) each turn their
wire format into an ``InferRequest`` and the ``OutputTensor`` list back into theirs;
the tensor checks that do not depend on the wire (shape bounds, byte sizes, finite
floats, Triton's ``BYTES`` serialisation) live here, once.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidInput

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""Protocol datatypes with a fixed element size (``BYTES`` is handled separately)."""

MAX_RANK = 8
MAX_ELEMENTS = 2**32
"""Most elements a tensor's shape may describe (its non-zero dimensions multiplied): even a
tensor with a zero dimension, and so no data, is refused beyond this."""


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray
    """Fixed-size datatypes: the values in ``shape``; ``BYTES``: a flat object array of bytes."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None
    """The output's own ``binary_data`` parameter, None when it does not say."""


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    """None when the request names no outputs: every output is returned."""
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    raw_outputs: bool = False
    """Every output is sent as raw bytes whatever the request says (gRPC's
    ``raw_output_contents``)."""

    @property
    def binary_output_default(self) -> bool:
        return self.raw_outputs or self.parameters.get("binary_data_output") is True


@dataclass(frozen=True)
class OutputTensor:
    name: str
    array: np.ndarray
    """float32 values (this service only returns FP32 tensors)."""
    binary: bool


def tensor_shape(value: list[int], where: str) -> tuple[int, ...]:
    """A tensor's shape, checked: at most ``MAX_RANK`` non-negative dimensions describing
    at most ``MAX_ELEMENTS`` elements."""
    if len(value) > MAX_RANK:
        raise InvalidInput(f"{where}: shape {value} has more than {MAX_RANK} dimensions")
    if any(d < 0 for d in value):
        raise InvalidInput(f"{where}: shape {value} has a negative dimension")
    if math.prod(d for d in value if d) > MAX_ELEMENTS:
        raise InvalidInput(f"{where}: shape {value} describes more than {MAX_ELEMENTS} elements")
    return tuple(value)


def array_from_bytes(raw: bytes, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A tensor sent as raw bytes (HTTP binary data, gRPC raw contents): little-endian
    values of a fixed-size datatype, or Triton's ``BYTES`` serialisation."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, where)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes, got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{where}: data must be finite (no NaN or Infinity)")
    return array


def deserialize_bytes(raw: bytes, count: int, where: str) -> np.ndarray:
    """Triton's BYTES serialisation: per element a little-endian uint32 length, then the bytes."""
    items: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InvalidInput(f"{where}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InvalidInput(f"{where}: BYTES element of {n} bytes overruns the data")
        items.append(raw[pos : pos + n])
        pos += n
    if len(items) != count:
        raise InvalidInput(f"{where}: shape needs {count} elements, data has {len(items)}")
    return np.asarray(items or [], dtype=object)


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)
