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


def _rnn(
    cell: Cell, input_size: int, hidden: int, layers: int, dropout: float = 0.0
) -> nn.LSTM | nn.GRU:
    """``dropout`` applies between stacked layers while training (a no-op in the export)."""
    between = dropout if layers > 1 else 0.0
    if cell == "lstm":
        return nn.LSTM(input_size, hidden, num_layers=layers, batch_first=True, dropout=between)
    return nn.GRU(input_size, hidden, num_layers=layers, batch_first=True, dropout=between)


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

    With ``highway``, a linear map of the current input is added (``+ A x_t + b``, starting
    at zero), as LSTNet does: the linear autoregressive part of the forecast no longer has to
    pass through the recurrent layers, which learn what the linear part misses. The state is
    still only the recurrent layers' state, so sessions step the model as before.
    """

    step_scale: Tensor

    def __init__(
        self,
        cell: Cell,
        features: int,
        hidden: int,
        layers: int,
        step_scale: list[float] | None = None,
        highway: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.layers = layers
        self.hidden = hidden
        self.rnn = _rnn(cell, features, hidden, layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, features)
        self.highway = nn.Linear(features, features) if highway else None
        if self.highway is not None:
            nn.init.zeros_(self.highway.weight)
            nn.init.zeros_(self.highway.bias)
        scale = torch.ones(features) if step_scale is None else torch.tensor(step_scale)
        self.register_buffer("step_scale", scale.to(torch.float32))

    def run(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        out, new_state = self._recur(x, state)
        y = x + self.step_scale * self.head(self.drop(out))
        if self.highway is not None:
            y = y + self.highway(x)
        return y, new_state


class CharLM(RecurrentNet):
    """Token ids ``[batch, time]`` (int64) to next-token logits ``[batch, time, vocab]``."""

    def __init__(
        self, cell: Cell, vocab: int, embed: int, hidden: int, layers: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.cell = cell
        self.layers = layers
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = _rnn(cell, embed, hidden, layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def run(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        out, new_state = self._recur(self.embed(x), state)
        return self.head(self.drop(out)), new_state


def _gates(cell: Cell) -> int:
    return 4 if cell == "lstm" else 3


def merge_forecasters(members: list[Forecaster]) -> Forecaster:
    """One forecaster whose output is exactly the mean of ``members``' outputs.

    The members (same cell, sizes and ``step_scale``) become one recurrent network of hidden
    size ``len(members) * hidden`` whose weight matrices are block-diagonal: member k owns
    units ``k * hidden .. (k + 1) * hidden`` of every gate and layer, and no unit reads
    another member's. The head and the highway average the members'. So an ensemble (seeds
    averaged against the variance of a small data set) is still one LSTM or GRU with one
    explicit state, exported as a native ONNX op and stepped by sessions like any other.
    """
    first = members[0]
    k, h, layers = len(members), first.hidden, first.layers
    features = first.head.out_features
    merged = Forecaster(
        first.cell,
        features,
        k * h,
        layers,
        [float(s) for s in first.step_scale],
        highway=first.highway is not None,
    )
    gates = _gates(first.cell)
    with torch.no_grad():
        for name, param in merged.rnn.named_parameters():
            param.zero_()
            for m, member in enumerate(members):
                src = getattr(member.rnn, name)
                for g in range(gates):
                    rows = slice(g * k * h + m * h, g * k * h + (m + 1) * h)
                    block = src[g * h : (g + 1) * h]
                    if name.startswith("bias") or (name.startswith("weight_ih_l0")):
                        param[rows] = block
                    else:
                        param[rows, m * h : (m + 1) * h] = block
        merged.head.weight.copy_(torch.cat([m.head.weight for m in members], dim=1) / k)
        merged.head.bias.copy_(torch.stack([m.head.bias for m in members]).mean(0))
        if merged.highway is not None:
            hws = [m.highway for m in members if m.highway is not None]
            merged.highway.weight.copy_(torch.stack([w.weight for w in hws]).mean(0))
            merged.highway.bias.copy_(torch.stack([w.bias for w in hws]).mean(0))
    merged.eval()
    return merged
