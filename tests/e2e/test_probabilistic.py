"""The bundled probabilistic forecaster (``temps_gru`` version 2) over every door of a real
``lstm-serve serve`` process: ``/v1`` with httpx, the WebSocket stream with websockets, SSE,
``/v2`` with ``tritonclient.http`` and gRPC with ``tritonclient.grpc``. The point version
beside it answers exactly as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from websockets.asyncio.client import connect

from tests.conftest import BUNDLED_STORE
from tests.e2e.server import Server, free_port, running_server

pytestmark = pytest.mark.e2e

MODEL = "temps_gru"
VERSION = 2
LEVELS = ["0.1", "0.5", "0.9"]
DAYS = [  # temp_max, temp_min: Seattle, first days of 2012
    [12.8, 5.0],
    [10.6, 2.8],
    [11.7, 7.2],
    [12.2, 5.6],
    [8.9, 2.8],
    [4.4, 2.2],
    [7.2, 2.8],
    [10.0, 2.8],
    [9.4, 5.0],
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    env = {"LSTM_SERVE_MODEL_STORE": str(BUNDLED_STORE), "LSTM_SERVE_GRPC_PORT": str(port)}
    with running_server(env, tmp_path_factory.mktemp("logs")) as s:
        s.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield s


def _post(server: Server, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _whole(server: Server) -> dict[str, Any]:
    body = {"inputs": DAYS, "return": "all", "version": VERSION}
    out: dict[str, Any] = _post(server, f"/v1/models/{MODEL}/predict", body)
    return out


def _quantiles(views: list[dict[str, Any]]) -> np.ndarray:
    """``[steps, levels, F]`` from /v1 distribution entries."""
    return np.asarray([[v["quantiles"][k] for k in LEVELS] for v in views])


def test_the_bundled_version_is_probabilistic_and_calibrated(server: Server) -> None:
    info = httpx.get(f"{server.url}/v1/models/{MODEL}?version={VERSION}").json()
    assert info["distribution"] == {"family": "gaussian", "quantiles": [0.1, 0.5, 0.9]}
    manifest = json.loads((BUNDLED_STORE / MODEL / str(VERSION) / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert 0.75 <= metrics["coverage_80"] <= 0.85
    assert metrics["crps"] < metrics["crps_linear_ar"]
    assert metrics["rmse"] < metrics["rmse_linear_ar"]
    point = httpx.get(f"{server.url}/v1/models/{MODEL}?version=1").json()
    assert "distribution" not in point


def test_predict_and_session_steps_give_the_same_distribution(server: Server) -> None:
    whole = _whole(server)
    q = _quantiles(whole["distribution"])
    assert (np.diff(q, axis=1) > 0).all()
    np.testing.assert_allclose(q[:, 1], whole["outputs"], atol=1e-4)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"model": MODEL, "version": VERSION}).json()["id"]
        outs: list[Any] = []
        views: list[Any] = []
        for i, day in enumerate(DAYS):
            r = c.post(f"/v1/sessions/{sid}/step", json={"inputs": [day], "offset": i}).json()
            outs += r["outputs"]
            views += r["distribution"]
    np.testing.assert_allclose(outs, whole["outputs"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(_quantiles(views), q, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        [v["scale"] for v in views], [v["scale"] for v in whole["distribution"]], atol=1e-5
    )
    point = _post(server, f"/v1/models/{MODEL}/predict", {"inputs": DAYS, "version": 1})
    assert set(point) == {"model", "version", "outputs"}


async def test_the_websocket_stream_gives_the_distribution(server: Server) -> None:
    whole = _whole(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        created = await c.post("/v1/sessions", json={"model": MODEL, "version": VERSION})
        sid = created.json()["id"]
    url = server.url.replace("http://", "ws://", 1) + f"/v1/sessions/{sid}/stream"
    outs: list[Any] = []
    views: list[Any] = []
    async with connect(url) as ws:
        for chunk in (DAYS[:1], DAYS[1:4]):
            await ws.send(orjson.dumps({"inputs": chunk}).decode())
            reply = orjson.loads(await ws.recv())
            outs += reply["outputs"]
            views += reply["distribution"]
        for day in DAYS[4:]:  # pipelined single-step frames (may be applied together)
            await ws.send(orjson.dumps({"inputs": [day]}).decode())
        for _ in DAYS[4:]:
            reply = orjson.loads(await ws.recv())
            assert len(reply["outputs"]) == len(reply["distribution"]) == 1
            outs += reply["outputs"]
            views += reply["distribution"]
    np.testing.assert_allclose(outs, whole["outputs"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(_quantiles(views), _quantiles(whole["distribution"]), atol=1e-5)


def test_generate_fans_are_seeded_and_streamed_alike(server: Server) -> None:
    path = f"/v1/models/{MODEL}/generate"
    body = {"context": DAYS, "steps": 7, "samples": 50, "seed": 11, "version": VERSION}
    first = _post(server, path, {**body, "return_paths": True})
    again = _post(server, path, {**body, "return_paths": True})
    other = _post(server, path, {**body, "return_paths": True, "seed": 12})
    assert first == again
    assert np.asarray(first["paths"]).shape == (50, 7, 2)
    assert not np.allclose(first["paths"], other["paths"])
    fans = np.asarray([[f[k] for k in LEVELS] for f in first["fan"]])
    assert (np.diff(fans, axis=1) >= 0).all()
    width = fans[:, 2] - fans[:, 0]
    assert width[-1].mean() > width[0].mean()  # uncertainty grows with the horizon
    np.testing.assert_allclose(first["outputs"][0], _whole(server)["outputs"][-1], atol=1e-5)
    events = []
    with httpx.stream("POST", f"{server.url}{path}", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    steps = [e for e in events if "step" in e and "fan" in e]
    assert [e["fan"] for e in steps] == first["fan"]
    assert [e["output"] for e in steps] == first["outputs"]


def _v2_expected(server: Server) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    whole = _whole(server)
    mean = np.asarray(whole["outputs"], np.float32)
    scale = np.asarray([v["scale"] for v in whole["distribution"]], np.float32)
    return mean, scale, _quantiles(whole["distribution"])


def test_v2_http_and_grpc_give_scale_and_quantiles(server: Server) -> None:
    mean, scale, q = _v2_expected(server)
    x = np.asarray([DAYS], np.float32)
    host = server.url.removeprefix("http://")
    with th.InferenceServerClient(host) as http_client:
        meta = http_client.get_model_metadata(MODEL, str(VERSION))
        assert [o["name"] for o in meta["outputs"]][:3] == ["OUTPUT", "SCALE", "QUANTILES"]
        inp = th.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        wanted = [th.InferRequestedOutput(n) for n in ("OUTPUT", "SCALE", "QUANTILES")]
        res = http_client.infer(MODEL, [inp], model_version=str(VERSION), outputs=wanted)
        got_http = [res.as_numpy(n) for n in ("OUTPUT", "SCALE", "QUANTILES")]
    grpc_client = tg.InferenceServerClient(server.grpc)  # type: ignore[attr-defined]
    try:
        ginp = tg.InferInput("INPUT", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        gres = grpc_client.infer(MODEL, [ginp], model_version=str(VERSION))
        got_grpc = [gres.as_numpy(n) for n in ("OUTPUT", "SCALE", "QUANTILES")]
        point = grpc_client.get_model_metadata(MODEL, "1", as_json=True)
        assert [o["name"] for o in point["outputs"]] == ["OUTPUT", "STATE_H"]
    finally:
        grpc_client.close()
    for got in (got_http, got_grpc):
        assert got[2] is not None and got[2].shape == (1, len(DAYS), 3, 2)
        np.testing.assert_allclose(got[0][0], mean, atol=1e-5)
        np.testing.assert_allclose(got[1][0], scale, atol=1e-5)
        np.testing.assert_allclose(got[2][0], q, atol=1e-5)
