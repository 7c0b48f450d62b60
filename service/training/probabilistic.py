"""Training a probabilistic forecaster (``ForecastRecipe.likelihood``) and writing it as a
model version whose manifest carries a ``distribution`` and the calibration figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from service.models.manifest import (
    Distribution,
    GraphSpec,
)
from service.training.calibration import (
    HORIZONS,
    Rollouts,
    horizon_metrics,
    one_step_metrics,
    rollout_origins,
)
from service.training.forecast_eval import fit_ar_baseline, forecast_metrics
from service.training.forecasting import forecast_manifest, loss_weights, prepare
from service.training.likelihood import (
    SCALE_OUTPUT,
    GaussianForecaster,
    export_gaussian,
    window_loss,
)
from service.training.pipeline import (
    TrainResult,
    finish,
    fit,
    set_determinism,
)
from service.training.recipes import ForecastRecipe
from service.training.samples import SAMPLE_FILE, heldout_sample

ROLLOUT_SAMPLES = 200
"""Sample paths per forecast origin for the roll-out coverage."""


def train_gaussian(
    recipe: ForecastRecipe,
    z: torch.Tensor,
    test_start: int,
    step_scale: list[float],
    weights: torch.Tensor,
    progress: bool,
) -> GaussianForecaster:
    """One network trained on random windows of the normalised rows before ``test_start``."""
    set_determinism(recipe.seed)
    model = GaussianForecaster(
        recipe.cell,
        z.shape[1],
        recipe.hidden,
        recipe.layers,
        step_scale,
        highway=recipe.highway,
        dropout=recipe.dropout,
    )
    rng = np.random.default_rng(recipe.seed)
    last_start = test_start - 1 - recipe.window
    loss = window_loss(model, weights, min(recipe.burn_in, recipe.window - 1))

    def step(i: int) -> torch.Tensor:
        starts = rng.integers(0, last_start + 1, size=recipe.batch_size)
        idx = torch.from_numpy(starts[:, None] + np.arange(recipe.window)[None, :])
        return loss(z[idx], z[idx + 1])

    batches = recipe.epochs * max(recipe.windows_per_epoch // recipe.batch_size, 1)
    fit(model, batches, step, recipe.lr, recipe.name, progress, recipe.weight_decay)
    return model


@torch.no_grad()
def model_rollouts(
    model: GaussianForecaster, z: torch.Tensor, origins: np.ndarray, horizon: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised roll-outs from each origin ``t`` (after seeing ``z[: t + 1]``): the mean
    path ``[origins, horizon, F]`` and ``ROLLOUT_SAMPLES`` sample paths
    ``[origins, samples, horizon, F]``, each step's draw fed back as the next input."""
    state = model.zero_state(1)
    by_step: list[tuple[torch.Tensor, ...]] = []
    for t in range(int(origins.max()) + 1):
        by_step.append(state)  # before seeing z[t]: the roll-out's first input is z[t]
        _, state = model.run(z[t : t + 1][None], state)
    starts = [torch.cat([by_step[t][k] for t in origins], dim=1) for k in range(len(state))]
    x0 = z[torch.from_numpy(origins)][:, None]
    mean = _roll(model, x0, tuple(starts), horizon, None)
    s = ROLLOUT_SAMPLES
    wide = tuple(st.repeat_interleave(s, dim=1) for st in starts)
    generator = torch.Generator().manual_seed(seed)
    paths = _roll(model, x0.repeat_interleave(s, dim=0), wide, horizon, generator)
    return mean.numpy(), paths.numpy().reshape(len(origins), s, horizon, -1)


def _roll(
    model: GaussianForecaster,
    x: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    horizon: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    out = []
    for _ in range(horizon):
        loc, scale, state = model.run_dist(x, state)
        if generator is None:
            nxt = loc
        else:
            nxt = loc + scale * torch.randn(loc.shape, generator=generator)
        out.append(nxt[:, 0])
        x = nxt
    return torch.stack(out, dim=1)


def train_probabilistic(
    recipe: ForecastRecipe, store: Path | None, strict: bool = False, progress: bool = True
) -> TrainResult:
    if recipe.ensemble != 1:
        raise ValueError(f"{recipe.name}: a likelihood head is trained as one network")
    prep = prepare(recipe)
    values, test_start, z, mean, std = prep.values, prep.test_start, prep.z, prep.mean, prep.std
    names = list(prep.series.names)
    features = values.shape[1]
    started = time.perf_counter()
    weights = loss_weights(recipe, std)
    model = train_gaussian(recipe, z, test_start, prep.step_scale, weights, progress)
    train_seconds = time.perf_counter() - started

    with torch.no_grad():
        loc_z, scale_z, _ = model.run_dist(z[None, :-1], model.zero_state(1))
    loc = loc_z[0].numpy().astype(np.float64) * std + mean
    scale = scale_z[0].numpy().astype(np.float64) * std
    evaluation = forecast_metrics(names, values, loc, test_start, recipe.seasonal_lag)
    ar, _ = fit_ar_baseline(values, test_start)
    evaluation.metrics |= one_step_metrics(names, values, loc, scale, test_start, ar)
    origins = rollout_origins(prep.rows, test_start, max(HORIZONS))
    mean_z, paths_z = model_rollouts(model, z, origins, max(HORIZONS), recipe.seed)
    rollouts = Rollouts(origins, mean_z * std + mean, paths_z * std + mean)
    evaluation.metrics |= horizon_metrics(values, rollouts, ar, recipe.seasonal_lag)

    graph = GraphSpec(input="x", output="y", input_dtype="float32")
    probe = np.random.default_rng(recipe.seed + 1).standard_normal((3, 13, features))
    onnx_bytes, parity = export_gaussian(
        model, torch.zeros(2, 5, features), probe.astype(np.float32), graph
    )
    distribution = Distribution(family="gaussian", scale_output=SCALE_OUTPUT)
    manifest = forecast_manifest(recipe, prep, model, graph, evaluation, parity, distribution)
    sample = {SAMPLE_FILE: heldout_sample(prep.series, recipe.test_rows, prep.rows)}
    return finish(manifest, onnx_bytes, evaluation, parity, train_seconds, store, strict, sample)
