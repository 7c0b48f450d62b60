"""Held-out evaluation of a forecaster against persistence, seasonal naive and linear AR."""

from __future__ import annotations

import numpy as np

from service.training import baselines
from service.training.baselines import Floats
from service.training.pipeline import Evaluation

BASELINES = ("persistence", "seasonal_naive", "linear_ar")


def ar_validation_rows(train_rows: int, test_rows: int) -> int:
    """Rows at the end of the training period the AR order is chosen on: as many as the
    held-out tail, but at most a third of the training rows."""
    return max(min(test_rows, train_rows // 3), 1)


def fit_ar_baseline(values: Floats, test_start: int) -> tuple[baselines.LinearAR, dict[str, float]]:
    """The linear AR fitted on the rows before ``test_start``, its order chosen on the end of
    those rows; and the choice's record for the manifest."""
    choice = baselines.choose_ar_order(
        values, test_start, ar_validation_rows(test_start, len(values) - test_start)
    )
    return baselines.fit_linear_ar(values, choice.order, test_start), {
        "linear_ar_order": float(choice.order)
    }


def _per_feature_metrics(
    names: tuple[str, ...] | list[str], per_feature: dict[str, Floats | None]
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for suffix, per in per_feature.items():
        if per is not None:
            metrics[f"rmse{suffix}"] = float(np.mean(per))
    for j, name in enumerate(names):
        for suffix, per in per_feature.items():
            if per is not None:
                metrics[f"rmse{suffix}.{name}"] = float(per[j])
    return metrics


def baseline_metrics(
    names: tuple[str, ...] | list[str], values: Floats, test_start: int, seasonal_lag: int
) -> dict[str, float]:
    """Held-out RMSE of every baseline (``rmse_<baseline>`` and per feature
    ``rmse_<baseline>.<name>``), in the data's units, averaged over the features."""
    n = len(values)
    targets = range(test_start, n)
    ar, record = fit_ar_baseline(values, test_start)
    per_feature: dict[str, Floats | None] = {
        "_persistence": baselines.lagged_rmse(values, targets, 1),
        "_seasonal_naive": baselines.lagged_rmse(values, targets, seasonal_lag),
        "_linear_ar": baselines.rmse_per_feature(
            ar.predict(values, range(test_start - 1, n - 1)), values[test_start:]
        ),
    }
    return _per_feature_metrics(names, per_feature) | record


def forecast_metrics(
    names: tuple[str, ...] | list[str],
    values: Floats,
    pred: Floats,
    test_start: int,
    seasonal_lag: int,
) -> Evaluation:
    """Held-out RMSE of the model beside every baseline's.

    ``pred[t]`` is the model's forecast of ``values[t + 1]`` made after seeing
    ``values[: t + 1]``.
    """
    model = baselines.rmse_per_feature(pred[test_start - 1 :], values[test_start:])
    metrics = _per_feature_metrics(names, {"": model})
    metrics |= baseline_metrics(names, values, test_start, seasonal_lag)
    keys = [f"rmse_{b}" for b in BASELINES if f"rmse_{b}" in metrics]
    evaluation = Evaluation(metrics=metrics, headline="rmse", baseline_keys=keys)
    evaluation.check()
    return evaluation
