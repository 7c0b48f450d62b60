"""Training a forecaster on a multivariate series and writing it as a model version."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from service.models.manifest import (
    Distribution,
    FeaturesInput,
    Feedback,
    GraphSpec,
    Manifest,
    Parity,
    Provenance,
    RegressionOutput,
)
from service.training.data import Series
from service.training.export import ParityFigures
from service.training.forecast_eval import forecast_metrics
from service.training.networks import Forecaster, RecurrentNet, merge_forecasters
from service.training.pipeline import (
    PLACEHOLDER_SHA,
    Evaluation,
    TrainResult,
    export_and_verify,
    finish,
    fit,
    library_versions,
    set_determinism,
    state_specs,
)
from service.training.recipes import ForecastRecipe
from service.training.samples import SAMPLE_FILE, heldout_sample

Floats = npt.NDArray[np.float64]


def forecast_rows(recipe: ForecastRecipe, rows: int) -> int:
    """How many rows of the series a run uses: ``limit_rows``, less the held-out tail when
    validating (the end of the training period is then held out instead)."""
    used = rows if recipe.limit_rows is None else min(recipe.limit_rows, rows)
    return used - recipe.test_rows if recipe.validate else used


def loss_weights(recipe: ForecastRecipe, std: Floats) -> torch.Tensor:
    w = std**2 / np.mean(std**2) if recipe.loss_weights == "variance" else np.ones_like(std)
    return torch.from_numpy(w.astype(np.float32))


def start_from_linear(model: Forecaster, z: torch.Tensor) -> None:
    """Set the highway to the least-squares AR(1) of the change ``z[t + 1] - z[t]`` on
    ``z[t]`` (normalised rows, all features jointly) and the recurrent head to zero: the
    network then starts as the linear autoregression, and training moves it only as far as
    the recurrent layers improve on it."""
    if model.highway is None:
        raise ValueError("highway_init=least_squares needs highway=true")
    rows = z.numpy().astype(np.float64)
    design = np.concatenate([rows[:-1], np.ones((len(rows) - 1, 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, rows[1:] - rows[:-1], rcond=None)
    with torch.no_grad():
        model.highway.weight.copy_(torch.from_numpy(solution[:-1].T.copy()))
        model.highway.bias.copy_(torch.from_numpy(solution[-1].copy()))
        model.head.weight.zero_()
        model.head.bias.zero_()


def train_member(
    recipe: ForecastRecipe,
    z: torch.Tensor,
    test_start: int,
    step_scale: list[float],
    weights: torch.Tensor,
    seed: int,
    progress: bool,
) -> Forecaster:
    """One network trained on random windows of the normalised rows before ``test_start``."""
    set_determinism(seed)
    features = z.shape[1]
    model = Forecaster(
        recipe.cell,
        features,
        recipe.hidden,
        recipe.layers,
        step_scale,
        highway=recipe.highway,
        dropout=recipe.dropout,
    )
    if recipe.highway_init == "least_squares":
        start_from_linear(model, z[:test_start])
    rng = np.random.default_rng(seed)
    last_start = test_start - 1 - recipe.window
    steps_per_epoch = max(recipe.windows_per_epoch // recipe.batch_size, 1)
    burn = min(recipe.burn_in, recipe.window - 1)

    def step(i: int) -> torch.Tensor:
        starts = rng.integers(0, last_start + 1, size=recipe.batch_size)
        idx = torch.from_numpy(starts[:, None] + np.arange(recipe.window)[None, :])
        x, y = z[idx], z[idx + 1]
        pred, _ = model.run(x, model.zero_state(recipe.batch_size))
        loss: torch.Tensor = (weights * (pred[:, burn:] - y[:, burn:]) ** 2).mean()
        return loss

    batches = recipe.epochs * steps_per_epoch
    fit(model, batches, step, recipe.lr, recipe.name, progress, recipe.weight_decay)
    return model


@dataclass(frozen=True)
class Prepared:
    """A recipe's series cut to its rows, split, and normalised by the training rows."""

    series: Series
    rows: int
    values: Floats
    test_start: int
    mean: Floats
    std: Floats
    z: torch.Tensor
    """The whole series in normalised units."""
    step_scale: list[float]
    """Per feature, the spread of one step's change over the training rows (normalised)."""


