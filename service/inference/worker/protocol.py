"""The messages between the server and a model worker process, and how they travel.

A message is a typed tuple below, pickled with protocol 5: its numpy arrays leave the
pickle as out-of-band buffers (``pickle.Pickler(..., buffer_callback=...)``) and travel as
their raw bytes beside it, and ``pickle.loads(..., buffers=...)`` makes the arrays views on
the received frame (writable: the frame is a ``bytearray``). An array's bytes are copied
once into the frame and read once from the socket.

A frame on the socket (private to the two processes, which are one program)::

    head      two u32, little-endian: the bytes after the head, the number of buffers n
    lengths   n + 1 u64: the pickle's length, then each buffer's
    buffers   each buffer's bytes, padded to a multiple of 8 (so every array is aligned)
    pickle    the message, its arrays out of band

Server → worker: ``Load`` (no reply) and ``Run``. Worker → server, one reply per
``Run``, in order (a worker runs one batch at a time, so replies carry no ids): ``Ran``,
``RanAlone`` or ``Failure``.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from service.errors import InferenceError
from service.models.manifest import Manifest

HEAD = struct.Struct("<II")
"""A frame's head: the bytes after it, and the number of out-of-band buffers."""
_LENGTH = struct.Struct("<Q")
_ZEROS = bytes(8)


class Version(NamedTuple):
    """A model version for the worker to load: its key (``name:version``), the manifest's
    sha256 (a replaced file is a new version), the manifest and the ONNX file's path."""

    key: str
    sha256: str
    manifest: Manifest
    onnx_path: str


class Load(NamedTuple):
    """Load ``versions``; forget every loaded key not in ``live``."""

    versions: list[Version]
    live: list[str]


class Group(NamedTuple):
    """Sequences of one length, stacked: inputs ``x`` ``[rows, time, ...]`` in the data's
    own units, each state ``[rows, ...]`` by name, and the index of the call that owns each
    row (int32), so that a failed batch can be rerun call by call."""

    x: np.ndarray
    states: dict[str, np.ndarray]
    calls: np.ndarray


class Run(NamedTuple):
    """Run ``groups`` through the version ``key`` (one onnxruntime run per group)."""

    key: str
    groups: list[Group]


class GroupOut(NamedTuple):
    """One group's outputs, rows in the group's order: ``y`` in model units, ``wire`` (the
    outputs in data units, for regression models), each final state (batch first,
    C-contiguous) and the seconds the run took."""

    y: np.ndarray
    wire: np.ndarray | None
    finals: dict[str, np.ndarray]
    seconds: float


class Failure(NamedTuple):
    """An error: ``InferenceError`` (the input broke the model) when ``inference``, else
    an unexpected one. As a reply: the whole batch failed (a batch of one call, or a model
    the worker could not load)."""

    inference: bool
    message: str


class Ran(NamedTuple):
    """Every group ran: their outputs, in the ``Run``'s order."""

    outs: list[GroupOut]


class RanAlone(NamedTuple):
    """The batch failed and each call was run alone. Per call (index as in ``Group.calls``):
    its error, or per group its rows' outputs (``None`` where it had no rows)."""

    per_call: list[list[GroupOut | None] | Failure]


Request = Load | Run
Reply = Ran | RanAlone | Failure


def failure(exc: Exception) -> Failure:
    """``exc`` as a ``Failure``."""
    return Failure(isinstance(exc, InferenceError), str(exc) or type(exc).__name__)


_Reduced = tuple[Callable[..., Any], tuple[Any, ...]]


def from_buffer(buffer: memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array sent out of band, as a view on its received bytes (``_reduce_array``)."""
    return np.ndarray(shape, dtype, buffer)


def _reduce_array(a: np.ndarray) -> _Reduced:
    """How an array is pickled here: its C-order bytes out of band, its dtype as a string.
    numpy's own pickling does the same but reduces the dtype too, and costs twice as much
    per array (this runs on the event loop for every array of every batch)."""
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return from_buffer, (pickle.PickleBuffer(a), a.dtype.str, a.shape)  # type: ignore[arg-type]


def _reduce_message(m: tuple[Any, ...]) -> _Reduced:
    """A message as its class and fields (the default, ``__getnewargs__``, costs more)."""
    return type(m), tuple(m)


_MESSAGES: tuple[type[tuple[object, ...]], ...] = (
    Version,
    Load,
    Group,
    Run,
    GroupOut,
    Failure,
    Ran,
    RanAlone,
)
_REDUCERS: dict[type, Callable[[Any], _Reduced]] = {
    np.ndarray: _reduce_array,
    **dict.fromkeys(_MESSAGES, _reduce_message),
}


def encode(message: Request | Reply) -> bytes:
    """``message`` as one frame."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    pickler = pickle.Pickler(out, 5, buffer_callback=buffers.append)
    pickler.dispatch_table = _REDUCERS
    pickler.dump(message)
    data = out.getbuffer()
    if not buffers:
        return b"".join((HEAD.pack(_LENGTH.size + len(data), 0), _LENGTH.pack(len(data)), data))
    raws = [b.raw() for b in buffers]
    sizes = [r.nbytes for r in raws]
    parts: list[bytes | memoryview] = [b"", struct.pack(f"<{len(sizes) + 1}Q", len(data), *sizes)]
    for raw, size in zip(raws, sizes, strict=True):
        parts.append(raw)
        if size % 8:
            parts.append(_ZEROS[size % 8 :])
    parts.append(data)
    body = sum(map(len, parts))
    parts[0] = HEAD.pack(body, len(sizes))
    return b"".join(parts)


def frame_size(head: bytes | bytearray | memoryview) -> int:
    """The whole frame's length, from its first ``HEAD.size`` bytes."""
    body, _ = HEAD.unpack_from(head)
    return HEAD.size + int(body)


def decode(frame: bytearray | bytes) -> Any:
    """The message in ``frame`` (one whole frame). Its arrays are views on ``frame``."""
    view = memoryview(frame)
    _, count = HEAD.unpack_from(view)
    at = HEAD.size
    size, *sizes = struct.unpack_from(f"<{count + 1}Q", view, at)
    at += _LENGTH.size * (count + 1)
    buffers: list[memoryview] = []
    for length in sizes:
        buffers.append(view[at : at + length])
        at += length + (-length % 8)
    return pickle.loads(view[at : at + size], buffers=buffers)


def stacked(rows: Sequence[np.ndarray], dtype: np.dtype[Any] | None = None) -> np.ndarray:
    """``np.array(rows, dtype)``, made from the rows' bytes joined when every row is a
    C-contiguous array of one dtype (``dtype``, or the first row's) and one shape: a C-level
    join instead of numpy's per-row look at a Python list, on the event loop for every
    batch. Raises ``ValueError`` as numpy does for rows that do not stack."""
    first = rows[0]
    shape = first.shape
    want = first.dtype if dtype is None else dtype
    for row in rows:
        if row.dtype is not want or row.shape != shape:
            return np.array(rows, dtype=dtype)
    try:
        data = b"".join(rows)  # type: ignore[arg-type]  # arrays are bytes-like (buffers)
    except TypeError:  # a row that is not C-contiguous is no simple buffer
        return np.array(rows, dtype=dtype)
    return np.ndarray((len(rows), *shape), want, data)
