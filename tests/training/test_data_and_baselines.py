"""Dataset loaders read package-shipped files; the naive baselines compute what they claim."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.training import baselines
from service.training.data import (
    load_pydoc_topics,
    load_seattle_daily_temps,
    load_seattle_temps,
    load_seattle_weather,
)

pytestmark = [pytest.mark.train]


def test_seattle_weather_is_four_years_of_daily_rows() -> None:
    s = load_seattle_weather()
    assert s.values.shape == (1461, 4)
    assert s.names == ("precipitation", "temp_max", "temp_min", "wind")
    assert s.times[0] == "2012-01-01" and s.times[-1] == "2015-12-31"
    assert np.isfinite(s.values).all()
    assert s.package == "vega-datasets" and s.package_version
    assert (s.values[:, 1] >= s.values[:, 2]).all()


def test_daily_temps_are_the_weather_temperature_columns() -> None:
    temps, weather = load_seattle_daily_temps(), load_seattle_weather()
    np.testing.assert_array_equal(temps.values, weather.values[:, 1:3])
    assert temps.names == ("temp_max", "temp_min")


def test_seattle_hourly_temps_are_sorted_hours() -> None:
    s = load_seattle_temps()
    assert s.values.shape[1] == 1 and len(s.values) > 8000
    assert list(s.times) == sorted(s.times)


def test_pydoc_topics_text_is_deterministic_english() -> None:
    a, b = load_pydoc_topics(), load_pydoc_topics()
    assert a.text == b.text and len(a.text) > 100_000
    assert "the" in a.text


def test_persistence_and_seasonal_naive() -> None:
    values = np.arange(10, dtype=np.float64).reshape(-1, 1) ** 2
    rmse = baselines.lagged_rmse(values, range(8, 10), 1)
    assert rmse is not None
    # 64 -> 49 and 81 -> 64: errors 15 and 17.
    assert rmse[0] == pytest.approx(math.sqrt((15**2 + 17**2) / 2))
    assert baselines.lagged_rmse(values, range(3, 10), 4) is None


def test_unigram_and_bigram_perplexity() -> None:
    train = np.array([0, 1, 0, 1, 0, 1], dtype=np.int64)
    test = np.array([0, 1, 0], dtype=np.int64)
    # Add-one unigram over 3 symbols: p(0) = 4/9, p(1) = 4/9.
    assert baselines.unigram_perplexity(train, test, 3) == pytest.approx(9 / 4)
    # Bigrams: 0->1 three times, 1->0 twice; p(1|0) = 4/6, p(0|1) = 3/5.
    expected = math.exp(-(math.log(4 / 6) + math.log(3 / 5)) / 2)
    assert baselines.bigram_perplexity(train, test, 3) == pytest.approx(expected)
    assert baselines.bigram_perplexity(train, test, 3) < baselines.unigram_perplexity(
        train, test, 3
    )
