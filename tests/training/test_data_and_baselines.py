"""Dataset loaders read package-shipped files; the baselines compute what they claim."""

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
from service.training.forecast_eval import baseline_metrics, fit_ar_baseline
from service.training.language import ngram_metrics
from service.training.ngram import KneserNey, choose_order
from service.training.text import build_vocab, encode

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


def _ar_series(rows: int, seed: int = 0) -> np.ndarray:
    """Two features: x follows AR(2) on itself, y follows x one step late, plus noise."""
    rng = np.random.default_rng(seed)
    v = np.zeros((rows, 2))
    for t in range(2, rows):
        v[t, 0] = 0.6 * v[t - 1, 0] - 0.3 * v[t - 2, 0] + 1.0 + rng.normal(0, 0.1)
        v[t, 1] = 0.8 * v[t - 1, 0] + rng.normal(0, 0.5)
    return v


def test_linear_ar_recovers_its_coefficients_and_residuals() -> None:
    v = _ar_series(2000)
    ar = baselines.fit_linear_ar(v, 2, end=2000)
    # Rows: lag-0 features (x, y), lag-1 features (x, y), intercept; columns: targets.
    np.testing.assert_allclose(ar.weights[:, 0], [0.6, 0, -0.3, 0, 1.0], atol=0.05)
    np.testing.assert_allclose(ar.weights[:, 1], [0.8, 0, 0, 0, 0], atol=0.05)
    np.testing.assert_allclose(ar.residual_std, [0.1, 0.5], rtol=0.1)
    pred = ar.predict(v, [10, 11])
    np.testing.assert_allclose(pred, ar.design(v, np.array([10, 11])) @ ar.weights)
    with pytest.raises(ValueError, match="history"):
        ar.predict(v, [0])


def test_linear_ar_fits_only_rows_before_its_end() -> None:
    v = _ar_series(300)
    changed = v.copy()
    changed[200:] = 1e6
    a, b = baselines.fit_linear_ar(v, 3, end=200), baselines.fit_linear_ar(changed, 3, end=200)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_ar_order_is_chosen_on_the_validation_rows() -> None:
    v = _ar_series(300)
    choice = baselines.choose_ar_order(v, train_end=300, validation_rows=100, orders=(1, 2, 3))
    assert set(choice.validation_rmse) == {1, 2, 3}
    assert choice.order == min(choice.validation_rmse, key=lambda k: choice.validation_rmse[k])
    # The series is AR(2): order 1 misses the second lag.
    assert choice.validation_rmse[1] > choice.validation_rmse[2]


def test_linear_ar_rollout_feeds_its_forecasts_back() -> None:
    v = _ar_series(200)
    ar = baselines.fit_linear_ar(v, 2, end=200)
    paths = ar.rollout(v, [50, 60], horizon=3)
    assert paths.shape == (2, 3, 2)
    np.testing.assert_allclose(paths[:, 0], ar.predict(v, [50, 60]))
    extended = np.concatenate([v[:51], paths[0, :1]])
    np.testing.assert_allclose(paths[0, 1], ar.predict(extended, [51])[0])


def test_gaussian_crps() -> None:
    # CRPS of N(0, 1) at its mean is 2 * pdf(0) - 1 / sqrt(pi).
    zero = baselines.gaussian_crps(np.zeros(1), np.ones(1), np.zeros(1))
    assert zero[0] == pytest.approx(2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi))
    # Far from the mean it approaches the absolute error.
    far = baselines.gaussian_crps(np.zeros(1), np.full(1, 0.01), np.full(1, 5.0))
    assert far[0] == pytest.approx(5.0, abs=0.01)
    # A sharper forecast at the right place scores better.
    sharp = baselines.gaussian_crps(np.zeros(1), np.full(1, 0.5), np.zeros(1))
    assert sharp[0] < zero[0]


