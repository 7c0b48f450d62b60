"""Running a recurrent ONNX graph with explicit state, and the proof every stored version
passes: stepping it one step at a time while carrying the state equals one run over the
whole sequence (max abs difference <= ``TOLERANCE``). onnxruntime and numpy only: the
importer and the trainer (``service.training.export``) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

TOLERANCE = 1e-5

Array = npt.NDArray[np.generic]


class VerificationError(Exception):
    """The graph does not reproduce the model (or itself, stepped); nothing was written."""


@dataclass(frozen=True)
class StatePort:
    """One state tensor of a graph: its input and output names and full ONNX shape."""

    input: str
    output: str
    shape: tuple[int, ...]
    """Shape including the batch axis, as the graph takes it."""
    batch_axis: int


@dataclass(frozen=True)
class GraphPorts:
    """How to drive a recurrent ONNX graph: data tensor names, layout and state tensors."""

    input: str
    output: str
    states: tuple[StatePort, ...]
    time_axis: int = 1
    sequence_lens: str | None = None
    """A graph input taking each sequence's length (int32 ``[batch]``), filled with the full
    length of every run."""
    extra_outputs: tuple[str, ...] = ()
    """Further per-step data outputs shaped like ``output`` (a likelihood head's scale):
    checked with it, joined to it along the last axis."""


def ort_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """A single-threaded CPU session for checks."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def run_graph(
    session: ort.InferenceSession, ports: GraphPorts, data: Array, states: Sequence[Array]
) -> tuple[Array, list[Array]]:
    """One run: returns the data output (with any ``extra_outputs`` joined to it) and the
    new states (in ``ports.states`` order)."""
    feeds: dict[str, Array] = {ports.input: data}
    if ports.sequence_lens is not None:
        batch_axis = 1 - ports.time_axis
        feeds[ports.sequence_lens] = np.full(
            data.shape[batch_axis], data.shape[ports.time_axis], dtype=np.int32
        )
    for port, value in zip(ports.states, states, strict=True):
        feeds[port.input] = value
    data_names = [ports.output, *ports.extra_outputs]
    names = [*data_names, *(p.output for p in ports.states)]
    outputs = [np.asarray(o) for o in session.run(names, feeds)]
    k = len(data_names)
    y = outputs[0] if k == 1 else np.concatenate(outputs[:k], axis=-1)
    return y, outputs[k:]


def step_vs_whole(
    session: ort.InferenceSession, ports: GraphPorts, data: Array, states: Sequence[Array]
) -> float:
    """Max abs difference between one whole-sequence run and single steps carrying state.

    Compares every step's output and the final state.
    """
    whole_y, whole_states = run_graph(session, ports, data, states)
    carried = list(states)
    pieces: list[Array] = []
    for t in range(data.shape[ports.time_axis]):
        step = np.take(data, [t], axis=ports.time_axis)
        y, carried = run_graph(session, ports, step, carried)
        pieces.append(y)
    step_y = np.concatenate(pieces, axis=ports.time_axis)
    if step_y.shape != whole_y.shape:
        raise VerificationError(
            f"stepped output shape {step_y.shape} differs from whole-run shape {whole_y.shape}"
        )
    diffs = [max_abs(step_y, whole_y)]
    diffs += [max_abs(a, b) for a, b in zip(carried, whole_states, strict=True)]
    return max(diffs)


def max_abs(a: Array, b: Array) -> float:
    """The largest absolute difference between two arrays of one shape (float64)."""
    if a.shape != b.shape:
        raise VerificationError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def random_states(ports: GraphPorts, batch: int, rng: np.random.Generator) -> list[Array]:
    """Small random initial states, so the check also covers how state enters the graph."""
    out: list[Array] = []
    for port in ports.states:
        shape = list(port.shape)
        shape[port.batch_axis] = batch
        out.append((0.5 * rng.standard_normal(shape)).astype(np.float32))
    return out
