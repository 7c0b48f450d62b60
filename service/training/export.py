"""ONNX export with explicit state, and the verification every trained version must pass.

The TorchScript exporter (``dynamo=False``) turns ``nn.LSTM``/``nn.GRU`` into native ONNX
``LSTM``/``GRU`` ops with symbolic batch and time axes in a fraction of a second. (The dynamo
exporter can silently pin the time axis to the example's length on a second export in one
process and leave fixed-length shape annotations behind; the tests check our graphs for both.)

Verification refuses a graph unless
  * onnxruntime agrees with torch on a probe input (max abs diff <= ``TOLERANCE``), and
  * stepping the ONNX graph one step at a time, carrying the state, equals one run over the
    whole sequence (``service.onnx_import.verify``, which the importer uses too).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.onnx_import.verify import (
    TOLERANCE,
    Array,
    GraphPorts,
    VerificationError,
    max_abs,
    ort_session,
    random_states,
    run_graph,
    step_vs_whole,
)


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
    k = 1 + len(ports.extra_outputs)
    if k > 1:  # the graph's data outputs joined, as run_graph gives them
        torch_arrays = [np.concatenate(torch_arrays[:k], axis=-1), *torch_arrays[k:]]
    torch_diff = max(
        max_abs(a, b) for a, b in zip([onnx_y, *onnx_states], torch_arrays, strict=True)
    )
    stepped = step_vs_whole(session, ports, probe, states)
    if not torch_diff <= tolerance:
        raise VerificationError(
            f"onnxruntime differs from torch by {torch_diff:.3g} (> {tolerance:g})"
        )
    if not stepped <= tolerance:
        raise VerificationError(
            f"stepping with carried state differs from a whole run by {stepped:.3g} "
            f"(> {tolerance:g})"
        )
    return ParityFigures(torch_vs_onnx=torch_diff, step_vs_whole=stepped)
