"""Dataset loaders. Every dataset is a file an installed package ships; nothing is downloaded."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.resources
import io
import platform
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

WEATHER_FEATURES = ("precipitation", "temp_max", "temp_min", "wind")


@dataclass(frozen=True)
class Series:
    """A multivariate time series, oldest row first, and where it came from."""

    dataset: str
    package: str
    package_version: str
    source: str
    names: tuple[str, ...]
    times: tuple[str, ...]
    values: npt.NDArray[np.float64]
    """``[rows, features]`` in the data's own units."""


@dataclass(frozen=True)
class Text:
    """A text corpus and where it came from."""

    dataset: str
    package: str
    package_version: str
    source: str
    text: str


def _vega_csv(file: str) -> tuple[list[dict[str, str]], str]:
    resource = importlib.resources.files("vega_datasets").joinpath("_data", file)
    rows = list(csv.DictReader(io.StringIO(resource.read_text(encoding="utf-8"), newline="")))
    return rows, f"vega_datasets/_data/{file}"


def _vega_version() -> str:
    return importlib.metadata.version("vega-datasets")


def load_seattle_weather() -> Series:
    """Daily Seattle weather 2012-2015: precipitation (mm), temp_max/min (°C), wind (m/s)."""
    rows, source = _vega_csv("seattle-weather.csv")
    rows.sort(key=lambda r: r["date"])
    values = np.array([[float(r[f]) for f in WEATHER_FEATURES] for r in rows], dtype=np.float64)
    times = tuple(datetime.strptime(r["date"], "%Y/%m/%d").date().isoformat() for r in rows)
    return Series(
        dataset="seattle-weather",
        package="vega-datasets",
        package_version=_vega_version(),
        source=source,
        names=WEATHER_FEATURES,
        times=times,
        values=values,
    )


def load_seattle_daily_temps() -> Series:
    """Daily Seattle temp_max and temp_min (°C) 2012-2015, from the same file as the weather."""
    weather = load_seattle_weather()
    columns = [WEATHER_FEATURES.index("temp_max"), WEATHER_FEATURES.index("temp_min")]
    return Series(
        dataset=weather.dataset,
        package=weather.package,
        package_version=weather.package_version,
        source=weather.source,
        names=("temp_max", "temp_min"),
        times=weather.times,
        values=weather.values[:, columns],
    )


def load_seattle_temps() -> Series:
    """Hourly Seattle temperature (°F) for 2010."""
    rows, source = _vega_csv("seattle-temps.csv")
    rows.sort(key=lambda r: datetime.strptime(r["date"], "%Y/%m/%d %H:%M"))
    values = np.array([[float(r["temp"])] for r in rows], dtype=np.float64)
    times = tuple(datetime.strptime(r["date"], "%Y/%m/%d %H:%M").isoformat() for r in rows)
    return Series(
        dataset="seattle-temps",
        package="vega-datasets",
        package_version=_vega_version(),
        source=source,
        names=("temp",),
        times=times,
        values=values,
    )


def load_pydoc_topics() -> Text:
    """The Python language reference topics shipped with the standard library's pydoc.

    Topics are joined in sorted key order with a blank line between them, so the corpus
    (and the split) is the same on every run of the same Python version.
    """
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return Text(
        dataset="pydoc_data.topics",
        package="python (standard library)",
        package_version=platform.python_version(),
        source="pydoc_data/topics.py",
        text=text,
    )
