"""Tiny random-weight LSTM/GRU models built directly with onnx.helper, for fast core tests.

They follow the same graph conventions as the trained models (batch-first data, state
``[layers, batch, hidden]``) unless told otherwise, and are written through the real
model store so their manifests and sha256 are genuine.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.models.manifest import (
    Distribution,
    FeaturesInput,
    Feedback,
    GraphSpec,
    LogitsOutput,
    Manifest,
    Parity,
    RegressionOutput,
    StateTensor,
    TextInput,
)
from service.models.store import write_version

VOCAB = list(" abcdefghijklmnopqrstuvwxyz.,")


def _rnn_graph(
    cell: str,
    in_size: int,
    hidden: int,
    out_size: int,
    text: bool,
    seed: int,
    probabilistic: bool = False,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    gates = 4 if cell == "lstm" else 3

    def init(name: str, shape: tuple[int, ...], scale: float = 0.4) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    inits = [
        init("W", (1, gates * hidden, in_size)),
        init("R", (1, gates * hidden, hidden)),
        init("B", (1, 2 * gates * hidden), 0.1),
        init("Wout", (hidden, out_size)),
        init("bout", (out_size,), 0.1),
    ]
    nodes = []
    if text:
        inits.append(init("emb", (len(VOCAB), in_size), 1.0))
        nodes.append(helper.make_node("Gather", ["emb", "x"], ["xe"], axis=0))
        src = "xe"
    else:
        src = "x"
    nodes.append(helper.make_node("Transpose", [src], ["xt"], perm=[1, 0, 2]))
    if cell == "lstm":
        nodes.append(
            helper.make_node(
                "LSTM",
                ["xt", "W", "R", "B", "", "h0", "c0"],
                ["Y", "Yh", "Yc"],
                hidden_size=hidden,
            )
        )
    else:
        nodes.append(
            helper.make_node(
                "GRU",
                ["xt", "W", "R", "B", "", "h0"],
                ["Y", "Yh"],
                hidden_size=hidden,
                linear_before_reset=1,
            )
        )
    nodes += [
        helper.make_node("Squeeze", ["Y", "one"], ["Ys"]),
        helper.make_node("Transpose", ["Ys"], ["Yb"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["Yb", "Wout"], ["Ym"]),
        helper.make_node("Add", ["Ym", "bout"], ["y"]),
        helper.make_node("Identity", ["Yh"], ["hn"]),
    ]
    inits.append(numpy_helper.from_array(np.asarray([1], dtype=np.int64), "one"))
    if probabilistic:  # a likelihood head: scale = softplus(h Ws + bs), beside the mean
        inits += [init("Ws", (hidden, out_size)), init("bs", (out_size,), 0.1)]
        nodes += [
            helper.make_node("MatMul", ["Yb", "Ws"], ["Sm"]),
            helper.make_node("Add", ["Sm", "bs"], ["Sa"]),
            helper.make_node("Softplus", ["Sa"], ["scale"]),
        ]
    inputs = [
        helper.make_tensor_value_info(
            "x",
            TensorProto.INT64 if text else TensorProto.FLOAT,
            ["batch", "time"] if text else ["batch", "time", in_size],
        ),
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", hidden]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", out_size]),
        helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, "batch", hidden]),
    ]
    if probabilistic:
        outputs.append(
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", "time", out_size])
        )
    if cell == "lstm":
        inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, "batch", hidden]))
        nodes.append(helper.make_node("Identity", ["Yc"], ["cn"]))
        outputs.append(helper.make_tensor_value_info("cn", TensorProto.FLOAT, [1, "batch", hidden]))
    graph = helper.make_graph(nodes, f"tiny_{cell}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_model(
    root: Path,
    name: str,
    cell: str = "lstm",
    version: int = 1,
    features: int = 3,
    hidden: int = 8,
    text: bool = False,
    seed: int = 0,
    autoregressive: bool = True,
    probabilistic: bool = False,
) -> Manifest:
    """``probabilistic``: a Gaussian likelihood head (graph output ``scale``, manifest
    ``distribution``)."""
    in_size = 6 if text else features
    out_size = len(VOCAB) if text else features
    model = _rnn_graph(cell, in_size, hidden, out_size, text, seed, probabilistic)
    state = [StateTensor(name="h", input="h0", output="hn", shape=[1, hidden])]
    if cell == "lstm":
        state.append(StateTensor(name="c", input="c0", output="cn", shape=[1, hidden]))
    names = [f"f{i}" for i in range(features)]
    manifest = Manifest(
        name=name,
        version=version,
        description=f"tiny random {cell} for tests",
        task="language_model" if text else "regression",
        cell="lstm" if cell == "lstm" else "gru",
        layers=1,
        hidden_size=hidden,
        sha256="0" * 64,
        graph=GraphSpec(input="x", output="y", input_dtype="int64" if text else "float32"),
        input=(
            TextInput(vocab_size=len(VOCAB), vocab=VOCAB)
            if text
            else FeaturesInput(
                size=features,
                names=names,
                mean=[float(i) for i in range(features)],
                std=[2.0] * features,
            )
        ),
        output=(
            LogitsOutput(size=len(VOCAB))
            if text
            else RegressionOutput(
                size=features,
                names=names,
                mean=[float(i) for i in range(features)],
                std=[2.0] * features,
            )
        ),
        state=state,
        feedback=Feedback(
            autoregressive=autoregressive or text,
            output_index=list(range(features)) if autoregressive and not text else [],
        ),
        metrics={},
        parity=Parity(step_vs_whole=0.0),
        distribution=Distribution(scale_output="scale") if probabilistic else None,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    write_version(root, manifest, model.SerializeToString())
    return manifest


def make_tiny_store(root: Path) -> Path:
    """A store with a regression LSTM (two versions), a GRU and a character LSTM."""
    write_tiny_model(root, "tiny_lstm", "lstm", version=1, seed=1)
    write_tiny_model(root, "tiny_lstm", "lstm", version=2, seed=2)
    write_tiny_model(root, "tiny_gru", "gru", seed=3)
    write_tiny_model(root, "tiny_char", "lstm", text=True, hidden=12, seed=4)
    return root
