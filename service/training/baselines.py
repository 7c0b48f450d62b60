"""Naive baselines every bundled model must beat on the same held-out data."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ids = npt.NDArray[np.int64]


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
