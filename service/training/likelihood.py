"""A forecaster with a likelihood head: a Gaussian per feature, its mean and its scale.

The recurrent part is the point forecaster's (``networks.Forecaster``: same cell, state and
mean head); a second linear head on the same hidden state gives each feature's standard
deviation, ``step_scale * softplus(.) + SCALE_FLOOR`` (starting near the size of one step's
change, the persistence error). Trained by the Gaussian negative log-likelihood, it exports
as ``x, h0[, c0] -> y, scale, hn[, cn]``: the mean where a point model has its output, the
scale (normalised units, like the mean) beside it, the explicit state as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.nn import functional

from service.models.manifest import GraphSpec
from service.onnx_import.verify import GraphPorts, StatePort
from service.training.export import (
    ParityFigures,
    export_torchscript,
    rnn_dynamic_axes,
    verify_export,
)
from service.training.networks import Cell, Forecaster
from service.training.pipeline import state_specs

SCALE_OUTPUT = "scale"
SCALE_FLOOR = 1e-3
"""The smallest scale the head can give (normalised units): the likelihood stays finite."""


class GaussianForecaster(Forecaster):
    """``Forecaster`` plus a scale head; ``run`` gives the mean, ``run_dist`` both."""

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
        super().__init__(cell, features, hidden, layers, step_scale, highway, dropout)
        self.scale_head = nn.Linear(hidden, features)
        nn.init.zeros_(self.scale_head.weight)
        nn.init.constant_(self.scale_head.bias, math.log(math.e - 1.0))  # softplus(b) = 1

    def run_dist(
        self, x: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        out, new_state = self._recur(x, state)
        hidden = self.drop(out)
        loc = x + self.step_scale * self.head(hidden)
        if self.highway is not None:
            loc = loc + self.highway(x)
        scale = self.step_scale * functional.softplus(self.scale_head(hidden)) + SCALE_FLOOR
        return loc, scale, new_state

    def run(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        loc, _, new_state = self.run_dist(x, state)
        return loc, new_state

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor | None = None) -> tuple[Tensor, ...]:
        state = (h0,) if c0 is None else (h0, c0)
        loc, scale, new_state = self.run_dist(x, state)
        return (loc, scale, *new_state)


def gaussian_nll(loc: Tensor, scale: Tensor, target: Tensor) -> Tensor:
    """Elementwise negative log-likelihood of ``target`` under Normal(loc, scale), less the
    constant ``log(sqrt(2 pi))``."""
    return torch.log(scale) + 0.5 * ((target - loc) / scale) ** 2


def window_loss(
    model: GaussianForecaster, weights: Tensor, burn: int
) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of a batch of windows ``x -> y`` (normalised): the mean weighted
    negative log-likelihood after the first ``burn`` steps."""

    def loss(x: Tensor, y: Tensor) -> Tensor:
        loc, scale, _ = model.run_dist(x, model.zero_state(x.shape[0]))
        nll = gaussian_nll(loc[:, burn:], scale[:, burn:], y[:, burn:])
        value: Tensor = (weights * nll).mean()
        return value

    return loss


def export_gaussian(
    model: GaussianForecaster,
    example: Tensor,
    probe: npt.NDArray[np.generic],
    names: GraphSpec,
) -> tuple[bytes, ParityFigures]:
    """The ONNX graph ``x, h0[, c0] -> y, scale, hn[, cn]``, verified against torch (mean
    and scale) and stepped against one whole run."""
    specs = state_specs(model)
    state_in = [s.input for s in specs]
    state_out = [s.output for s in specs]
    axes = rnn_dynamic_axes(names.input, names.output, state_in, state_out)
    axes[SCALE_OUTPUT] = {0: "batch", 1: "time"}
    onnx_bytes = export_torchscript(
        model,
        (example, *model.zero_state(example.shape[0])),
        [names.input, *state_in],
        [names.output, SCALE_OUTPUT, *state_out],
        axes,
    )
    ports = GraphPorts(
        input=names.input,
        output=names.output,
        states=tuple(
            StatePort(s.input, s.output, (model.layers, 1, model.hidden), 1) for s in specs
        ),
        extra_outputs=(SCALE_OUTPUT,),
    )
    return onnx_bytes, verify_export(model, onnx_bytes, ports, probe)
