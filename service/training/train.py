"""Deterministic training, held-out evaluation, baselines, export and writing a version.

``run_recipe`` is the whole pipeline behind ``lstm-serve train RECIPE``: it trains with fixed
seeds, evaluates on the held-out tail against the naive baselines, exports to ONNX, verifies
the export and writes the next version into the model store.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from service.models.manifest import (
    FeaturesInput,
    Feedback,
    GraphSpec,
    LogitsOutput,
    Manifest,
    Parity,
    Provenance,
    RegressionOutput,
    StateTensor,
    TextInput,
)
from service.models.store import next_version, write_version
from service.onnx_import.verify import GraphPorts, StatePort
from service.training import baselines
from service.training.data import load_pydoc_topics
from service.training.export import (
    ParityFigures,
    export_torchscript,
    rnn_dynamic_axes,
    verify_export,
)
from service.training.networks import CharLM, Forecaster, RecurrentNet
from service.training.recipes import CharLMRecipe, ForecastRecipe, Recipe
from service.training.samples import SAMPLE_FILE, heldout_sample
from service.training.text import UNKNOWN_CHAR, build_vocab, encode, lm_nll

log = logging.getLogger(__name__)

PLACEHOLDER_SHA = "0" * 64


class BaselineNotBeaten(Exception):
    """With ``strict``, a model that does not beat every naive baseline is not written."""


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


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=True)


def _state_specs(model: RecurrentNet) -> list[StateTensor]:
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
            for s in _state_specs(model)
        ),
    )


def _export_and_verify(
    model: RecurrentNet, example: torch.Tensor, probe: npt.NDArray[np.generic], names: GraphSpec
) -> tuple[bytes, ParityFigures]:
    specs = _state_specs(model)
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


# --- forecasting -----------------------------------------------------------------------------


def _fit(
    model: nn.Module,
    batches: int,
    step: Callable[[int], torch.Tensor],
    lr: float,
    desc: str,
    progress: bool,
) -> float:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(batches, 1))
    model.train()
    smoothed = math.nan
    with _progress(batches, desc, progress) as bar:
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


def _forecast_metrics(
    recipe: ForecastRecipe,
    names: tuple[str, ...],
    values: npt.NDArray[np.float64],
    pred: npt.NDArray[np.float64],
    test_start: int,
) -> Evaluation:
    """Held-out RMSE (data units, averaged over the forecast features) vs naive baselines.

    ``pred[t]`` is the forecast of ``values[t + 1]`` made after seeing ``values[: t + 1]``.
    """
    n = len(values)
    targets = range(test_start, n)
    model_rmse = baselines.rmse_per_feature(pred[test_start - 1 :], values[test_start:])
    persistence = baselines.lagged_rmse(values, targets, 1)
    seasonal = baselines.lagged_rmse(values, targets, recipe.seasonal_lag)
    metrics: dict[str, float] = {"rmse": float(model_rmse.mean())}
    keys = []
    for key, per in (("rmse_persistence", persistence), ("rmse_seasonal_naive", seasonal)):
        if per is not None:
            metrics[key] = float(per.mean())
            keys.append(key)
    for j, name in enumerate(names):
        metrics[f"rmse.{name}"] = float(model_rmse[j])
        for key, per in (("rmse_persistence", persistence), ("rmse_seasonal_naive", seasonal)):
            if per is not None:
                metrics[f"{key}.{name}"] = float(per[j])
    evaluation = Evaluation(metrics=metrics, headline="rmse", baseline_keys=keys)
    evaluation.check()
    return evaluation


def train_forecaster(
    recipe: ForecastRecipe, store: Path | None, strict: bool = False, progress: bool = True
) -> TrainResult:
    set_determinism(recipe.seed)
    series = recipe.load()
    values = series.values
    times = series.times
    if recipe.limit_rows is not None:
        values = values[: recipe.limit_rows]
        times = times[: recipe.limit_rows]
    n, features = values.shape
    test_start = n - recipe.test_rows
    if test_start <= recipe.window + 1:
        raise ValueError(f"{recipe.name}: not enough rows ({n}) for window and held-out tail")
    train = values[:test_start]
    mean = train.mean(axis=0)
    std = np.where(train.std(axis=0) > 1e-8, train.std(axis=0), 1.0)
    names = list(series.names)
    z = torch.from_numpy(((values - mean) / std).astype(np.float32))

    step_scale = np.diff(z.numpy()[:test_start], axis=0).std(axis=0)
    model = Forecaster(
        recipe.cell, features, recipe.hidden, recipe.layers, [float(s) for s in step_scale]
    )
    rng = np.random.default_rng(recipe.seed)
    last_start = test_start - 1 - recipe.window
    steps_per_epoch = max(recipe.windows_per_epoch // recipe.batch_size, 1)
    loss_fn = nn.MSELoss()
    burn = min(recipe.burn_in, recipe.window - 1)

    def step(i: int) -> torch.Tensor:
        starts = rng.integers(0, last_start + 1, size=recipe.batch_size)
        idx = torch.from_numpy(starts[:, None] + np.arange(recipe.window)[None, :])
        x, y = z[idx], z[idx + 1]
        pred, _ = model.run(x, model.zero_state(recipe.batch_size))
        loss: torch.Tensor = loss_fn(pred[:, burn:], y[:, burn:])
        return loss

    started = time.perf_counter()
    _fit(model, recipe.epochs * steps_per_epoch, step, recipe.lr, recipe.name, progress)
    train_seconds = time.perf_counter() - started

    with torch.no_grad():
        pred_z, _ = model.run(z[None, :-1], model.zero_state(1))
    pred = pred_z[0].numpy().astype(np.float64) * std + mean
    evaluation = _forecast_metrics(recipe, series.names, values, pred, test_start)

    graph = GraphSpec(input="x", output="y", input_dtype="float32")
    example = torch.zeros(2, 5, features)
    probe = np.random.default_rng(recipe.seed + 1).standard_normal((3, 13, features))
    onnx_bytes, parity = _export_and_verify(model, example, probe.astype(np.float32), graph)

    split = (
        f"train: first {test_start} rows ({times[0]} .. {times[test_start - 1]}); "
        f"held-out tail: last {recipe.test_rows} rows ({times[test_start]} .. {times[-1]}); "
        f"normalisation from the training rows"
    )
    manifest = Manifest(
        name=recipe.name,
        version=1,
        description=recipe.description,
        task="regression",
        cell=recipe.cell,
        layers=recipe.layers,
        hidden_size=recipe.hidden,
        sha256=PLACEHOLDER_SHA,
        graph=graph,
        input=FeaturesInput(size=features, names=names, mean=list(mean), std=list(std)),
        output=RegressionOutput(size=features, names=names, mean=list(mean), std=list(std)),
        state=_state_specs(model),
        feedback=Feedback(autoregressive=True, output_index=list(range(features))),
        training=Provenance(
            dataset=series.dataset,
            package=series.package,
            package_version=series.package_version,
            source=series.source,
            rows=n,
            split=split,
        ),
        metrics=evaluation.metrics,
        headline_metric="rmse",
        parity=Parity(torch_vs_onnx=parity.torch_vs_onnx, step_vs_whole=parity.step_vs_whole),
        libraries=library_versions(),
        sample_file=SAMPLE_FILE,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    sample = {SAMPLE_FILE: heldout_sample(series, recipe.test_rows, recipe.limit_rows)}
    return _finish(manifest, onnx_bytes, evaluation, parity, train_seconds, store, strict, sample)


# --- character language model ----------------------------------------------------------------


def train_charlm(
    recipe: CharLMRecipe, store: Path | None, strict: bool = False, progress: bool = True
) -> TrainResult:
    set_determinism(recipe.seed)
    corpus = load_pydoc_topics()
    text = corpus.text if recipe.limit_rows is None else corpus.text[: recipe.limit_rows]
    split_at = int(len(text) * (1.0 - recipe.test_fraction))
    train_text, test_text = text[:split_at], text[split_at:]
    vocab = build_vocab(train_text, recipe.min_count)
    train_ids = encode(train_text, vocab)
    test_ids = encode(test_text, vocab)
    v = len(vocab)

    model = CharLM(recipe.cell, v, recipe.embed, recipe.hidden, recipe.layers)
    rng = np.random.default_rng(recipe.seed)
    windows = recipe.windows_per_epoch or max(len(train_ids) // recipe.window, 1)
    steps_per_epoch = max(windows // recipe.batch_size, 1)
    tokens = torch.from_numpy(train_ids)
    last_start = len(train_ids) - recipe.window - 1
    loss_fn = nn.CrossEntropyLoss()

    def step(i: int) -> torch.Tensor:
        starts = rng.integers(0, last_start + 1, size=recipe.batch_size)
        idx = torch.from_numpy(starts[:, None] + np.arange(recipe.window)[None, :])
        logits, _ = model.run(tokens[idx], model.zero_state(recipe.batch_size))
        loss: torch.Tensor = loss_fn(logits.reshape(-1, v), tokens[idx + 1].reshape(-1))
        return loss

    started = time.perf_counter()
    _fit(model, recipe.epochs * steps_per_epoch, step, recipe.lr, recipe.name, progress)
    train_seconds = time.perf_counter() - started

    metrics = {
        "perplexity": math.exp(lm_nll(model, test_ids)),
        "perplexity_unigram": baselines.unigram_perplexity(train_ids, test_ids, v),
        "perplexity_bigram": baselines.bigram_perplexity(train_ids, test_ids, v),
    }
    evaluation = Evaluation(
        metrics=metrics,
        headline="perplexity",
        baseline_keys=["perplexity_unigram", "perplexity_bigram"],
    )
    evaluation.check()

    graph = GraphSpec(input="tokens", output="logits", input_dtype="int64")
    example = torch.zeros(2, 5, dtype=torch.int64)
    probe = np.random.default_rng(recipe.seed + 1).integers(0, v, size=(3, 13), dtype=np.int64)
    onnx_bytes, parity = _export_and_verify(model, example, probe, graph)

    split = (
        f"train: first {split_at} characters; held-out tail: last {len(text) - split_at} "
        f"characters ({recipe.test_fraction:.0%}); topics joined in sorted key order; "
        f"characters seen fewer than {recipe.min_count} times in training map to U+FFFD"
    )
    manifest = Manifest(
        name=recipe.name,
        version=1,
        description=recipe.description,
        task="language_model",
        cell=recipe.cell,
        layers=recipe.layers,
        hidden_size=recipe.hidden,
        sha256=PLACEHOLDER_SHA,
        graph=graph,
        input=TextInput(vocab_size=v, vocab=vocab, unknown_id=vocab.index(UNKNOWN_CHAR)),
        output=LogitsOutput(size=v),
        state=_state_specs(model),
        feedback=Feedback(autoregressive=True),
        training=Provenance(
            dataset=corpus.dataset,
            package=corpus.package,
            package_version=corpus.package_version,
            source=corpus.source,
            rows=len(text),
            split=split,
        ),
        metrics=metrics,
        headline_metric="perplexity",
        parity=Parity(torch_vs_onnx=parity.torch_vs_onnx, step_vs_whole=parity.step_vs_whole),
        libraries=library_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return _finish(manifest, onnx_bytes, evaluation, parity, train_seconds, store, strict)


# --- shared ----------------------------------------------------------------------------------


def _finish(
    manifest: Manifest,
    onnx_bytes: bytes,
    evaluation: Evaluation,
    parity: ParityFigures,
    train_seconds: float,
    store: Path | None,
    strict: bool,
    files: dict[str, bytes] | None = None,
) -> TrainResult:
    if evaluation.not_beaten:
        head = evaluation.headline
        detail = ", ".join(f"{k}={evaluation.metrics[k]:.4g}" for k in evaluation.not_beaten)
        message = (
            f"{manifest.name}: held-out {head}={evaluation.metrics[head]:.4g} does NOT beat "
            f"the naive baseline(s) {detail}"
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


def run_recipe(
    recipe: Recipe, store: Path | None, strict: bool = False, progress: bool = True
) -> TrainResult:
    """Train ``recipe`` and write the next version into ``store`` (None: write nothing)."""
    if isinstance(recipe, ForecastRecipe):
        return train_forecaster(recipe, store, strict, progress)
    return train_charlm(recipe, store, strict, progress)
