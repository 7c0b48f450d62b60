"""How well a probabilistic forecaster's distribution fits the held-out tail.

Three figures (issue 24), each beside a baseline's on the same targets:

- ``coverage_80``: how often the realised value lies in the central 80 % interval of the
  one-step-ahead forecast (the 0.1 and 0.9 quantiles); a calibrated model gives 0.8.
- ``crps``: the continuous ranked probability score of the one-step forecast (lower is
  better, in the data's units), against ``crps_linear_ar``, the linear AR baseline with
  Gaussian residuals (its residual spread on the training rows).
- ``rollout_rmse_h{1,3,7}``: RMSE of the forecast ``h`` steps ahead made by rolling the model
  forward on its own mean, against the linear AR's own roll-outs
  (``rollout_rmse_linear_ar_h*``), persistence and seasonal naive; and
  ``rollout_coverage_80_h*``, the 80 % interval of sample paths drawn through the model's
  state. Every horizon is scored on the same forecast origins.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from service.training.baselines import Floats, LinearAR, gaussian_crps

HORIZONS = (1, 3, 7)
INTERVAL = 0.8
Z_INTERVAL = NormalDist().inv_cdf(0.5 + INTERVAL / 2)


@dataclass(frozen=True)
class Rollouts:
    """The model's roll-outs from ``origins`` (data units): ``mean`` ``[origins, H, F]`` fed
    back its own mean, ``paths`` ``[origins, samples, H, F]`` fed back its own draws."""

    origins: np.ndarray
    mean: Floats
    paths: Floats


def rollout_origins(n: int, test_start: int, horizon: int) -> np.ndarray:
    """Origins ``t`` (the last seen row) in the tail from which ``t + horizon`` is in it."""
    return np.arange(test_start - 1, n - horizon, dtype=np.int64)


def _per_feature(key: str, names: list[str], per: Floats) -> dict[str, float]:
    out = {key: float(np.mean(per))}
    out |= {f"{key}.{name}": float(per[j]) for j, name in enumerate(names)}
    return out


def one_step_metrics(
    names: list[str],
    values: Floats,
    loc: Floats,
    scale: Floats,
    test_start: int,
    ar: LinearAR,
) -> dict[str, float]:
    """Coverage and CRPS of the one-step forecasts of the tail; ``loc[t]`` and ``scale[t]``
    (data units) forecast ``values[t + 1]``."""
    n = len(values)
    target = values[test_start:]
    mu, sd = loc[test_start - 1 : n - 1], scale[test_start - 1 : n - 1]
    inside = np.abs(target - mu) <= Z_INTERVAL * sd
    ar_mu = ar.predict(values, range(test_start - 1, n - 1))
    ar_sd = np.broadcast_to(ar.residual_std, ar_mu.shape)
    ar_inside = np.abs(target - ar_mu) <= Z_INTERVAL * ar_sd
    metrics = _per_feature("coverage_80", names, inside.mean(axis=0))
    metrics |= _per_feature("coverage_80_linear_ar", names, ar_inside.mean(axis=0))
    metrics |= _per_feature("crps", names, gaussian_crps(mu, sd, target).mean(axis=0))
    metrics |= _per_feature(
        "crps_linear_ar", names, gaussian_crps(ar_mu, ar_sd, target).mean(axis=0)
    )
    return metrics


def _rmse(pred: Floats, target: Floats) -> float:
    return float(np.mean(np.sqrt(np.mean((pred - target) ** 2, axis=0))))


def horizon_metrics(
    values: Floats, rollouts: Rollouts, ar: LinearAR, seasonal_lag: int
) -> dict[str, float]:
    """RMSE (mean over features) at each of ``HORIZONS`` of the model's mean roll-out, the
    linear AR's roll-out, persistence and seasonal naive; and the sample paths' coverage."""
    origins = rollouts.origins
    horizon = rollouts.mean.shape[1]
    ar_paths = ar.rollout(values, origins, horizon)
    lo = np.quantile(rollouts.paths, 0.5 - INTERVAL / 2, axis=1)
    hi = np.quantile(rollouts.paths, 0.5 + INTERVAL / 2, axis=1)
    metrics: dict[str, float] = {}
    for h in HORIZONS:
        if h > horizon:
            continue
        target = values[origins + h]
        metrics[f"rollout_rmse_h{h}"] = _rmse(rollouts.mean[:, h - 1], target)
        metrics[f"rollout_rmse_linear_ar_h{h}"] = _rmse(ar_paths[:, h - 1], target)
        metrics[f"rollout_rmse_persistence_h{h}"] = _rmse(values[origins], target)
        back = origins + h - seasonal_lag
        if back.min() >= 0:
            metrics[f"rollout_rmse_seasonal_naive_h{h}"] = _rmse(values[back], target)
        inside = (target >= lo[:, h - 1]) & (target <= hi[:, h - 1])
        metrics[f"rollout_coverage_80_h{h}"] = float(inside.mean())
    return metrics


def calibration_table(metrics: dict[str, float]) -> list[tuple[str, str, str]]:
    """(figure, model, baseline) rows for the docs and the trainer's report."""
    rows = [
        ("coverage of the 80% interval, 1 step", "coverage_80", "coverage_80_linear_ar"),
        ("CRPS, 1 step", "crps", "crps_linear_ar"),
    ]
    rows += [
        (f"RMSE at horizon {h} (roll-out)", f"rollout_rmse_h{h}", f"rollout_rmse_linear_ar_h{h}")
        for h in HORIZONS
    ]
    return [
        (label, f"{metrics[a]:.4f}", f"{metrics[b]:.4f}")
        for label, a, b in rows
        if a in metrics and b in metrics
    ]
