"""Baselines every bundled forecaster must beat on the same held-out data.

Naive ones (persistence, seasonal naive) and the strong simple one a data scientist would
try first: linear autoregression by least squares over the same inputs the model gets, its
order chosen on a validation split of the training period (never on the held-out tail).
The language model's baselines are in ``service.training.ngram``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ids = npt.NDArray[np.int64]

AR_ORDERS = tuple(range(1, 29))
"""Orders (days of history) the linear autoregression chooses from."""


def rmse_per_feature(pred: Floats, target: Floats) -> Floats:
    """Root mean squared error of each feature (column), in the data's units."""
    return np.asarray(np.sqrt(np.mean((pred - target) ** 2, axis=0)), dtype=np.float64)


def lagged_rmse(values: Floats, targets: range, lag: int) -> Floats | None:
    """RMSE per feature of predicting ``values[t]`` by ``values[t - lag]`` for t in ``targets``.

    ``lag=1`` is persistence; ``lag`` = season length is the seasonal naive forecast. None when
    the series is too short to look back ``lag`` steps from the first target.
    """
    if targets.start - lag < 0:
        return None
    idx = np.arange(targets.start, targets.stop)
    return rmse_per_feature(values[idx - lag], values[idx])


@dataclass(frozen=True)
class LinearAR:
    """``values[t + 1] ≈ b + Σ_k W_k values[t - k]`` for k < ``order``, all features jointly."""

    order: int
    weights: Floats
    """``[order * features + 1, features]``: lag 0 block first, the intercept last."""
    residual_std: Floats
    """Per feature, of the one-step residuals on the rows it was fitted on."""

    def design(self, values: Floats, origins: npt.NDArray[np.int64]) -> Floats:
        return _design(values, self.order, origins)

    def predict(self, values: Floats, origins: Iterable[int]) -> Floats:
        """One-step forecasts of ``values[t + 1]`` made at each origin ``t >= order - 1``."""
        idx = np.fromiter(origins, dtype=np.int64)
        if len(idx) and idx.min() < self.order - 1:
            raise ValueError(f"an AR({self.order}) forecast needs {self.order} rows of history")
        return self.design(values, idx) @ self.weights

    def rollout(self, values: Floats, origins: Iterable[int], horizon: int) -> Floats:
        """``[origins, horizon, features]``: forecasts of ``values[t + 1 .. t + horizon]`` made
        at each origin ``t``, each predicted row fed back as the next row of history."""
        idx = np.fromiter(origins, dtype=np.int64)
        history = np.stack([values[idx - k] for k in range(self.order)], axis=1)
        out = np.empty((len(idx), horizon, values.shape[1]), dtype=np.float64)
        for h in range(horizon):
            x = np.concatenate([history.reshape(len(idx), -1), np.ones((len(idx), 1))], axis=1)
            out[:, h] = x @ self.weights
            history = np.concatenate([out[:, h][:, None], history[:, :-1]], axis=1)
        return out


def _design(values: Floats, order: int, origins: npt.NDArray[np.int64]) -> Floats:
    lags = [values[origins - k] for k in range(order)]
    return np.concatenate([*lags, np.ones((len(origins), 1))], axis=1)


def fit_linear_ar(values: Floats, order: int, end: int) -> LinearAR:
    """Least squares on the rows before ``end``: every origin whose target is before ``end``."""
    origins = np.arange(order - 1, end - 1)
    if len(origins) <= order * values.shape[1] + 1:
        raise ValueError(f"too few rows ({end}) to fit AR({order})")
    x = _design(values, order, origins)
    y = values[origins + 1]
    weights, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual_std = np.asarray(np.sqrt(np.mean((x @ weights - y) ** 2, axis=0)), np.float64)
    return LinearAR(order=order, weights=np.asarray(weights, np.float64), residual_std=residual_std)


@dataclass(frozen=True)
class OrderChoice:
    order: int
    validation_rmse: dict[int, float]
    """Mean RMSE over features on the validation rows, per order tried."""


def choose_ar_order(
    values: Floats, train_end: int, validation_rows: int, orders: Iterable[int] = AR_ORDERS
) -> OrderChoice:
    """Fit each order on ``values[: train_end - validation_rows]`` and keep the one with the
    lowest mean RMSE forecasting the ``validation_rows`` rows before ``train_end``."""
    val_start = train_end - validation_rows
    scores: dict[int, float] = {}
    for order in orders:
        if val_start - order < 2 * (order * values.shape[1] + 1):
            continue  # fewer than two rows per coefficient
        model = fit_linear_ar(values, order, val_start)
        origins = range(val_start - 1, train_end - 1)
        pred = model.predict(values, origins)
        scores[order] = float(rmse_per_feature(pred, values[val_start:train_end]).mean())
    if not scores:
        raise ValueError("no AR order fits the validation split")
    best = min(scores, key=lambda k: (scores[k], k))
    return OrderChoice(order=best, validation_rmse=scores)


def gaussian_crps(mean: Floats, std: Floats, target: Floats) -> Floats:
    """CRPS of Normal(mean, std) at ``target``, elementwise (closed form)."""
    z = (target - mean) / std
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    return np.asarray(std * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi)), np.float64)


def _erf(x: Floats) -> Floats:
    return np.asarray(np.vectorize(math.erf)(x), dtype=np.float64)


def unigram_perplexity(train: Ids, test: Ids, vocab: int) -> float:
    """Perplexity of ``test[1:]`` under add-one-smoothed character frequencies of ``train``."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64)
    probs = (counts + 1.0) / (counts.sum() + vocab)
    return math.exp(-float(np.mean(np.log(probs[test[1:]]))))


def bigram_perplexity(train: Ids, test: Ids, vocab: int) -> float:
    """Perplexity of ``test[1:]`` given the previous character, add-one smoothed on ``train``."""
    pairs = np.zeros((vocab, vocab), dtype=np.float64)
    np.add.at(pairs, (train[:-1], train[1:]), 1.0)
    probs = (pairs + 1.0) / (pairs.sum(axis=1, keepdims=True) + vocab)
    return math.exp(-float(np.mean(np.log(probs[test[:-1], test[1:]]))))
