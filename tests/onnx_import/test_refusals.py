"""What ``lstm-serve import`` refuses, and the message that says why; and the layouts the
frameworks above never produce (``layout=1``, a ``sequence_lens`` graph input), built with
onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.models.registry import ModelRegistry
from service.models.store import read_version
from service.onnx_import.cli import main as import_main
from tests.onnx_import.cases import FIXTURES

F, H = 2, 3


def _save(tmp_path: Path, graph: onnx.GraphProto, name: str) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _weights(rng: np.random.Generator) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array((rng.standard_normal(s) * 0.5).astype(np.float32), n)
        for n, s in (("W", (1, 4 * H, F)), ("R", (1, 4 * H, H)), ("B", (1, 8 * H)))
    ]


def _lstm_graph(
    layout: int = 0, lens: bool = False, initial: float | None = None, last_only: bool = False
) -> onnx.GraphProto:
    """One LSTM node; ``initial``: a filled initial state shaped from the input."""
    rng = np.random.default_rng(0)
    dims: list[str | int] = ["B", "T", F] if layout == 1 else ["T", "B", F]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    nodes = []
    inits = _weights(rng)
    lstm_in = ["x", "W", "R", "B", "lens" if lens else "", ""]
    if lens:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["B"]))
    if initial is not None:
        batch_axis = 0 if layout == 1 else 1
        inits += [
            numpy_helper.from_array(np.array([batch_axis], dtype=np.int64), "axis"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([H], dtype=np.int64), "hid"),
        ]
        parts = ["b", "one", "hid"] if layout == 1 else ["one", "b", "hid"]
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "axis"], ["b"]),
            helper.make_node("Concat", parts, ["h_shape"], axis=0),
            helper.make_node(
                "ConstantOfShape",
                ["h_shape"],
                ["h_init"],
                value=numpy_helper.from_array(np.array([initial], dtype=np.float32)),
            ),
        ]
        lstm_in[5] = "h_init"
    nodes.append(helper.make_node("LSTM", lstm_in, ["Y", "Y_h"], hidden_size=H, layout=layout))
    inits.append(numpy_helper.from_array(np.array([2 if layout == 1 else 1], np.int64), "sq"))
    if last_only:
        inits.append(numpy_helper.from_array(np.array([0 if layout == 0 else 1], np.int64), "sq0"))
        nodes.append(helper.make_node("Squeeze", ["Y_h", "sq0"], ["y"]))
        out_dims: list[str | int] = ["B", H]
    else:
        nodes.append(helper.make_node("Squeeze", ["Y", "sq"], ["y"]))
        out_dims = ["B", "T", H] if layout == 1 else ["T", "B", H]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)]
    return helper.make_graph(nodes, "lstm", inputs, outputs, inits)


def _run(tmp_path: Path, path: Path, *extra: str) -> int:
    store = tmp_path / "store"
    return import_main([str(path), "--name", "m", "--store", str(store), *extra])


def test_an_unrolled_recurrence_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, FIXTURES / "torch_unrolled_cell.onnx") == 1
    err = capsys.readouterr().err
    assert "no LSTM, GRU or RNN node and no state input/output pair" in err
    assert "unrolled into plain ops and cannot be stepped" in err
    assert not (tmp_path / "store").exists()


def _scan_graph() -> onnx.GraphProto:
    """A running sum over time in a Scan: a recurrence that is no LSTM/GRU/RNN node."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["y_t"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["B", F]),
            helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["B", F]),
        ],
        [
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["B", F]),
            helper.make_tensor_value_info("y_t", TensorProto.FLOAT, ["B", F]),
        ],
    )
    zero = numpy_helper.from_array(np.zeros([1], np.float32), "zero")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    return helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["sum"], keepdims=0),
            helper.make_node("Mul", ["sum", "zero"], ["s0"]),
            helper.make_node(
                "Scan",
                ["s0", "x"],
                ["s_final", "y"],
                body=body,
                num_scan_inputs=1,
                scan_input_axes=[1],
                scan_output_axes=[1],
            ),
        ],
        "scan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", F])],
        [zero, axes],
    )


