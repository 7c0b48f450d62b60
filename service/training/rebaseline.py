"""Add the current baselines' held-out figures to stored versions trained before them.

``python -m service.training.rebaseline [STORE]`` loads each bundled recipe's data, checks
that it is the data a stored version was trained on (same dataset, package version and row
count), computes every baseline on that version's own split and adds the figures its
manifest lacks. The model's own figures are never touched, so an older version that loses
to a newer baseline says so in its manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.models.manifest import MANIFEST_FILE, TextInput
from service.models.store import read_version
from service.training.data import load_pydoc_topics
from service.training.forecast_eval import baseline_metrics
from service.training.language import ngram_metrics
from service.training.recipes import RECIPES, CharLMRecipe, ForecastRecipe
from service.training.text import encode


def _forecast_baselines(recipe: ForecastRecipe, rows: int, names: list[str]) -> dict[str, float]:
    series = recipe.load()
    if list(series.names) != names:
        raise ValueError("the data's columns differ from the model's inputs")
    values = series.values[:rows]
    return baseline_metrics(series.names, values, rows - recipe.test_rows, recipe.seasonal_lag)


def _text_baselines(recipe: CharLMRecipe, rows: int, vocab: list[str]) -> dict[str, float]:
    text = load_pydoc_topics().text[:rows]
    split_at = int(len(text) * (1.0 - recipe.test_fraction))
    train, test = encode(text[:split_at], vocab), encode(text[split_at:], vocab)
    return ngram_metrics(train, test, len(vocab))


def add_baselines(version_dir: Path, recipe: ForecastRecipe | CharLMRecipe) -> list[str]:
    """Add the baseline figures ``version_dir``'s manifest lacks; returns the keys added.
    Raises ValueError when the data does not match the version's provenance."""
    manifest = read_version(version_dir).manifest
    trained = manifest.training
    if isinstance(recipe, ForecastRecipe):
        series = recipe.load()
        expected = (series.dataset, series.package_version)
    else:
        corpus = load_pydoc_topics()
        expected = (corpus.dataset, corpus.package_version)
    if trained is None or (trained.dataset, trained.package_version) != expected:
        raise ValueError(
            f"{version_dir}: its training data ({trained}) is not what recipe "
            f"{recipe.name} loads now ({expected})"
        )
    if isinstance(recipe, ForecastRecipe):
        assert manifest.input.kind == "features"
        figures = _forecast_baselines(recipe, trained.rows, manifest.input.names)
    else:
        assert isinstance(manifest.input, TextInput)
        figures = _text_baselines(recipe, trained.rows, manifest.input.vocab)
    missing = {k: v for k, v in figures.items() if k not in manifest.metrics}
    if not missing:
        return []
    # the manifest as written, plus the new figures (fields added to the schema later stay absent)
    manifest_path = version_dir / MANIFEST_FILE
    raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    raw["metrics"] = raw["metrics"] | missing
    manifest_path.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    read_version(version_dir)
    return sorted(missing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.training.rebaseline",
        description="Add the current baselines' figures to stored versions of bundled recipes.",
    )
    parser.add_argument("store", nargs="?", type=Path, default=Path("model_store"))
    args = parser.parse_args(argv)
    for name, recipe in RECIPES.items():
        if not (args.store / name).is_dir():
            continue
        for version_dir in sorted((args.store / name).iterdir()):
            if version_dir.is_dir() and version_dir.name.isdigit():
                added = add_baselines(version_dir, recipe)
                if added:
                    print(f"{version_dir}: added {', '.join(added)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
