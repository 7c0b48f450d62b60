"""The bundled, trained models served with zero configuration by a real server."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.conftest import BUNDLED_STORE
from tests.e2e.server import Server
from tests.training.test_bundled_models import NOT_BEATEN

pytestmark = pytest.mark.e2e

WEATHER_COLUMNS = ["precipitation", "temp_max", "temp_min", "wind"]
WEATHER = [  # Seattle, first days of 2012
    [0.0, 12.8, 5.0, 4.7],
    [10.9, 10.6, 2.8, 4.5],
    [0.8, 11.7, 7.2, 2.3],
    [20.3, 12.2, 5.6, 4.7],
    [1.3, 8.9, 2.8, 6.1],
    [2.5, 4.4, 2.2, 2.2],
    [0.0, 7.2, 2.8, 2.3],
]


def test_three_models_each_beating_their_baselines_or_saying_so(bundled_server: Server) -> None:
    models = {m["name"]: m for m in httpx.get(f"{bundled_server.url}/v1/models").json()["models"]}
    assert {"weather_lstm", "temps_gru", "pydoc_char_lstm"} <= models.keys()
    assert models["temps_gru"]["cell"] == "gru"
    assert models["pydoc_char_lstm"]["task"] == "language_model"
    for name in models:
        manifest = json.loads(
            (
                BUNDLED_STORE / name / str(models[name]["default_version"]) / "manifest.json"
            ).read_text()
        )
        head = manifest["headline_metric"]
        value = manifest["metrics"][head]
        baselines = {
            k: v
            for k, v in manifest["metrics"].items()
            if k.startswith(head + "_") and "." not in k
        }
        assert baselines, name
        lost = {k for k, v in baselines.items() if not value < v}
        assert lost == NOT_BEATEN.get(name, set()), (name, value, baselines)
        assert manifest["parity"]["step_vs_whole"] <= 1e-5


@pytest.mark.parametrize("name", ["weather_lstm", "temps_gru"])
def test_regression_session_equals_predict(bundled_server: Server, name: str) -> None:
    with httpx.Client(base_url=bundled_server.url) as c:
        names = c.get(f"/v1/models/{name}").json()["input"]["names"]
        columns = [WEATHER_COLUMNS.index(n) for n in names]
        size = len(columns)
        seq = [[row[i] for i in columns] for row in WEATHER]
        whole = c.post(f"/v1/models/{name}/predict", json={"inputs": seq, "return": "all"}).json()
        sid = c.post("/v1/sessions", json={"model": name}).json()["id"]
        outs: list[list[float]] = []
        for i, step in enumerate(seq):
            r = c.post(f"/v1/sessions/{sid}/step", json={"inputs": [step], "offset": i})
            outs.extend(r.json()["outputs"])
        np.testing.assert_allclose(outs, whole["outputs"], atol=1e-5)
        forecast = c.post(f"/v1/sessions/{sid}/generate", json={"steps": 5}).json()["outputs"]
        assert len(forecast) == 5 and all(len(f) == size for f in forecast)
        np.testing.assert_allclose(forecast[0], whole["outputs"][-1], atol=1e-5)


def test_weather_forecast_is_plausible(bundled_server: Server) -> None:
    r = httpx.post(f"{bundled_server.url}/v1/models/weather_lstm/predict", json={"inputs": WEATHER})
    precipitation, temp_max, temp_min, wind = r.json()["outputs"]
    assert -5 < temp_min < temp_max < 25 and 0 <= wind < 15 and -2 < precipitation < 30


def test_char_model_session_equals_predict_and_generates(bundled_server: Server) -> None:
    with httpx.Client(base_url=bundled_server.url) as c:
        text = "The import statement"
        whole = c.post(
            "/v1/models/pydoc_char_lstm/predict", json={"text": text, "return": "all"}
        ).json()["outputs"]
        sid = c.post("/v1/sessions", json={"model": "pydoc_char_lstm"}).json()["id"]
        outs = []
        for chunk in ("The ", "import", " statement"):
            outs.extend(c.post(f"/v1/sessions/{sid}/step", json={"text": chunk}).json()["outputs"])
        assert [o["top"][0]["token"] for o in outs] == [o["top"][0]["token"] for o in whole]
        np.testing.assert_allclose(
            [t["p"] for o in outs for t in o["top"]],
            [t["p"] for o in whole for t in o["top"]],
            atol=1e-5,
        )
        body = {"context": "def ", "steps": 60, "temperature": 0.5, "seed": 3}
        a = c.post("/v1/models/pydoc_char_lstm/generate", json=body).json()["text"]
        b = c.post("/v1/models/pydoc_char_lstm/generate", json=body).json()["text"]
        assert a == b and len(a) == 60
        greedy = c.post(
            "/v1/models/pydoc_char_lstm/generate",
            json={"context": "The return statement ", "steps": 40, "temperature": 0},
        ).json()["text"]
        words = [w for w in greedy.split() if w.isalpha()]
        assert words, greedy