def test_kneser_ney_distributions_sum_to_one() -> None:
    ids = encode(load_pydoc_topics().text[:3000], build_vocab(load_pydoc_topics().text, 1))
    vocab = int(ids.max()) + 1
    model = KneserNey(ids, 4, vocab)
    for context in (b"", ids[100:101].astype(np.uint8).tobytes(), bytes(ids[200:203])):
        assert sum(model.prob(context, s) for s in range(vocab)) == pytest.approx(1.0)
    assert all(model.prob(b"", s) > 0 for s in range(vocab))


def test_kneser_ney_hand_computed_bigram() -> None:
    # Text "abab" (a=0, b=1), order 2, vocabulary of 3. Too few counts for the count-of-counts
    # estimate, so the discounts are the defaults 0.5, 1.0, 1.5.
    model = KneserNey(np.array([0, 1, 0, 1], dtype=np.int64), 2, 3)
    # Unigram continuation counts: b after a (1 type), a after b (1 type): both 1 of 2.
    # p1(w) = (c'(w) - 0.5 + reserved * 1/3) / 2 with reserved = 2 * 0.5 = 1.
    p1_a = (1 - 0.5 + 1.0 / 3) / 2
    p1_c = (1.0 / 3) / 2
    assert model.prob(b"", 0) == pytest.approx(p1_a)
    assert model.prob(b"", 2) == pytest.approx(p1_c)
    # Bigram after "a": "ab" seen twice (discount 1.0), one follower type: reserved 1.0.
    assert model.prob(b"\x00", 1) == pytest.approx((2 - 1.0 + 1.0 * p1_a) / 2)
    assert model.prob(b"\x00", 2) == pytest.approx(1.0 * p1_c / 2)


def test_kneser_ney_beats_the_bigram_and_its_order_is_chosen_on_validation() -> None:
    text = load_pydoc_topics().text[:40_000]
    vocab = build_vocab(text[:36_000], 1)
    train, test = encode(text[:36_000], vocab), encode(text[36_000:], vocab)
    choice = choose_order(train, len(vocab), 0.1, orders=(2, 3, 4, 5))
    assert choice.order == min(
        choice.validation_perplexity, key=lambda n: choice.validation_perplexity[n]
    )
    kn = KneserNey(train, choice.order, len(vocab)).perplexity(test)
    assert kn < baselines.bigram_perplexity(train, test, len(vocab))
    changed = train.copy()
    changed[-100:] = 0  # the validation part moves the choice, the held-out text never does
    assert choose_order(train, len(vocab), 0.1, (2, 3, 4, 5)).validation_perplexity != (
        choose_order(changed, len(vocab), 0.1, (2, 3, 4, 5)).validation_perplexity
    )


def test_a_manifests_baselines_are_chosen_without_its_held_out_tail() -> None:
    """The held-out rows change the baselines' held-out errors, never their fit or order."""
    v = _ar_series(400)
    changed = v.copy()
    changed[300:] = 3.0 * changed[300:][::-1]
    a = baseline_metrics(("x", "y"), v, 300, 7)
    b = baseline_metrics(("x", "y"), changed, 300, 7)
    assert a["linear_ar_order"] == b["linear_ar_order"]
    np.testing.assert_array_equal(
        fit_ar_baseline(v, 300)[0].weights, fit_ar_baseline(changed, 300)[0].weights
    )
    assert a["rmse_linear_ar"] != b["rmse_linear_ar"]
    assert {"rmse_linear_ar.x", "rmse_persistence.y", "rmse_seasonal_naive.x"} <= a.keys()

    text = load_pydoc_topics().text[:6_000]
    vocab = build_vocab(text[:5_000], 1)
    train, test = encode(text[:5_000], vocab), encode(text[5_000:], vocab)
    first = ngram_metrics(train, test, len(vocab))
    other = ngram_metrics(train, test[::-1].copy(), len(vocab))
    assert first["kneser_ney_order"] == other["kneser_ney_order"]
    assert first["perplexity_kneser_ney"] != other["perplexity_kneser_ney"]
