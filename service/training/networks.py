"""The torch modules behind the bundled recipes, written so they export to native ONNX RNN ops.

Every module takes its data tensor batch-first plus explicit state tensors shaped
``[layers, batch, hidden]`` and returns its output plus the new state, which is exactly the
ONNX graph signature the service expects (``x, h0[, c0] -> y, hn[, cn]``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Cell = Literal["lstm", "gru"]


def _rnn(cell: Cell, input_size: int, hidden: int, layers: int) -> nn.LSTM | nn.GRU:
    if cell == "lstm":
        return nn.LSTM(input_size, hidden, num_layers=layers, batch_first=True)
    return nn.GRU(input_size, hidden, num_layers=layers, batch_first=True)


class RecurrentNet(nn.Module):
    """Shared state handling: ``run`` takes and returns the state as a tuple of tensors."""

    cell: Cell
    layers: int
    hidden: int
    rnn: nn.LSTM | nn.GRU

    def zero_state(self, batch: int) -> tuple[Tensor, ...]:
        shape = (self.layers, batch, self.hidden)
        count = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape) for _ in range(count))

    def _recur(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        if isinstance(self.rnn, nn.LSTM):
            out, (hn, cn) = self.rnn(x, (state[0], state[1]))
            return out, (hn, cn)
        out, hn = self.rnn(x, state[0])
        return out, (hn,)

    def run(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        raise NotImplementedError

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor | None = None) -> tuple[Tensor, ...]:
        state = (h0,) if c0 is None else (h0, c0)
        y, new_state = self.run(x, state)
        return (y, *new_state)


class Forecaster(RecurrentNet):
    """Next-step regression on normalised features.

    The head predicts the change: ``y_t = x_t + step_scale * head(h_t)``. Input and output
    share one normalisation, so this is exact in normalised units and makes "no change" (the
    persistence baseline) the starting point the network improves on. ``step_scale`` (the
    typical size of one step's change, per feature) lets the head work in unit-sized numbers
    even for smooth series whose step-to-step change is a small fraction of their spread.
    """

    step_scale: Tensor

    def __init__(
        self,
        cell: Cell,
        features: int,
        hidden: int,
        layers: int,
        step_scale: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.layers = layers
        self.hidden = hidden
        self.rnn = _rnn(cell, features, hidden, layers)
        self.head = nn.Linear(hidden, features)
        scale = torch.ones(features) if step_scale is None else torch.tensor(step_scale)
        self.register_buffer("step_scale", scale.to(torch.float32))

    def run(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        out, new_state = self._recur(x, state)
        return x + self.step_scale * self.head(out), new_state


class CharLM(RecurrentNet):
    """Token ids ``[batch, time]`` (int64) to next-token logits ``[batch, time, vocab]``."""

    def __init__(self, cell: Cell, vocab: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.cell = cell
        self.layers = layers
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = _rnn(cell, embed, hidden, layers)
        self.head = nn.Linear(hidden, vocab)

    def run(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        out, new_state = self._recur(self.embed(x), state)
        return self.head(out), new_state
