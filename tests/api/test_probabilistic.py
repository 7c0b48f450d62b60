"""A probabilistic forecaster (a likelihood head) through the ASGI app: predict and session
steps give the mean and quantiles, generate draws seeded sample paths, ``/v2`` gives the
extra tensors; a point model's responses keep their shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from statistics import NormalDist
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI

from service.http.app import create_app
from service.models.store import scan
from service.settings import Settings
from tests.tiny_models import write_tiny_model

SEQ = [[0.5, 1.0, -2.0], [1.5, 0.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 0.25, 0.0]]
LEVELS = ["0.1", "0.5", "0.9"]


@pytest.fixture(scope="module")
def prob_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prob_store")
    write_tiny_model(root, "tiny_prob", "gru", seed=5, probabilistic=True)
    write_tiny_model(root, "tiny_prob_lstm", "lstm", seed=6, probabilistic=True)
    write_tiny_model(root, "tiny_gru", "gru", seed=3)
    return root


@pytest.fixture
async def pclient(prob_store: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        model_store=prob_store, request_log=False, model_process=False, max_batch_sequences=16
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def reference(store: Path, name: str, seq: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale in data units, straight from onnxruntime (zero state)."""
    (stored,) = [v for v in scan(store).versions if v.manifest.name == name]
    m = stored.manifest
    assert m.distribution is not None
    sess = ort.InferenceSession(str(stored.onnx_path), providers=["CPUExecutionProvider"])
    x = ((np.asarray(seq, np.float32) - np.arange(3)) / 2.0).astype(np.float32)
    feeds = {"x": x[None], **{s.input: np.zeros((1, 1, s.shape[1]), np.float32) for s in m.state}}
    y, scale = sess.run(["y", "scale"], feeds)
    return y[0] * 2.0 + np.arange(3), scale[0] * 2.0


def check_view(view: dict[str, Any], mean: list[float]) -> None:
    assert set(view) == {"scale", "quantiles"}
    assert list(view["quantiles"]) == LEVELS
    q = np.asarray([view["quantiles"][k] for k in LEVELS])
    assert (np.diff(q, axis=0) > 0).all()  # ordered, strictly (the scale is positive)
    np.testing.assert_allclose(q[1], mean, atol=1e-5)  # the median is the mean
    z = NormalDist().inv_cdf(0.9)
    np.testing.assert_allclose(q[2] - q[1], z * np.asarray(view["scale"]), rtol=1e-5)


async def test_predict_gives_mean_scale_and_ordered_quantiles(
    pclient: httpx.AsyncClient, prob_store: Path
) -> None:
    mean, scale = reference(prob_store, "tiny_prob", SEQ)
    r = await pclient.post("/v1/models/tiny_prob/predict", json={"inputs": SEQ, "return": "all"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "version", "outputs", "distribution"}
    np.testing.assert_allclose(body["outputs"], mean, atol=1e-5)
    assert len(body["distribution"]) == len(SEQ)
    for view, row, s in zip(body["distribution"], body["outputs"], scale, strict=True):
        check_view(view, row)
        np.testing.assert_allclose(view["scale"], s, atol=1e-5)
    last = (await pclient.post("/v1/models/tiny_prob/predict", json={"inputs": SEQ})).json()
    assert last["distribution"] == body["distribution"][-1]
    batch = await pclient.post("/v1/models/tiny_prob/predict", json={"inputs": [SEQ, SEQ[:2]]})
    views = batch.json()["distribution"]
    assert len(views) == 2 and views[0] == body["distribution"][-1]


async def test_a_point_model_keeps_its_response_shape(pclient: httpx.AsyncClient) -> None:
    r = await pclient.post("/v1/models/tiny_gru/predict", json={"inputs": SEQ})
    assert set(r.json()) == {"model", "version", "outputs"}
    sid = (await pclient.post("/v1/sessions", json={"model": "tiny_gru"})).json()["id"]
    step = await pclient.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]})
    assert set(step.json()) == {"id", "steps", "outputs"}
    gen = await pclient.post(
        "/v1/models/tiny_gru/generate", json={"context": SEQ, "steps": 3, "seed": 1}
    )
    assert set(gen.json()) == {"model", "version", "outputs"}
    for extra in ({"samples": 4}, {"return_paths": True}):
        bad = await pclient.post(
            "/v1/models/tiny_gru/generate", json={"context": SEQ, "steps": 3, **extra}
        )
        assert bad.status_code == 422 and bad.json()["code"] == "not_probabilistic"
    info = (await pclient.get("/v1/models/tiny_gru")).json()
    assert "distribution" not in info


@pytest.mark.parametrize("name", ["tiny_prob", "tiny_prob_lstm"])
async def test_session_steps_equal_the_whole_sequence(
    pclient: httpx.AsyncClient, name: str
) -> None:
    whole = await pclient.post(f"/v1/models/{name}/predict", json={"inputs": SEQ, "return": "all"})
    sid = (await pclient.post("/v1/sessions", json={"model": name})).json()["id"]
    outputs, views = [], []
    for row in SEQ:
        r = await pclient.post(f"/v1/sessions/{sid}/step", json={"inputs": [row]})
        assert r.status_code == 200, r.text
        outputs += r.json()["outputs"]
        views += r.json()["distribution"]
    np.testing.assert_allclose(outputs, whole.json()["outputs"], rtol=0, atol=1e-5)
    for got, want in zip(views, whole.json()["distribution"], strict=True):
        np.testing.assert_allclose(got["scale"], want["scale"], rtol=0, atol=1e-5)
        for level in LEVELS:
            np.testing.assert_allclose(
                got["quantiles"][level], want["quantiles"][level], rtol=0, atol=1e-5
            )
    info = (await pclient.get(f"/v1/models/{name}")).json()
    assert info["distribution"] == {"family": "gaussian", "quantiles": [0.1, 0.5, 0.9]}


