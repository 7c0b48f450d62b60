"""The held-out sample a forecasting version ships (``sample_file``): real rows the model
never saw, written at training time and for the bundled versions by
``python -m service.training.samples``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from service.models.store import read_version
from service.training.data import load_seattle_daily_temps, load_seattle_weather
from service.training.recipes import RECIPES, ForecastRecipe
from service.training.samples import SAMPLE_FILE, add_sample, heldout_sample

pytestmark = [pytest.mark.train]

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "model_store"


@pytest.mark.parametrize(
    ("name", "load"),
    [("weather_lstm", load_seattle_weather), ("temps_gru", load_seattle_daily_temps)],
)
def test_bundled_sample_is_the_real_heldout_tail(name: str, load: object) -> None:
    manifest = read_version(STORE / name / "1").manifest
    assert manifest.sample_file == SAMPLE_FILE
    doc = json.loads((STORE / name / "1" / SAMPLE_FILE).read_text())
    series = load()  # type: ignore[operator]
    recipe = RECIPES[name]
    assert isinstance(recipe, ForecastRecipe)
    assert doc["names"] == list(series.names) == manifest.input.names  # type: ignore[union-attr]
    assert len(doc["values"]) == len(doc["times"]) == recipe.test_rows
    assert doc["times"] == list(series.times[-recipe.test_rows :])
    assert doc["times"][0] == "2015-01-01"  # the split the manifest records
    assert "2015-01-01" in manifest.training.split  # type: ignore[union-attr]
    tail = series.values[-recipe.test_rows :]
    assert all(
        abs(a - b) < 1e-3
        for row, real in zip(doc["values"], tail, strict=True)
        for a, b in zip(row, real, strict=True)
    )


def test_the_script_adds_a_sample_to_a_version_without_one(tmp_path: Path) -> None:
    version = tmp_path / "temps_gru" / "1"
    shutil.copytree(STORE / "temps_gru" / "1", version)
    raw = json.loads((version / "manifest.json").read_text())
    del raw["sample_file"]
    (version / "manifest.json").write_text(json.dumps(raw))
    (version / SAMPLE_FILE).unlink()
    recipe = RECIPES["temps_gru"]
    assert isinstance(recipe, ForecastRecipe)
    assert add_sample(version, recipe) == version / SAMPLE_FILE
    assert read_version(version).manifest.sample_file == SAMPLE_FILE
    assert (version / SAMPLE_FILE).read_bytes() == (
        STORE / "temps_gru/1" / SAMPLE_FILE
    ).read_bytes()
    assert add_sample(version, recipe) is None  # already there: left alone


def test_the_script_refuses_a_version_trained_on_other_rows(tmp_path: Path) -> None:
    version = tmp_path / "temps_gru" / "1"
    shutil.copytree(STORE / "temps_gru" / "1", version)
    raw = json.loads((version / "manifest.json").read_text())
    del raw["sample_file"]
    (version / "manifest.json").write_text(json.dumps(raw))
    bundled = RECIPES["temps_gru"]
    assert isinstance(bundled, ForecastRecipe)
    recipe = dataclasses.replace(bundled, limit_rows=300)
    with pytest.raises(ValueError, match="training data"):
        add_sample(version, recipe)


def test_sample_rows_of_a_limited_series() -> None:
    series = load_seattle_daily_temps()
    doc = json.loads(heldout_sample(series, 60, 300))
    assert doc["times"] == list(series.times[240:300])


def test_training_writes_the_sample_with_the_version(tmp_path: Path) -> None:
    from service.training.train import run_recipe
    from tests.training.test_train import tiny

    result = run_recipe(tiny("temps_gru"), tmp_path, progress=False)
    assert result.path is not None
    assert read_version(result.path).manifest.sample_file == SAMPLE_FILE
    doc = json.loads((result.path / SAMPLE_FILE).read_text())
    assert len(doc["times"]) == 60
    assert doc["times"][-1] == load_seattle_daily_temps().times[299]