def prepare(recipe: ForecastRecipe) -> Prepared:
    set_determinism(recipe.seed)
    series = recipe.load()
    n = forecast_rows(recipe, len(series.values))
    values = series.values[:n]
    test_start = n - recipe.test_rows
    if test_start <= recipe.window + 1:
        raise ValueError(f"{recipe.name}: not enough rows ({n}) for window and held-out tail")
    train = values[:test_start]
    mean = train.mean(axis=0)
    std = np.where(train.std(axis=0) > 1e-8, train.std(axis=0), 1.0)
    z = torch.from_numpy(((values - mean) / std).astype(np.float32))
    step_scale = [float(v) for v in np.diff(z.numpy()[:test_start], axis=0).std(axis=0)]
    return Prepared(series, n, values, test_start, mean, std, z, step_scale)


def forecast_manifest(
    recipe: ForecastRecipe,
    prep: Prepared,
    model: RecurrentNet,
    graph: GraphSpec,
    evaluation: Evaluation,
    parity: ParityFigures,
    distribution: Distribution | None = None,
) -> Manifest:
    """The manifest of a forecaster trained on ``prep`` (version and sha256 are set when it
    is written)."""
    n, test_start, times = prep.rows, prep.test_start, prep.series.times
    held = "validation tail (end of the training period)" if recipe.validate else "held-out tail"
    split = (
        f"train: first {test_start} rows ({times[0]} .. {times[test_start - 1]}); "
        f"{held}: last {recipe.test_rows} rows ({times[test_start]} .. {times[n - 1]}); "
        f"normalisation from the training rows; linear AR order chosen on the end of the "
        f"training rows"
    )
    series = prep.series
    names = list(series.names)
    features = len(names)
    mean, std = list(prep.mean), list(prep.std)
    return Manifest(
        name=recipe.name,
        version=1,
        description=recipe.description,
        task="regression",
        cell=recipe.cell,
        layers=model.layers,
        hidden_size=model.hidden,
        sha256=PLACEHOLDER_SHA,
        graph=graph,
        input=FeaturesInput(size=features, names=names, mean=mean, std=std),
        output=RegressionOutput(size=features, names=names, mean=mean, std=std),
        state=state_specs(model),
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
        distribution=distribution,
        libraries=library_versions(),
        sample_file=SAMPLE_FILE,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def train_forecaster(
    recipe: ForecastRecipe, store: Path | None, strict: bool = False, progress: bool = True
) -> TrainResult:
    prep = prepare(recipe)
    values, test_start, z = prep.values, prep.test_start, prep.z
    features = values.shape[1]
    weights = loss_weights(recipe, prep.std)
    started = time.perf_counter()
    members = [
        train_member(recipe, z, test_start, prep.step_scale, weights, recipe.seed + k, progress)
        for k in range(recipe.ensemble)
    ]
    model = members[0] if recipe.ensemble == 1 else merge_forecasters(members)
    train_seconds = time.perf_counter() - started

    with torch.no_grad():
        pred_z, _ = model.run(z[None, :-1], model.zero_state(1))
    pred = pred_z[0].numpy().astype(np.float64) * prep.std + prep.mean
    names = prep.series.names
    evaluation = forecast_metrics(names, values, pred, test_start, recipe.seasonal_lag)

    graph = GraphSpec(input="x", output="y", input_dtype="float32")
    example = torch.zeros(2, 5, features)
    probe = np.random.default_rng(recipe.seed + 1).standard_normal((3, 13, features))
    onnx_bytes, parity = export_and_verify(model, example, probe.astype(np.float32), graph)

    manifest = forecast_manifest(recipe, prep, model, graph, evaluation, parity)
    sample = {SAMPLE_FILE: heldout_sample(prep.series, recipe.test_rows, prep.rows)}
    return finish(manifest, onnx_bytes, evaluation, parity, train_seconds, store, strict, sample)