async def _paths(client: httpx.AsyncClient, seed: int, **extra: Any) -> dict[str, Any]:
    body = {"context": SEQ, "steps": 5, "samples": 8, "seed": seed, "return_paths": True}
    r = await client.post("/v1/models/tiny_prob/generate", json={**body, **extra})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_generate_draws_seeded_paths_and_their_fan(pclient: httpx.AsyncClient) -> None:
    first = await _paths(pclient, seed=7)
    assert set(first) == {"model", "version", "outputs", "fan", "paths"}
    paths = np.asarray(first["paths"])
    assert paths.shape == (8, 5, 3)
    # outputs: the mean path, as a point model's roll-out (each step's mean fed back)
    mean_path = await pclient.post(
        "/v1/models/tiny_prob/predict", json={"inputs": SEQ + first["outputs"], "return": "all"}
    )
    np.testing.assert_allclose(first["outputs"], mean_path.json()["outputs"][3:8], atol=1e-5)
    assert len(first["fan"]) == 5
    for h, fan in enumerate(first["fan"]):
        q = np.asarray([fan[k] for k in LEVELS])
        assert (np.diff(q, axis=0) >= 0).all()
        np.testing.assert_allclose(q, np.quantile(paths[:, h], [0.1, 0.5, 0.9], axis=0), 1e-5)
    assert (await _paths(pclient, seed=7)) == first  # reproducible with a seed
    other = np.asarray((await _paths(pclient, seed=8))["paths"])
    assert not np.allclose(other, paths)  # and different with another
    assert not np.allclose(paths[0], paths[1])  # the paths differ from each other
    # the first horizon is drawn from the predict distribution after the context
    mean = (await pclient.post("/v1/models/tiny_prob/predict", json={"inputs": SEQ})).json()
    wide = await _paths(pclient, seed=1, samples=16)
    spread = np.asarray(wide["paths"])[:, 0]
    scale = np.asarray(mean["distribution"]["scale"])
    assert (np.abs(spread.mean(axis=0) - mean["outputs"]) < 3 * scale).all()
    without = await pclient.post(
        "/v1/models/tiny_prob/generate", json={"context": SEQ, "steps": 2, "seed": 7}
    )
    assert set(without.json()) == {"model", "version", "outputs", "fan"}


async def test_generate_bounds_the_paths(pclient: httpx.AsyncClient) -> None:
    r = await pclient.post(
        "/v1/models/tiny_prob/generate", json={"context": SEQ, "steps": 2, "samples": 17}
    )
    assert r.status_code == 422 and r.json()["code"] == "batch_too_large"
    r = await pclient.post(
        "/v1/models/tiny_prob/generate", json={"context": SEQ, "steps": 2, "samples": 0}
    )
    assert r.status_code == 422


async def test_session_generate_advances_along_the_mean_path(
    pclient: httpx.AsyncClient,
) -> None:
    sid = (await pclient.post("/v1/sessions", json={"model": "tiny_prob"})).json()["id"]
    await pclient.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ})
    body = {"steps": 3, "samples": 4, "seed": 3, "return_paths": True, "advance": True}
    r = await pclient.post(f"/v1/sessions/{sid}/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["session_steps"] == len(SEQ) + 3
    first = r.json()["outputs"]
    # the session now stands where a client stepping the context and the outputs would
    assert (await pclient.get(f"/v1/sessions/{sid}")).json()["steps"] == len(SEQ) + 3
    step = await pclient.post(f"/v1/sessions/{sid}/step", json={"inputs": [SEQ[0]]})
    whole = await pclient.post(
        "/v1/models/tiny_prob/predict", json={"inputs": [*SEQ, *first, SEQ[0]]}
    )
    np.testing.assert_allclose(step.json()["outputs"][0], whole.json()["outputs"], atol=1e-4)


async def test_v2_gives_scale_and_quantiles(pclient: httpx.AsyncClient) -> None:
    meta = (await pclient.get("/v2/models/tiny_prob")).json()
    outputs = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert outputs["SCALE"] == [-1, -1, 3] and outputs["QUANTILES"] == [-1, -1, 3, 3]
    config = (await pclient.get("/v2/models/tiny_prob/config")).json()
    assert config["parameters"]["quantiles"] == {"string_value": "0.1,0.5,0.9"}
    request = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4, 3], "data": [SEQ]}],
    }
    r = await pclient.post("/v2/models/tiny_prob/infer", json=request)
    assert r.status_code == 200, r.text
    got = {o["name"]: o for o in r.json()["outputs"]}
    assert got["QUANTILES"]["shape"] == [1, 4, 3, 3]
    v1 = (
        await pclient.post("/v1/models/tiny_prob/predict", json={"inputs": SEQ, "return": "all"})
    ).json()
    np.testing.assert_allclose(np.reshape(got["OUTPUT"]["data"], (4, 3)), v1["outputs"], atol=1e-5)
    q = np.reshape(got["QUANTILES"]["data"], (4, 3, 3))
    for t, view in enumerate(v1["distribution"]):
        np.testing.assert_allclose(q[t], [view["quantiles"][k] for k in LEVELS], atol=1e-5)
        np.testing.assert_allclose(
            np.reshape(got["SCALE"]["data"], (4, 3))[t], view["scale"], atol=1e-5
        )
    point = (await pclient.get("/v2/models/tiny_gru")).json()
    assert [o["name"] for o in point["outputs"]] == ["OUTPUT", "STATE_H"]
