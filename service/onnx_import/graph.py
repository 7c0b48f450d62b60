"""Reading a recurrent ONNX graph's explicit state: state input/output pairs (by common
naming patterns or given), the batch axis of every state tensor, the cell. onnx and
onnxruntime only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import onnxruntime as ort

Dim = int | str | None


class ImportProblem(Exception):
    """The graph cannot be imported as given; the message says what option would help."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class StatePair:
    input: TensorInfo
    output: TensorInfo


# (input fragment, output fragment): an input whose name has the first where the output's
# name has the second is a state pair. Tried at the end of the name, then at the start, then
# anywhere; the fragment is never the whole name, so the data pair x -> y is not mistaken.
_PAIR_PATTERNS: tuple[tuple[str, str], ...] = (
    ("_in", "_out"),
    ("in_", "out_"),
    ("_input", "_output"),
    ("input_", "output_"),
    (".in", ".out"),
    ("_0", "_n"),
    ("0", "n"),
    ("_init", "_final"),
    ("init_", "final_"),
    ("initial_", "final_"),
    ("_prev", "_next"),
    ("prev_", "next_"),
    ("_prev", ""),
    ("_in", ""),
    ("_t", "_t1"),
    ("x", "y"),
)

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def tensor_info(arg: ort.NodeArg) -> TensorInfo:
    """A graph input or output as onnxruntime describes it (symbolic dims as names)."""
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorInfo(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def _candidates(name: str) -> list[str]:
    out: list[str] = []
    for a, b in _PAIR_PATTERNS:
        if a == name or a not in name:
            continue
        if name.endswith(a):
            out.append(name[: -len(a)] + b)
        if name.startswith(a):
            out.append(b + name[len(a) :])
        idx = name.rfind(a)
        out.append(name[:idx] + b + name[idx + len(a) :])
    return [c for c in out if c and c != name]


def pair_states(
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    explicit: Sequence[tuple[str, str]] = (),
) -> list[StatePair]:
    """State pairs: the explicit ``(input, output)`` names, else found by naming pattern.

    Only float tensors of equal rank are paired.
    """
    by_in = {t.name: t for t in inputs}
    by_out = {t.name: t for t in outputs}
    pairs: list[StatePair] = []
    if explicit:
        for i, o in explicit:
            if i not in by_in:
                raise ImportProblem(f"--state: graph has no input {i!r} (inputs: {list(by_in)})")
            if o not in by_out:
                raise ImportProblem(f"--state: graph has no output {o!r} (outputs: {list(by_out)})")
            pairs.append(StatePair(by_in[i], by_out[o]))
        return pairs
    taken: set[str] = set()
    for tin in inputs:
        if tin.dtype != "float32":
            continue
        for cand in _candidates(tin.name):
            tout = by_out.get(cand)
            if tout is None or cand in taken or tout.dtype != "float32":
                continue
            if len(tout.shape) != len(tin.shape):
                continue
            pairs.append(StatePair(tin, tout))
            taken.add(cand)
            break
    return pairs


def state_name(tensor_name: str, index: int, count: int) -> str:
    """``c`` for an LSTM cell state, ``h`` for a hidden state (by name, else by order)."""
    lowered = tensor_name.lower()
    tokens = set(re.split(r"[^a-z]+", lowered))
    if count == 1:
        return "h"
    if "cell" in lowered or "c" in tokens or re.search(r"(^|[^a-z])c[0-9xn]?($|[^a-z])", lowered):
        return "c"
    if "hidden" in lowered or "h" in tokens or re.search(r"(^|[^a-z])h[0-9xn]?($|[^a-z])", lowered):
        return "h"
    return "h" if index == 0 else "c"


def batch_axis_of(shape: tuple[Dim, ...], explicit: int | None) -> int:
    if explicit is not None:
        if not 0 <= explicit < len(shape):
            raise ImportProblem(f"--batch-axis {explicit} is outside a rank-{len(shape)} state")
        return explicit
    dynamic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if len(dynamic) != 1:
        raise ImportProblem(
            f"cannot tell the batch axis of a state shaped {list(shape)}; pass --batch-axis"
        )
    return dynamic[0]


def per_sequence(shape: tuple[Dim, ...], axis: int, name: str) -> list[int]:
    """A state's shape without its batch axis; every other dimension must be fixed."""
    rest = [d for i, d in enumerate(shape) if i != axis]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ImportProblem(f"state {name!r} has a non-fixed dimension besides batch: {shape}")
    return [int(d) for d in rest if isinstance(d, int)]


def cell_of(model: onnx.ModelProto, states: int, explicit: str | None) -> str:
    """``lstm`` or ``gru``: as given, else from the graph's ops, else by state count."""
    if explicit:
        return explicit
    ops = {node.op_type for node in model.graph.node}
    if "LSTM" in ops:
        return "lstm"
    if "GRU" in ops:
        return "gru"
    return "lstm" if states == 2 else "gru"
