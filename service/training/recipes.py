"""The bundled recipes: what to train on, how big, for how long.

Hyperparameters are fixed here and never tuned on the held-out tail; the tail is only used
for the final metrics and the baseline comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from service.training.data import Series, load_seattle_daily_temps, load_seattle_weather
from service.training.networks import Cell

LossWeights = Literal["equal", "variance"]
HighwayInit = Literal["zero", "least_squares"]
Likelihood = Literal["none", "gaussian"]


@dataclass(frozen=True)
class ForecastRecipe:
    """Next-step forecasting of a multivariate series, evaluated on the last ``test_rows``."""

    name: str
    description: str
    cell: Cell
    load: Callable[[], Series]
    hidden: int
    layers: int
    epochs: int
    window: int
    """Training window length in steps."""
    batch_size: int
    lr: float
    test_rows: int
    seasonal_lag: int
    """Lag of the seasonal naive baseline in steps."""
    burn_in: int
    """Steps at the start of each window left out of the loss (the state is still warming up)."""
    windows_per_epoch: int
    limit_rows: int | None = None
    """Use only the first ``limit_rows`` rows (quick tests)."""
    seed: int = 0
    highway: bool = False
    """Add a linear map of the current input to the output (see ``Forecaster``)."""
    highway_init: HighwayInit = "zero"
    """``least_squares``: start the highway at the linear AR(1) fitted by least squares on the
    training rows and the recurrent head at zero, so training starts from the linear forecast
    and the recurrent layers learn what it misses (``forecasting.start_from_linear``)."""
    dropout: float = 0.0
    weight_decay: float = 0.0
    loss_weights: LossWeights = "equal"
    """``equal``: mean squared error in normalised units; ``variance``: each feature's error
    weighted by its training variance, i.e. squared error in the data's units (what the
    headline RMSE averages)."""
    ensemble: int = 1
    """Networks trained with seeds ``seed .. seed + ensemble - 1`` and merged into one whose
    output is their mean (``networks.merge_forecasters``); ``hidden`` is per network."""
    validate: bool = False
    """Hold out the last ``test_rows`` rows of the training period instead of the tail, and
    drop the tail: the run that every hyperparameter is chosen on."""
    likelihood: Likelihood = "none"
    """``gaussian``: a probabilistic forecaster (``service.training.likelihood``) trained by
    the negative log-likelihood, exporting a mean and a scale per feature; ``none``: a point
    forecaster trained by squared error."""


@dataclass(frozen=True)
class CharLMRecipe:
    """Character-level language model on the pydoc topics text, evaluated on its tail."""

    name: str
    description: str
    cell: Cell
    hidden: int
    layers: int
    embed: int
    epochs: int
    window: int
    batch_size: int
    lr: float
    test_fraction: float
    min_count: int
    """Characters seen fewer times in the training text map to the unknown id."""
    windows_per_epoch: int | None = None
    """Default: as many windows as fit in the training text."""
    limit_rows: int | None = None
    """Use only the first ``limit_rows`` characters (for quick tests)."""
    seed: int = 0
    dropout: float = 0.0
    weight_decay: float = 0.0
    validate: bool = False
    """Hold out the end of the training text instead of the tail, and drop the tail: the
    run that every hyperparameter is chosen on."""


Recipe = ForecastRecipe | CharLMRecipe

RECIPES: dict[str, Recipe] = {
    "weather_lstm": ForecastRecipe(
        name="weather_lstm",
        description=(
            "Daily Seattle weather (precipitation mm, temp_max °C, temp_min °C, wind m/s), "
            "2012-2015: a 2-layer LSTM predicting the next day's four values, with a linear "
            "highway started at the least-squares AR(1). Autoregressive: generate feeds each "
            "predicted day back as the next input."
        ),
        cell="lstm",
        load=load_seattle_weather,
        hidden=64,
        layers=2,
        epochs=15,
        window=90,
        batch_size=32,
        lr=3e-3,
        test_rows=365,
        seasonal_lag=365,
        burn_in=14,
        windows_per_epoch=128,
        highway=True,
        highway_init="least_squares",
        loss_weights="variance",
    ),
    "temps_gru": ForecastRecipe(
        name="temps_gru",
        description=(
            "Daily Seattle maximum and minimum temperature (°C), 2012-2015: a GRU predicting "
            "a Gaussian for the next day's temp_max and temp_min (mean and spread, so "
            "quantiles). Autoregressive: generate feeds each predicted day back as the next "
            "input and draws sample paths through the GRU's state."
        ),
        cell="gru",
        load=load_seattle_daily_temps,
        hidden=64,
        layers=1,
        epochs=40,
        window=90,
        batch_size=32,
        lr=3e-3,
        test_rows=365,
        seasonal_lag=365,
        burn_in=14,
        windows_per_epoch=128,
        likelihood="gaussian",
    ),
    "pydoc_char_lstm": CharLMRecipe(
        name="pydoc_char_lstm",
        description=(
            "Character-level LSTM language model on the Python language reference "
            "(the standard library's pydoc_data.topics). Generates Python-documentation-like text."
        ),
        cell="lstm",
        hidden=256,
        layers=1,
        embed=64,
        epochs=6,
        window=128,
        batch_size=64,
        lr=3e-3,
        test_fraction=0.1,
        min_count=3,
    ),
}
