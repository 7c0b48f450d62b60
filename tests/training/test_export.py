"""Export parity, and the two silent traps of RNN export (pinned time axis, shape warnings)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from service.onnx_import.verify import (
    TOLERANCE,
    GraphPorts,
    StatePort,
    VerificationError,
    ort_session,
    run_graph,
)
from service.training.export import export_torchscript, rnn_dynamic_axes, verify_export
from service.training.networks import CharLM, Forecaster, RecurrentNet

pytestmark = [pytest.mark.train]

EXAMPLE_BATCH, EXAMPLE_TIME = 2, 5


def _ports(model: RecurrentNet, data_in: str = "x", data_out: str = "y") -> GraphPorts:
    states = [StatePort("h0", "hn", (model.layers, 1, model.hidden), 1)]
    if model.cell == "lstm":
        states.append(StatePort("c0", "cn", (model.layers, 1, model.hidden), 1))
    return GraphPorts(input=data_in, output=data_out, states=tuple(states))


def _export(model: RecurrentNet, example: Tensor, data_in: str = "x") -> bytes:
    ports = _ports(model, data_in)
    names_in = [p.input for p in ports.states]
    names_out = [p.output for p in ports.states]
    return export_torchscript(
        model,
        (example, *model.zero_state(example.shape[0])),
        [data_in, *names_in],
        ["y", *names_out],
        rnn_dynamic_axes(data_in, "y", names_in, names_out),
    )


def _forecaster(cell: str, layers: int = 2, seed: int = 0) -> Forecaster:
    torch.manual_seed(seed)
    return Forecaster(cell, 3, 16, layers, [0.5, 1.0, 2.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_forecaster_export_matches_torch_and_steps_like_a_whole_run(cell: str, layers: int) -> None:
    model = _forecaster(cell, layers)
    onnx_bytes = _export(model, torch.zeros(EXAMPLE_BATCH, EXAMPLE_TIME, 3))
    probe = np.random.default_rng(1).standard_normal((3, 23, 3)).astype(np.float32)
    parity = verify_export(model, onnx_bytes, _ports(model), probe)
    assert parity.torch_vs_onnx is not None and parity.torch_vs_onnx <= TOLERANCE
    assert parity.step_vs_whole <= TOLERANCE
    ops = {node.op_type for node in onnx.load_from_string(onnx_bytes).graph.node}
    assert cell.upper() in ops, "the RNN must be a native ONNX op"
    assert "Loop" not in ops and "Scan" not in ops


def test_charlm_export_matches_torch_and_steps_like_a_whole_run() -> None:
    torch.manual_seed(0)
    model = CharLM("lstm", 30, 8, 16, 1)
    onnx_bytes = _export(model, torch.zeros(EXAMPLE_BATCH, EXAMPLE_TIME, dtype=torch.int64))
    probe = np.random.default_rng(1).integers(0, 30, size=(4, 19), dtype=np.int64)
    parity = verify_export(model, onnx_bytes, _ports(model), probe)
    assert parity.torch_vs_onnx is not None and parity.torch_vs_onnx <= TOLERANCE
    assert parity.step_vs_whole <= TOLERANCE


def _symbolic(dim: onnx.TensorShapeProto.Dimension) -> bool:
    return dim.HasField("dim_param") and not dim.HasField("dim_value")


def _assert_dynamic(onnx_bytes: bytes) -> None:
    graph = onnx.load_from_string(onnx_bytes).graph
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.name in {"x", "y"}:
            assert _symbolic(dims[0]) and _symbolic(dims[1]), f"{value.name}: {dims}"
        else:
            assert _symbolic(dims[1]), f"{value.name}: batch axis is fixed"
    # No leftover fixed-length annotation of an intermediate tensor that has a time axis.
    for info in graph.value_info:
        dims = info.type.tensor_type.shape.dim
        assert all(d.dim_value != EXAMPLE_TIME for d in dims), f"{info.name} pinned to T=5"


def test_a_second_export_of_the_same_rnn_type_keeps_the_time_axis_dynamic() -> None:
    """The dynamo exporter's trap: a second export in one process pinned T to the example."""
    first = _export(_forecaster("lstm", seed=1), torch.zeros(EXAMPLE_BATCH, EXAMPLE_TIME, 3))
    second = _export(_forecaster("lstm", seed=2), torch.zeros(EXAMPLE_BATCH, EXAMPLE_TIME, 3))
    _assert_dynamic(first)
    _assert_dynamic(second)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_other_lengths_and_batch_sizes_run_without_onnxruntime_warnings(
    cell: str, capfd: pytest.CaptureFixture[str]
) -> None:
    model = _forecaster(cell)
    onnx_bytes = _export(model, torch.zeros(EXAMPLE_BATCH, EXAMPLE_TIME, 3))
    _assert_dynamic(onnx_bytes)
    session = ort_session(onnx_bytes)
    ports = _ports(model)
    capfd.readouterr()
    for batch, length in [(1, 1), (EXAMPLE_BATCH, EXAMPLE_TIME), (7, 64), (3, 300)]:
        x = np.zeros((batch, length, 3), dtype=np.float32)
        states = [np.zeros((2, batch, 16), dtype=np.float32) for _ in ports.states]
        y, new_states = run_graph(session, ports, x, states)
        assert y.shape == (batch, length, 3)
        assert all(s.shape == (2, batch, 16) for s in new_states)
    err = capfd.readouterr().err
    assert "Warning" not in err and "VerifyOutputSizes" not in err, err


class _LooksAtTheFuture(nn.Module):
    """Its output at t depends on later steps, so stepping can never equal a whole run."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _forecaster("gru", layers=1)

    def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        y, hn = self.inner(x, h0)
        return y - y.mean(dim=1, keepdim=True), hn


def test_verification_refuses_a_graph_that_does_not_step() -> None:
    model = _LooksAtTheFuture()
    onnx_bytes = export_torchscript(
        model,
        (torch.zeros(2, 5, 3), torch.zeros(1, 2, 16)),
        ["x", "h0"],
        ["y", "hn"],
        rnn_dynamic_axes("x", "y", ["h0"], ["hn"]),
    )
    ports = GraphPorts("x", "y", (StatePort("h0", "hn", (1, 1, 16), 1),))
    probe = np.random.default_rng(0).standard_normal((2, 9, 3)).astype(np.float32)
    with pytest.raises(VerificationError, match="stepping"):
        verify_export(model, onnx_bytes, ports, probe)


def test_verification_refuses_a_graph_that_differs_from_torch() -> None:
    exported = _forecaster("lstm", seed=1)
    other = _forecaster("lstm", seed=2)
    onnx_bytes = _export(exported, torch.zeros(2, 5, 3))
    probe = np.random.default_rng(0).standard_normal((2, 9, 3)).astype(np.float32)
    with pytest.raises(VerificationError, match="differs from torch"):
        verify_export(other, onnx_bytes, _ports(other), probe)
