"""The likelihood head: its network, its calibration figures on synthetic data, and a tiny
training run end to end into a store (exported with its scale, stepped like a whole run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from service.models.registry import ModelRegistry
from service.models.store import read_version, scan
from service.onnx_import.verify import GraphPorts, StatePort, ort_session, step_vs_whole
from service.training.baselines import fit_linear_ar
from service.training.calibration import (
    Z_INTERVAL,
    Rollouts,
    calibration_table,
    horizon_metrics,
    one_step_metrics,
)
from service.training.likelihood import GaussianForecaster
from service.training.recipes import RECIPES, ForecastRecipe
from service.training.train import run_recipe
from tests.training.test_train import TINY_FORECAST

pytestmark = [pytest.mark.train]

TINY = {**TINY_FORECAST, "likelihood": "gaussian"}


def test_the_scale_head_is_positive_and_run_gives_the_mean() -> None:
    torch.manual_seed(0)
    net = GaussianForecaster("lstm", 2, 6, 2, [0.5, 0.2])
    x = torch.randn(3, 7, 2)
    loc, scale, state = net.run_dist(x, net.zero_state(3))
    mean, state2 = net.run(x, net.zero_state(3))
    assert torch.equal(loc, mean) and all(
        torch.equal(a, b) for a, b in zip(state, state2, strict=True)
    )
    assert (scale > 0).all()
    y, s, h, c = net(x, *net.zero_state(3))
    assert torch.equal(y, loc) and torch.equal(s, scale)
    assert h.shape == c.shape == (2, 3, 6)


def test_a_calibrated_gaussian_covers_80_percent_and_beats_a_wrong_scale() -> None:
    rng = np.random.default_rng(0)
    n, test_start = 4000, 2000
    loc = rng.standard_normal((n, 2)).cumsum(axis=0) * 0.1
    scale = np.full((n, 2), 0.5)
    values = np.empty((n, 2))
    values[0] = loc[0]
    values[1:] = loc[:-1] + scale[:-1] * rng.standard_normal((n - 1, 2))
    ar = fit_linear_ar(values, 2, test_start)
    good = one_step_metrics(["a", "b"], values, loc, scale, test_start, ar)
    bad = one_step_metrics(["a", "b"], values, loc, 3 * scale, test_start, ar)
    assert abs(good["coverage_80"] - 0.8) < 0.03
    assert bad["coverage_80"] > 0.95 and bad["crps"] > good["crps"]
    assert {"crps_linear_ar", "coverage_80_linear_ar", "crps.a", "coverage_80.b"} <= good.keys()
    assert abs(Z_INTERVAL - 1.2816) < 1e-4


def test_horizon_metrics_score_every_horizon_on_the_same_origins() -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((200, 1)).cumsum(axis=0)
    ar = fit_linear_ar(values, 1, 150)
    origins = np.arange(149, 193)
    # a "model" that is the AR itself: same RMSE as the AR's own roll-outs
    mean = ar.rollout(values, origins, 7)
    paths = mean[:, None] + rng.standard_normal((len(origins), 50, 7, 1))
    metrics = horizon_metrics(values, Rollouts(origins, mean, paths), ar, seasonal_lag=7)
    for h in (1, 3, 7):
        assert metrics[f"rollout_rmse_h{h}"] == pytest.approx(
            metrics[f"rollout_rmse_linear_ar_h{h}"]
        )
        assert 0 <= metrics[f"rollout_coverage_80_h{h}"] <= 1
        assert f"rollout_rmse_persistence_h{h}" in metrics
    rows = calibration_table(metrics | {"coverage_80": 0.8, "coverage_80_linear_ar": 0.7})
    assert rows[0][0].startswith("coverage")


def test_a_tiny_probabilistic_forecaster_trains_exports_and_serves(tmp_path: Path) -> None:
    recipe = dataclasses.replace(RECIPES["temps_gru"], **TINY)  # type: ignore[arg-type]
    assert isinstance(recipe, ForecastRecipe)
    result = run_recipe(recipe, tmp_path, progress=False)
    assert result.path is not None
    m = read_version(result.path).manifest
    assert m.distribution is not None and m.distribution.scale_output == "scale"
    for key in ("coverage_80", "crps", "crps_linear_ar", "rollout_rmse_h7"):
        assert key in m.metrics
    assert "rollout_rmse_linear_ar_h3" in m.metrics and "rmse_linear_ar" in m.metrics
    assert m.parity.step_vs_whole is not None and m.parity.step_vs_whole <= 1e-5
    ports = GraphPorts(
        input="x",
        output="y",
        states=tuple(StatePort(s.input, s.output, (s.shape[0], 1, s.shape[1]), 1) for s in m.state),
        extra_outputs=("scale",),
    )
    session = ort_session(read_version(result.path).onnx_path.read_bytes())
    probe = np.random.default_rng(0).standard_normal((2, 9, 2)).astype(np.float32)
    states = [np.zeros((1, 2, 8), np.float32)]
    assert step_vs_whole(session, ports, probe, states) <= 1e-5
    assert scan(tmp_path).errors == []
    registry = ModelRegistry(tmp_path)
    registry.load()
    model = registry.get("temps_gru")
    y, _ = model.run_batch(probe, [model.zero_state()] * 2)
    assert y.shape == (2, 9, 4) and (y[..., 2:] > 0).all()  # mean, then a positive scale
