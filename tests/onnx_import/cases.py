"""The committed framework fixtures and what importing each must find."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "onnx_import"


@dataclass(frozen=True)
class Case:
    file: str
    framework: str
    time_major: bool
    rewritten: bool
    states: tuple[str, ...]
    stateful: bool = True

    @property
    def path(self) -> Path:
        return FIXTURES / self.file

    @property
    def name(self) -> str:
        return self.file.removesuffix(".onnx")


CASES = [
    Case("torch_lstm_time_major.onnx", "PyTorch", True, True, ("h", "c")),
    Case("torch_lstm_batch_first.onnx", "PyTorch", False, True, ("h0", "c0", "h1", "c1")),
    Case("torch_gru.onnx", "PyTorch", True, True, ("h",)),
    Case("torch_two_layers.onnx", "PyTorch", False, True, ("h0", "c0", "h1", "c1")),
    Case("torch_explicit_state.onnx", "PyTorch", False, False, ("h", "c")),
    Case("torch_bidirectional.onnx", "PyTorch", False, True, ("h", "c"), stateful=False),
    Case("keras_lstm_stacked.onnx", "Keras", False, True, ("h0", "c0", "h1", "c1")),
    Case("keras_gru_stacked.onnx", "Keras", False, True, ("h0", "h1")),
]
STATEFUL = [c for c in CASES if c.stateful]
