"""``lstm-serve import`` on models exported here with other names and layouts than ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from service.models.registry import ModelRegistry
from service.models.store import read_version
from service.onnx_import.cli import main as import_main
from service.onnx_import.graph import TensorInfo, pair_states, state_name
from service.training.export import export_torchscript

pytestmark = [pytest.mark.train]


class BatchFirstStateLSTM(nn.Module):
    """Time-major LSTM inside; batch-first data and state ``[batch, layers, hidden]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(3, 12, num_layers=2)
        self.head = nn.Linear(12, 2)

    def forward(
        self, input: Tensor, state_h_in: Tensor, state_c_in: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        h0 = state_h_in.transpose(0, 1).contiguous()
        c0 = state_c_in.transpose(0, 1).contiguous()
        out, (hn, cn) = self.lstm(input.transpose(0, 1), (h0, c0))
        return self.head(out).transpose(0, 1), hn.transpose(0, 1), cn.transpose(0, 1)


class TimeMajorGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.gru = nn.GRU(4, 10)
        self.head = nn.Linear(10, 4)

    def forward(self, x: Tensor, hidden_in: Tensor) -> tuple[Tensor, Tensor]:
        out, hn = self.gru(x, hidden_in)
        return self.head(out), hn


class CharGRU(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Embedding(vocab, 6)
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.head = nn.Linear(8, vocab)

    def forward(self, ids: Tensor, hx: Tensor) -> tuple[Tensor, Tensor]:
        out, hy = self.gru(self.embed(ids), hx)
        return self.head(out), hy


class PeeksAhead(TimeMajorGRU):
    def forward(self, x: Tensor, hidden_in: Tensor) -> tuple[Tensor, Tensor]:
        y, hn = super().forward(x, hidden_in)
        return y - y.mean(dim=0, keepdim=True), hn


@pytest.fixture
def foreign_lstm(tmp_path: Path) -> Path:
    path = tmp_path / "foreign_lstm.onnx"
    onnx_bytes = export_torchscript(
        BatchFirstStateLSTM(),
        (torch.zeros(2, 5, 3), torch.zeros(2, 2, 12), torch.zeros(2, 2, 12)),
        ["input", "state_h_in", "state_c_in"],
        ["output", "state_h_out", "state_c_out"],
        {
            "input": {0: "batch", 1: "time"},
            "output": {0: "batch", 1: "time"},
            **{n: {0: "batch"} for n in ("state_h_in", "state_c_in")},
            **{n: {0: "batch"} for n in ("state_h_out", "state_c_out")},
        },
    )
    path.write_bytes(onnx_bytes)
    return path


def _export_time_major(tmp_path: Path, module: nn.Module, name: str) -> Path:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(
        export_torchscript(
            module,
            (torch.zeros(5, 2, 4), torch.zeros(1, 2, 10)),
            ["x", "hidden_in"],
            ["y", "hidden_out"],
            {
                "x": {0: "seq_len", 1: "batch"},
                "y": {0: "seq_len", 1: "batch"},
                "hidden_in": {1: "batch"},
                "hidden_out": {1: "batch"},
            },
        )
    )
    return path


def _chunked_equals_whole(store: Path, name: str, x: np.ndarray) -> None:
    """Through the serving registry: chunks carrying state equal one whole run."""
    registry = ModelRegistry(store)
    registry.load()
    assert registry.errors == []
    model = registry.get(name)
    batch = x.shape[0]
    zero = [model.zero_state() for _ in range(batch)]
    whole, whole_states = model.run_batch(x, zero)
    states = zero
    pieces = []
    for start in range(0, x.shape[1], 3):
        y, states = model.run_batch(x[:, start : start + 3], states)
        pieces.append(y)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, atol=1e-5)
    for got, want in zip(states, whole_states, strict=True):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)