def _loop_graph() -> onnx.GraphProto:
    """An LSTM node inside a Loop body: the outer Loop is what carries the recurrence."""
    rng = np.random.default_rng(1)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("LSTM", ["v_in", "W", "R", "B"], ["Y"], hidden_size=H),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["T", "B", F]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["T", "B", F]),
        ],
    )
    trips = numpy_helper.from_array(np.array(2, np.int64), "trips")
    return helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)],
        "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "B", F])],
        [trips, *_weights(rng)],
    )


@pytest.mark.parametrize(
    ("graph", "op"), [(_scan_graph, "Scan"), (_loop_graph, "Loop")], ids=["scan", "loop"]
)
def test_a_scan_or_loop_recurrence_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], graph: object, op: str
) -> None:
    assert callable(graph)
    assert _run(tmp_path, _save(tmp_path, graph(), op.lower())) == 1
    err = capsys.readouterr().err
    assert f"the recurrence is in {op} " in err
    assert "not in LSTM/GRU/RNN nodes" in err
    assert not (tmp_path / "store").exists()


def test_a_non_zero_initial_state_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(tmp_path, _lstm_graph(initial=0.5), "nonzero")
    assert _run(tmp_path, path) == 1
    err = capsys.readouterr().err
    assert "the rewritten graph from zero state differs from the original" in err
    assert "non-zero initial state" in err
    zeros = _save(tmp_path, _lstm_graph(initial=0.0), "zeros")
    assert _run(tmp_path, zeros) == 0


def test_an_output_without_a_time_axis_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, _save(tmp_path, _lstm_graph(last_only=True), "last")) == 1
    assert "not one output per step" in capsys.readouterr().err


def test_an_unpaired_state_input_is_not_silently_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = _lstm_graph()
    graph.input.append(helper.make_tensor_value_info("memory", TensorProto.FLOAT, [1, "B", H]))
    graph.node[0].input[5] = "memory"
    assert _run(tmp_path, _save(tmp_path, graph, "memory")) == 1
    err = capsys.readouterr().err
    assert "['memory'] give the initial state" in err and "--state IN=OUT" in err


def test_a_fixed_shape_export_is_refused_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = _lstm_graph()
    for t in (*graph.input, *graph.output):
        for d, v in zip(t.type.tensor_type.shape.dim, (5, 2), strict=False):
            d.dim_value = v
    assert _run(tmp_path, _save(tmp_path, graph, "fixed")) == 1
    assert "exported with fixed batch and time axes" in capsys.readouterr().err


def test_sequence_lens_input_is_filled_by_the_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``sequence_lens`` graph input is left to the service, which fills it every run."""
    layout = 0
    path = _save(tmp_path, _lstm_graph(layout=layout, lens=True), f"layout{layout}")
    assert _run(tmp_path, path) == 0
    out = capsys.readouterr().out
    assert f"layout attribute {layout}" in out
    assert "sequence_lens: graph input 'lens', filled by the service" in out
    m = read_version(tmp_path / "store" / "m" / "1").manifest
    assert m.graph.time_major is (layout == 0) and m.graph.sequence_lens == "lens"
    assert [(s.name, s.shape, s.batch_axis) for s in m.state] == [
        ("h", [1, H], 0 if layout == 1 else 1),
        ("c", [1, H], 0 if layout == 1 else 1),
    ]
    registry = ModelRegistry(tmp_path / "store")
    registry.load()
    model = registry.get("m")
    x = np.random.default_rng(2).standard_normal((2, 7, F)).astype(np.float32)
    zero = [model.zero_state(), model.zero_state()]
    whole, _ = model.run_batch(x, zero)
    first, states = model.run_batch(x[:, :3], zero)
    rest, _ = model.run_batch(x[:, 3:], states)
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), whole, atol=1e-5)


def test_a_batch_major_layout_attribute_is_refused_as_onnxruntime_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """onnxruntime's CPU kernels do not run ``layout=1`` recurrent nodes: the import stops
    with onnxruntime's reason instead of storing a model the service cannot load."""
    assert _run(tmp_path, _save(tmp_path, _lstm_graph(layout=1), "layout1")) == 1
    err = capsys.readouterr().err
    assert "not a loadable ONNX model" in err and "layout == 1" in err


def test_garbage_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not onnx")
    assert _run(tmp_path, path) == 1
    assert "not a loadable ONNX model" in capsys.readouterr().err
