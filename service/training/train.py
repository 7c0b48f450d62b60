"""``run_recipe``: the whole pipeline behind ``lstm-serve train RECIPE``.

It trains with fixed seeds, evaluates on the held-out tail against the baselines, exports to
ONNX, verifies the export and writes the next version into the model store.
"""

from __future__ import annotations

from pathlib import Path

from service.training.forecasting import train_forecaster
from service.training.language import train_charlm
from service.training.pipeline import BaselineNotBeaten, Evaluation, TrainResult
from service.training.probabilistic import train_probabilistic
from service.training.recipes import ForecastRecipe, Recipe

__all__ = ["BaselineNotBeaten", "Evaluation", "TrainResult", "run_recipe"]


def run_recipe(
    recipe: Recipe, store: Path | None, strict: bool = False, progress: bool = True
) -> TrainResult:
    """Train ``recipe`` and write the next version into ``store`` (None: write nothing)."""
    if isinstance(recipe, ForecastRecipe):
        if recipe.likelihood != "none":
            return train_probabilistic(recipe, store, strict, progress)
        return train_forecaster(recipe, store, strict, progress)
    return train_charlm(recipe, store, strict, progress)