def test_import_pairs_batch_first_state_by_name(
    tmp_path: Path, foreign_lstm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    args = [str(foreign_lstm), "--name", "foreign", "--store", str(store)]
    args += ["--input-names", "a,b,c", "--input-mean", "1,2,3", "--input-std", "2,2,2"]
    assert import_main(args) == 0
    assert "step vs whole" in capsys.readouterr().out
    m = read_version(store / "foreign" / "1").manifest
    assert (m.graph.input, m.graph.output, m.graph.time_major) == ("input", "output", False)
    assert m.cell == "lstm" and m.layers == 2 and m.hidden_size == 12
    assert [(s.name, s.input, s.output, s.shape, s.batch_axis) for s in m.state] == [
        ("h", "state_h_in", "state_h_out", [2, 12], 0),
        ("c", "state_c_in", "state_c_out", [2, 12], 0),
    ]
    assert m.input.kind == "features" and m.input.names == ["a", "b", "c"]
    assert m.input.mean == [1.0, 2.0, 3.0] and m.input.std == [2.0, 2.0, 2.0]
    assert m.output.kind == "regression" and m.output.size == 2
    assert m.output.mean == [0.0, 0.0] and m.output.std == [1.0, 1.0]
    assert not m.feedback.autoregressive, "2 outputs cannot feed 3 inputs"
    assert m.parity.step_vs_whole is not None
    assert m.parity.step_vs_whole <= 1e-5 and m.parity.torch_vs_onnx is None
    x = np.random.default_rng(0).standard_normal((3, 11, 3)).astype(np.float32)
    _chunked_equals_whole(store, "foreign", x)


def test_import_time_major_gru(tmp_path: Path) -> None:
    path = _export_time_major(tmp_path, TimeMajorGRU(), "tm_gru")
    store = tmp_path / "store"
    assert import_main([str(path), "--name", "tm-gru", "--store", str(store)]) == 0
    m = read_version(store / "tm-gru" / "1").manifest
    assert m.graph.time_major and m.cell == "gru"
    assert [(s.name, s.input, s.output, s.shape, s.batch_axis) for s in m.state] == [
        ("h", "hidden_in", "hidden_out", [1, 10], 1)
    ]
    assert not m.feedback.autoregressive, "4 outputs for 4 inputs is no reason to feed back"
    args = [str(path), "--name", "tm-gru", "--store", str(store), "--autoregressive"]
    assert import_main(args) == 0
    m = read_version(store / "tm-gru" / "2").manifest
    assert m.feedback.autoregressive and m.feedback.output_index == [0, 1, 2, 3]
    x = np.random.default_rng(1).standard_normal((2, 10, 4)).astype(np.float32)
    _chunked_equals_whole(store, "tm-gru", x)


def test_import_language_model_with_vocab(tmp_path: Path) -> None:
    vocab = "abcdefg "
    path = tmp_path / "char.onnx"
    path.write_bytes(
        export_torchscript(
            CharGRU(len(vocab)),
            (torch.zeros(2, 5, dtype=torch.int64), torch.zeros(1, 2, 8)),
            ["ids", "hx"],
            ["logits", "hy"],
            {
                "ids": {0: "batch", 1: "time"},
                "logits": {0: "batch", 1: "time"},
                "hx": {1: "batch"},
                "hy": {1: "batch"},
            },
        )
    )
    store = tmp_path / "store"
    args = [str(path), "--name", "chars", "--store", str(store), "--vocab", vocab]
    assert import_main(args) == 0
    m = read_version(store / "chars" / "1").manifest
    assert m.task == "language_model" and m.graph.input_dtype == "int64"
    assert m.input.kind == "text" and m.input.vocab == list(vocab)
    assert m.output.size == len(vocab)
    assert [(s.input, s.output) for s in m.state] == [("hx", "hy")]


def test_import_needs_explicit_pairs_when_names_say_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.onnx"
    path.write_bytes(
        export_torchscript(
            TimeMajorGRU(),
            (torch.zeros(5, 2, 4), torch.zeros(1, 2, 10)),
            ["x", "memory"],
            ["y", "memory_next"],
            {
                "x": {0: "time", 1: "batch"},
                "y": {0: "time", 1: "batch"},
                "memory": {1: "batch"},
                "memory_next": {1: "batch"},
            },
        )
    )
    store = tmp_path / "store"
    base = [str(path), "--name", "odd", "--store", str(store)]
    assert import_main(base) == 1
    assert "--state" in capsys.readouterr().err
    assert not (store / "odd").exists()
    assert import_main([*base, "--state", "memory=memory_next"]) == 0
    assert read_version(store / "odd" / "1").manifest.state[0].input == "memory"


def test_import_refuses_a_model_that_does_not_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _export_time_major(tmp_path, PeeksAhead(), "peeks")
    store = tmp_path / "store"
    assert import_main([str(path), "--name", "peeks", "--store", str(store)]) == 1
    assert "differs from a whole run" in capsys.readouterr().err
    assert not (store / "peeks").exists()


def test_import_refuses_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not onnx")
    assert import_main([str(path), "--name", "garbage", "--store", str(tmp_path)]) == 1
    assert "not a loadable ONNX model" in capsys.readouterr().err


def _t(name: str, dtype: str = "float32") -> TensorInfo:
    return TensorInfo(name, dtype, (1, "batch", 8))


@pytest.mark.parametrize(
    ("ins", "outs", "pairs"),
    [
        (["x", "h0", "c0"], ["y", "hn", "cn"], [("h0", "hn"), ("c0", "cn")]),
        (["input", "hx", "cx"], ["output", "hy", "cy"], [("hx", "hy"), ("cx", "cy")]),
        (
            ["seq", "h_in", "c_in"],
            ["out", "h_out", "c_out"],
            [("h_in", "h_out"), ("c_in", "c_out")],
        ),
        (["x", "state_h_in"], ["y", "state_h_out"], [("state_h_in", "state_h_out")]),
        (["x", "hidden_in"], ["y", "hidden_out"], [("hidden_in", "hidden_out")]),
        (["x", "h_prev"], ["y", "h_next"], [("h_prev", "h_next")]),
        (["x", "in_state"], ["y", "out_state"], [("in_state", "out_state")]),
        (["x", "initial_h"], ["y", "final_h"], [("initial_h", "final_h")]),
        (["x"], ["y"], []),
    ],
)
def test_state_pairing_patterns(
    ins: list[str], outs: list[str], pairs: list[tuple[str, str]]
) -> None:
    found = pair_states([_t(n) for n in ins], [_t(n) for n in outs])
    assert [(p.input.name, p.output.name) for p in found] == pairs


@pytest.mark.parametrize(
    ("name", "expected"),
    [("c0", "c"), ("h0", "h"), ("state_c_in", "c"), ("cell_in", "c"), ("hx", "h"), ("cx", "c")],
)
def test_state_names(name: str, expected: str) -> None:
    assert state_name(name, 0, 2) == expected
