"""What every recipe's training shares: determinism, the optimisation loop, export with
verification, the evaluation against baselines and writing a version into the store."""

from __future__ import annotations

import importlib.metadata
import logging
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from service.models.manifest import GraphSpec, Manifest, StateTensor
from service.models.store import next_version, write_version
from service.onnx_import.verify import GraphPorts, StatePort
from service.training.export import (
    ParityFigures,
    export_torchscript,
    rnn_dynamic_axes,
    verify_export,
)
from service.training.networks import RecurrentNet

log = logging.getLogger(__name__)

PLACEHOLDER_SHA = "0" * 64


class BaselineNotBeaten(Exception):
    """With ``strict``, a model that does not beat every baseline is not written."""


@dataclass
class Evaluation:
    """Held-out metrics of the model and its baselines, and which baselines it failed to beat."""

    metrics: dict[str, float]
    headline: str
    baseline_keys: list[str]
    not_beaten: list[str] = field(default_factory=list)

    def check(self) -> None:
        value = self.metrics[self.headline]
        self.not_beaten = [k for k in self.baseline_keys if not value < self.metrics[k]]


@dataclass
class TrainResult:
    path: Path | None
    manifest: Manifest
    evaluation: Evaluation
    parity: ParityFigures
    train_seconds: float


def set_determinism(seed: int, threads: int | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for dist in ("torch", "onnx", "onnxruntime", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def state_specs(model: RecurrentNet) -> list[StateTensor]:
    shape = [model.layers, model.hidden]
    specs = [StateTensor(name="h", input="h0", output="hn", shape=shape, batch_axis=1)]
    if model.cell == "lstm":
        specs.append(StateTensor(name="c", input="c0", output="cn", shape=shape, batch_axis=1))
    return specs


def _ports(model: RecurrentNet, data_in: str, data_out: str) -> GraphPorts:
    return GraphPorts(
        input=data_in,
        output=data_out,
        states=tuple(
            StatePort(s.input, s.output, (model.layers, 1, model.hidden), 1)
            for s in state_specs(model)
        ),
    )


def export_and_verify(
    model: RecurrentNet, example: torch.Tensor, probe: npt.NDArray[np.generic], names: GraphSpec
) -> tuple[bytes, ParityFigures]:
    """The ONNX graph of ``model`` (data and state in, data and state out), verified against
    torch and stepped against a whole run on ``probe``."""
    specs = state_specs(model)
    state_in = [s.input for s in specs]
    state_out = [s.output for s in specs]
    example_state = model.zero_state(example.shape[0])
    onnx_bytes = export_torchscript(
        model,
        (example, *example_state),
        [names.input, *state_in],
        [names.output, *state_out],
        rnn_dynamic_axes(names.input, names.output, state_in, state_out),
    )
    parity = verify_export(model, onnx_bytes, _ports(model, names.input, names.output), probe)
    return onnx_bytes, parity


def fit(
    model: nn.Module,
    batches: int,
    step: Callable[[int], torch.Tensor],
    lr: float,
    desc: str,
    progress: bool,
    weight_decay: float = 0.0,
) -> float:
    """Adam with a cosine learning-rate schedule over ``batches`` steps of ``step(i)``'s loss;
    returns the smoothed final loss."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(batches, 1))
    model.train()
    smoothed = math.nan
    with tqdm(total=batches, desc=desc, unit="batch", disable=not progress, leave=True) as bar:
        for i in range(batches):
            loss = step(i)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            value = float(loss.detach())
            smoothed = value if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * value
            bar.set_postfix(loss=f"{smoothed:.4f}")
            bar.update()
    model.eval()
    return smoothed


def finish(
    manifest: Manifest,
    onnx_bytes: bytes,
    evaluation: Evaluation,
    parity: ParityFigures,
    train_seconds: float,
    store: Path | None,
    strict: bool,
    files: dict[str, bytes] | None = None,
) -> TrainResult:
    """Warn about (or, with ``strict``, refuse) a model that loses to a baseline, then write
    the next version into ``store`` (None: write nothing)."""
    if evaluation.not_beaten:
        head = evaluation.headline
        detail = ", ".join(f"{k}={evaluation.metrics[k]:.4g}" for k in evaluation.not_beaten)
        message = (
            f"{manifest.name}: held-out {head}={evaluation.metrics[head]:.4g} does NOT beat "
            f"the baseline(s) {detail}"
        )
        if strict:
            raise BaselineNotBeaten(message + "; not written (--strict)")
        log.warning("!!! %s", message)
    path = None
    if store is not None:
        version = next_version(store, manifest.name)
        manifest = manifest.model_copy(update={"version": version})
        path = write_version(store, manifest, onnx_bytes, files)
    return TrainResult(path, manifest, evaluation, parity, train_seconds)
