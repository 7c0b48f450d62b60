"""ONNX export with explicit state, and the verification every written version must pass.

The TorchScript exporter (``dynamo=False``) turns ``nn.LSTM``/``nn.GRU`` into native ONNX
``LSTM``/``GRU`` ops with symbolic batch and time axes in a fraction of a second. (The dynamo
exporter can silently pin the time axis to the example's length on a second export in one
process and leave fixed-length shape annotations behind; the tests check our graphs for both.)

Verification refuses a graph unless
  * onnxruntime agrees with torch on a probe input (max abs diff <= ``TOLERANCE``), and
  * stepping the ONNX graph one step at a time, carrying the state, equals one run over the
    whole sequence (max abs diff <= ``TOLERANCE``).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from torch import nn

TOLERANCE = 1e-5

Array = npt.NDArray[np.generic]


class ExportVerificationError(Exception):
    """The exported graph does not reproduce the model; nothing was written."""


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


def export_torchscript(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = 17,
) -> bytes:
    """Export ``module`` with the TorchScript exporter and return the ONNX bytes."""
    module.eval()
    with (
        tempfile.TemporaryDirectory(prefix="lstm-serve-export-") as tmp,
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        return path.read_bytes()


def rnn_dynamic_axes(
    data_input: str, data_output: str, state_inputs: Sequence[str], state_outputs: Sequence[str]
) -> dict[str, dict[int, str]]:
    """Batch and time axes of batch-first data tensors, batch axis 1 of the state tensors."""
    axes: dict[str, dict[int, str]] = {
        data_input: {0: "batch", 1: "time"},
        data_output: {0: "batch", 1: "time"},
    }
    for name in (*state_inputs, *state_outputs):
        axes[name] = {1: "batch"}
    return axes


def ort_session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def run_graph(
    session: ort.InferenceSession, ports: GraphPorts, data: Array, states: Sequence[Array]
) -> tuple[Array, list[Array]]:
    """One run: returns the data output and the new states (in ``ports.states`` order)."""
    feeds: dict[str, Array] = {ports.input: data}
    for port, value in zip(ports.states, states, strict=True):
        feeds[port.input] = value
    names = [ports.output, *(p.output for p in ports.states)]
    outputs = session.run(names, feeds)
    return np.asarray(outputs[0]), [np.asarray(o) for o in outputs[1:]]


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
        raise ExportVerificationError(
            f"stepped output shape {step_y.shape} differs from whole-run shape {whole_y.shape}"
        )
    diffs = [_max_abs(step_y, whole_y)]
    diffs += [_max_abs(a, b) for a, b in zip(carried, whole_states, strict=True)]
    return max(diffs)


def _max_abs(a: Array, b: Array) -> float:
    if a.shape != b.shape:
        raise ExportVerificationError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def random_states(ports: GraphPorts, batch: int, rng: np.random.Generator) -> list[Array]:
    """Small random initial states, so the check also covers how state enters the graph."""
    out: list[Array] = []
    for port in ports.states:
        shape = list(port.shape)
        shape[port.batch_axis] = batch
        out.append((0.5 * rng.standard_normal(shape)).astype(np.float32))
    return out


@dataclass(frozen=True)
class ParityFigures:
    torch_vs_onnx: float | None
    step_vs_whole: float


def verify_export(
    module: nn.Module,
    onnx_bytes: bytes,
    ports: GraphPorts,
    probe: Array,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> ParityFigures:
    """Check onnxruntime against torch and stepping against one run; raise if either fails.

    ``probe`` is batch-first data whose batch size and length should differ from the export
    example, so a graph with a pinned axis fails here rather than in the service.
    """
    rng = np.random.default_rng(seed)
    session = ort_session(onnx_bytes)
    states = random_states(ports, probe.shape[0], rng)
    onnx_y, onnx_states = run_graph(session, ports, probe, states)
    module.eval()
    with torch.no_grad():
        torch_out = module(torch.from_numpy(probe), *(torch.from_numpy(s) for s in states))
    torch_arrays = [t.detach().numpy() for t in torch_out]
    torch_diff = max(
        _max_abs(a, b) for a, b in zip([onnx_y, *onnx_states], torch_arrays, strict=True)
    )
    stepped = step_vs_whole(session, ports, probe, states)
    if not torch_diff <= tolerance:
        raise ExportVerificationError(
            f"onnxruntime differs from torch by {torch_diff:.3g} (> {tolerance:g})"
        )
    if not stepped <= tolerance:
        raise ExportVerificationError(
            f"stepping with carried state differs from a whole run by {stepped:.3g} "
            f"(> {tolerance:g})"
        )
    return ParityFigures(torch_vs_onnx=torch_diff, step_vs_whole=stepped)
