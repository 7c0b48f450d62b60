"""``/v2`` end to end: the real ``tritonclient[http]`` against a real uvicorn process."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.e2e.server import Server

pytestmark = pytest.mark.e2e

F = 3
BUNDLED = Path(__file__).resolve().parents[2] / "model_store"


@pytest.fixture(scope="module")
def client(tiny_server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(tiny_server.url.removeprefix("http://"))
    yield c
    c.close()


def v1_predict(server: Server, model: str, x: np.ndarray) -> np.ndarray:
    r = httpx.post(
        f"{server.url}/v1/models/{model}/predict",
        json={"inputs": x.tolist(), "return": "all"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"], dtype=np.float32)


def features(batch: int, steps: int, seed: int = 0, size: int = F) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, steps, size)) * 3).astype(np.float32)


def run(
    client: triton.InferenceServerClient,
    model: str,
    x: np.ndarray,
    binary: bool = True,
    outputs: list[str] | None = None,
    **kw: Any,
) -> triton.InferResult:
    inp = triton.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    requested = [triton.InferRequestedOutput(n, binary_data=binary) for n in outputs or []]
    return client.infer(model, [inp], outputs=requested or None, **kw)


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny_lstm")
    assert client.is_model_ready("tiny_lstm", "1")
    assert not client.is_model_ready("missing")
    meta = client.get_server_metadata()
    assert {"binary_tensor_data", "sequence", "parameters"} <= set(meta["extensions"])


def test_model_metadata_and_config(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("tiny_lstm")
    assert meta["versions"] == ["1", "2"]
    assert [i["name"] for i in meta["inputs"]] == ["INPUT", "STATE_H", "STATE_C"]
    assert meta["inputs"][0]["shape"] == [-1, -1, F]
    config = client.get_model_config("tiny_gru", "1")
    assert config["name"] == "tiny_gru"
    assert [o["name"] for o in config["output"]] == ["OUTPUT", "STATE_H"]
    assert "sequence_batching" in config
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("missing")
    assert exc.value.status() == "404"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_stateless_infer_equals_v1_predict(
    client: triton.InferenceServerClient, tiny_server: Server, binary: bool
) -> None:
    x = features(3, 9, seed=1)
    result = run(client, "tiny_lstm", x, binary, outputs=["OUTPUT", "STATE_H"])
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT"), v1_predict(tiny_server, "tiny_lstm", x), atol=1e-5
    )
    assert result.as_numpy("STATE_H").shape == (3, 1, 8)
    assert result.as_numpy("STATE_C") is None


def test_default_outputs_come_back_binary(client: triton.InferenceServerClient) -> None:
    result = run(client, "tiny_lstm", features(1, 2))
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["OUTPUT", "STATE_H", "STATE_C"]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


def test_compressed_request_and_response(
    client: triton.InferenceServerClient, tiny_server: Server
) -> None:
    x = features(2, 4, seed=2)
    result = run(
        client,
        "tiny_lstm",
        x,
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT"), v1_predict(tiny_server, "tiny_lstm", x), atol=1e-5
    )


@pytest.mark.parametrize("seq_id", [1234567890123, "sensor-7:session-α"], ids=["uint64", "string"])
def test_sequence_step_by_step_equals_whole(
    client: triton.InferenceServerClient, tiny_server: Server, seq_id: int | str
) -> None:
    x = features(1, 10, seed=3)
    whole = v1_predict(tiny_server, "tiny_lstm", x)
    bounds = [0, 1, 2, 5, 9, 10]
    outs = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        result = run(
            client,
            "tiny_lstm",
            x[:, a:b],
            sequence_id=seq_id,
            sequence_start=i == 0,
            sequence_end=b == bounds[-1],
        )
        outs.append(result.as_numpy("OUTPUT"))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), whole, atol=1e-5)
    with pytest.raises(InferenceServerException):
        run(client, "tiny_lstm", x[:, :1], sequence_id=seq_id)


def test_gru_sequence_one_step_at_a_time(
    client: triton.InferenceServerClient, tiny_server: Server
) -> None:
    x = features(1, 6, seed=4)
    outs = [
        run(
            client,
            "tiny_gru",
            x[:, t : t + 1],
            binary=t % 2 == 0,
            sequence_id=77,
            sequence_start=t == 0,
            sequence_end=t == 5,
        ).as_numpy("OUTPUT")
        for t in range(6)
    ]
    np.testing.assert_allclose(
        np.concatenate(outs, axis=1), v1_predict(tiny_server, "tiny_gru", x), atol=1e-5
    )


def test_non_start_request_for_unknown_sequence(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        run(client, "tiny_lstm", features(1, 1), sequence_id=987654)
    assert exc.value.status() == "400"
    assert exc.value.message() == (
        "inference request for sequence 987654 to model 'tiny_lstm' must specify the START "
        "flag on the first request of the sequence"
    )


def test_text_model_with_bytes(client: triton.InferenceServerClient) -> None:
    inp = triton.InferInput("INPUT", [2], "BYTES")
    inp.set_data_from_numpy(np.asarray([b"hello", b"there"], dtype=object))
    probs = client.infer("tiny_char", [inp]).as_numpy("OUTPUT")
    assert probs.shape == (2, 5, 29)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_wrong_shape_raises_client_error(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        run(client, "tiny_lstm", features(1, 2, size=F + 1))
    assert exc.value.status() == "400"


# -- malformed bodies, straight over HTTP -------------------------------------------------


def _post(server: Server, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/models/tiny_lstm/infer", content=body, headers=headers, timeout=10
    )


def _binary_body(x: np.ndarray) -> tuple[bytes, int]:
    inp = triton.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    body, size = triton.InferenceServerClient.generate_request_body([inp])
    return body, int(size)


@pytest.mark.parametrize("delta", [-10, 10_000])
def test_bad_header_length_is_4xx(tiny_server: Server, delta: int) -> None:
    body, size = _binary_body(features(1, 2))
    r = _post(tiny_server, body, {"Inference-Header-Content-Length": str(size + delta)})
    assert 400 <= r.status_code < 500
    assert "error" in r.json()


def test_non_numeric_header_length_is_4xx(tiny_server: Server) -> None:
    body, _ = _binary_body(features(1, 2))
    r = _post(tiny_server, body, {"Inference-Header-Content-Length": "twelve"})
    assert r.status_code == 400


def test_binary_shape_data_mismatch_is_4xx(tiny_server: Server) -> None:
    body, size = _binary_body(features(1, 2))
    r = _post(tiny_server, body[:-4], {"Inference-Header-Content-Length": str(size)})
    assert r.status_code == 400 and "error" in r.json()


def test_json_shape_data_mismatch_is_4xx(tiny_server: Server) -> None:
    doc = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 2, F], "data": [1.0]}]}
    r = httpx.post(f"{tiny_server.url}/v2/models/tiny_lstm/infer", json=doc, timeout=10)
    assert r.status_code == 400 and "error" in r.json()


# -- the bundled, trained models (when present) ---------------------------------------------


def _bundled_regression_models() -> list[str]:
    return sorted(
        p.parent.parent.name
        for p in BUNDLED.glob("*/*/manifest.json")
        if '"task": "regression"' in p.read_text() or '"task":"regression"' in p.read_text()
    )


@pytest.mark.skipif(not _bundled_regression_models(), reason="no bundled regression model")
def test_bundled_model_sequence_equals_v1(bundled_server: Server) -> None:
    name = _bundled_regression_models()[0]
    c = triton.InferenceServerClient(bundled_server.url.removeprefix("http://"))
    try:
        size = c.get_model_metadata(name)["inputs"][0]["shape"][-1]
        x = features(1, 12, seed=5, size=size)
        whole = v1_predict(bundled_server, name, x)
        outs = [
            run(
                c,
                name,
                x[:, a : a + 4],
                sequence_id=f"bundled-{name}",
                sequence_start=a == 0,
                sequence_end=a == 8,
            ).as_numpy("OUTPUT")
            for a in (0, 4, 8)
        ]
        np.testing.assert_allclose(np.concatenate(outs, axis=1), whole, rtol=1e-5, atol=1e-4)
    finally:
        c.close()
