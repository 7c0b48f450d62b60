"""The held-out sample that ships with a forecasting model version.

A model version of a forecasting recipe carries the real rows of its held-out tail in a
small JSON file (``heldout.json``) named by the manifest's ``sample_file``, so the console's
forecast playground can stream real days the model never saw without the training data
package being installed where the model is served.

Training writes it with every new version (``service.training.train``). For versions
trained before the file existed, run ``python -m service.training.samples [STORE]``: it
loads each forecasting recipe's data with the train extra's loaders, checks that the data
matches the version's recorded provenance (same dataset, package version and row count),
writes the file and adds ``sample_file`` to the manifest. Versions that already name a
sample are left alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.models.manifest import MANIFEST_FILE
from service.models.store import read_version
from service.training.data import Series
from service.training.recipes import RECIPES, ForecastRecipe

SAMPLE_FILE = "heldout.json"


def heldout_sample(series: Series, test_rows: int, limit_rows: int | None = None) -> bytes:
    """The last ``test_rows`` rows of ``series`` (after ``limit_rows``) as the sample file."""
    times = series.times[:limit_rows] if limit_rows is not None else series.times
    values = series.values[:limit_rows] if limit_rows is not None else series.values
    start = len(times) - test_rows
    doc = {
        "kind": "heldout",
        "dataset": series.dataset,
        "names": list(series.names),
        "times": list(times[start:]),
        "values": [[round(float(v), 4) for v in row] for row in values[start:]],
    }
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def add_sample(version_dir: Path, recipe: ForecastRecipe) -> Path | None:
    """Write the held-out sample of one stored version of ``recipe``; None if it has one
    already. Raises ValueError when the data does not match the version's provenance."""
    stored = read_version(version_dir)
    manifest = stored.manifest
    if manifest.sample_file is not None:
        return None
    series = recipe.load()
    rows = len(series.times) if recipe.limit_rows is None else recipe.limit_rows
    trained = manifest.training
    if trained is None or (trained.dataset, trained.package_version, trained.rows) != (
        series.dataset,
        series.package_version,
        rows,
    ):
        raise ValueError(
            f"{version_dir}: its training data ({trained}) is not what recipe "
            f"{recipe.name} loads now ({series.dataset} {series.package_version}, {rows} rows)"
        )
    if list(series.names) != (manifest.input.names if manifest.input.kind == "features" else []):
        raise ValueError(f"{version_dir}: the data's columns differ from the model's inputs")
    path = version_dir / SAMPLE_FILE
    path.write_bytes(heldout_sample(series, recipe.test_rows, recipe.limit_rows))
    # the manifest as written, plus one key (fields added to the schema later stay absent)
    manifest_path = version_dir / MANIFEST_FILE
    raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    created = raw.pop("created_at")
    raw |= {"sample_file": SAMPLE_FILE, "created_at": created}
    manifest_path.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    read_version(version_dir)
    return path


def add_samples(store: Path) -> list[Path]:
    """``add_sample`` for every stored version of every forecasting recipe in ``store``."""
    written: list[Path] = []
    for name, recipe in RECIPES.items():
        if not isinstance(recipe, ForecastRecipe) or not (store / name).is_dir():
            continue
        for version_dir in sorted((store / name).iterdir()):
            if version_dir.is_dir() and version_dir.name.isdigit():
                path = add_sample(version_dir, recipe)
                if path is not None:
                    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.training.samples",
        description="Write the held-out sample file of stored forecasting model versions.",
    )
    parser.add_argument("store", nargs="?", type=Path, default=Path("model_store"))
    args = parser.parse_args(argv)
    for path in add_samples(args.store):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
