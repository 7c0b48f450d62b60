"""``/v2`` through the ASGI app: metadata, JSON and binary inference, sequences, errors.

Binary request bodies are built, and binary responses read, with ``tritonclient``'s own
codec (``generate_request_body`` / ``InferResult.from_response_body``), so these tests
check the wire format a real client produces.
"""

from __future__ import annotations

import asyncio
import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi import FastAPI

from service.http.app import create_app
from service.settings import Settings

F = 3
HIDDEN = 8
RNG = np.random.default_rng(7)


def features(batch: int, steps: int) -> np.ndarray:
    return (RNG.standard_normal((batch, steps, F)) * 3).astype(np.float32)


def json_input(x: np.ndarray, name: str = "INPUT") -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}


async def infer(
    client: httpx.AsyncClient, model: str, body: dict[str, Any], **kw: Any
) -> httpx.Response:
    return await client.post(f"/v2/models/{model}/infer", json=body, **kw)


def output(resp: httpx.Response, name: str = "OUTPUT") -> np.ndarray:
    assert resp.status_code == 200, resp.text
    for o in resp.json()["outputs"]:
        if o["name"] == name:
            return np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
    raise AssertionError(f"no output {name}")


async def v1_predict(client: httpx.AsyncClient, model: str, x: np.ndarray) -> np.ndarray:
    r = await client.post(
        f"/v1/models/{model}/predict", json={"inputs": x.tolist(), "return": "all"}
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"], dtype=np.float32)


def binary_request(
    x: np.ndarray,
    outputs: list[triton.InferRequestedOutput] | None = None,
    **kw: Any,
) -> tuple[bytes, dict[str, str]]:
    inp = triton.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [inp], outputs=outputs, **kw
    )
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    return body, headers


def read_result(resp: httpx.Response) -> triton.InferResult:
    assert resp.status_code == 200, resp.text
    length = resp.headers.get("inference-header-content-length")
    return triton.InferResult.from_response_body(
        resp.content, header_length=int(length) if length else None
    )


# -- server and model metadata ----------------------------------------------------------


async def test_server_metadata_and_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2")
    assert r.status_code == 200
    doc = r.json()
    assert doc["name"] == "lstm-serve"
    assert {"binary_tensor_data", "sequence", "parameters"} <= set(doc["extensions"])
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200


async def test_model_metadata_names_shapes_and_versions(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/v2/models/tiny_lstm")).json()
    assert doc["versions"] == ["1", "2"]
    assert doc["inputs"][0] == {"name": "INPUT", "datatype": "FP32", "shape": [-1, -1, F]}
    assert [o["name"] for o in doc["outputs"]] == ["OUTPUT", "STATE_H", "STATE_C"]
    assert doc["outputs"][1]["shape"] == [-1, 1, HIDDEN]
    gru = (await client.get("/v2/models/tiny_gru/versions/1")).json()
    assert [o["name"] for o in gru["outputs"]] == ["OUTPUT", "STATE_H"]
    char = (await client.get("/v2/models/tiny_char")).json()
    assert char["inputs"][0] == {"name": "INPUT", "datatype": "BYTES", "shape": [-1]}
    assert char["outputs"][0]["shape"] == [-1, -1, 29]


async def test_model_ready_and_config(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/models/tiny_lstm/ready")).status_code == 200
    assert (await client.get("/v2/models/tiny_lstm/versions/1/ready")).status_code == 200
    r = await client.get("/v2/models/tiny_lstm/versions/9/ready")
    assert r.status_code == 404 and "error" in r.json()
    cfg = (await client.get("/v2/models/tiny_lstm/config")).json()
    assert cfg["name"] == "tiny_lstm"
    assert cfg["input"][0] == {"name": "INPUT", "data_type": "TYPE_FP32", "dims": [-1, F]}
    assert cfg["sequence_batching"]["max_sequence_idle_microseconds"] == 3600 * 1_000_000
    assert [s["input_name"] for s in cfg["sequence_batching"]["state"]] == ["STATE_H", "STATE_C"]


@pytest.mark.parametrize(
    "path",
    ["/v2/models/nope", "/v2/models/nope/config", "/v2/models/tiny_lstm/versions/x/ready"],
)
async def test_unknown_model_is_404_error_body(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404
    assert isinstance(r.json()["error"], str)
    r = await client.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code in (400, 404)


# -- stateless inference ----------------------------------------------------------------


async def test_json_infer_equals_v1_predict(client: httpx.AsyncClient) -> None:
    x = features(3, 6)
    r = await infer(client, "tiny_lstm", {"inputs": [json_input(x)], "id": "req-1"})
    assert r.json()["id"] == "req-1"
    assert r.json()["model_version"] == "2"
    np.testing.assert_allclose(output(r), await v1_predict(client, "tiny_lstm", x), atol=1e-5)
    assert output(r, "STATE_H").shape == (3, 1, HIDDEN)


async def test_versioned_infer_uses_that_version(client: httpx.AsyncClient) -> None:
    x = features(1, 4)
    v1 = output(
        await client.post("/v2/models/tiny_lstm/versions/1/infer", json={"inputs": [json_input(x)]})
    )
    v2 = output(await infer(client, "tiny_lstm", {"inputs": [json_input(x)]}))
    assert not np.allclose(v1, v2)


async def test_nested_json_data_is_accepted(client: httpx.AsyncClient) -> None:
    x = features(1, 3)
    body = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 3, F], "data": x.tolist()}]
    }
    flat = output(await infer(client, "tiny_lstm", {"inputs": [json_input(x)]}))
    np.testing.assert_array_equal(output(await infer(client, "tiny_lstm", body)), flat)


async def test_binary_infer_with_no_content_type(client: httpx.AsyncClient) -> None:
    x = features(2, 5)
    body, headers = binary_request(x)
    r = await client.post("/v2/models/tiny_lstm/infer", content=body, headers=headers)
    assert "content-type" not in {k.lower() for k in headers}
    assert r.headers["content-type"] == "application/octet-stream"
    result = read_result(r)
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT"), await v1_predict(client, "tiny_lstm", x), atol=1e-5
    )
    assert result.as_numpy("STATE_C").shape == (2, 1, HIDDEN)


async def test_requested_outputs_order_and_mixed_binary(client: httpx.AsyncClient) -> None:
    x = features(1, 4)
    outs = [
        triton.InferRequestedOutput("STATE_H", binary_data=False),
        triton.InferRequestedOutput("OUTPUT", binary_data=True),
    ]
    body, headers = binary_request(x, outputs=outs)
    r = await client.post("/v2/models/tiny_lstm/infer", content=body, headers=headers)
    result = read_result(r)
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["STATE_H", "OUTPUT"]
    assert "data" in result.get_output("STATE_H")
    assert result.get_output("OUTPUT")["parameters"]["binary_data_size"] == 4 * 4 * F
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT"), await v1_predict(client, "tiny_lstm", x), atol=1e-5
    )


async def test_binary_data_output_flag_on_a_json_request(client: httpx.AsyncClient) -> None:
    x = features(1, 2)
    r = await infer(
        client,
        "tiny_gru",
        {"inputs": [json_input(x)], "parameters": {"binary_data_output": True}},
    )
    result = read_result(r)
    assert result.as_numpy("OUTPUT").shape == (1, 2, F)
    assert result.as_numpy("STATE_C") is None


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_request_bodies(client: httpx.AsyncClient, encoding: str) -> None:
    x = features(2, 3)
    body, headers = binary_request(x)
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    r = await client.post(
        "/v2/models/tiny_lstm/infer",
        content=packed,
        headers={**headers, "Content-Encoding": encoding},
    )
    np.testing.assert_allclose(
        read_result(r).as_numpy("OUTPUT"), await v1_predict(client, "tiny_lstm", x), atol=1e-5
    )


async def test_compressed_response_when_asked(client: httpx.AsyncClient) -> None:
    x = features(1, 2)
    r = await infer(
        client, "tiny_lstm", {"inputs": [json_input(x)]}, headers={"Accept-Encoding": "deflate"}
    )
    assert r.headers["content-encoding"] == "deflate"
    assert output(r).shape == (1, 2, F)


async def test_explicit_state_in_and_out_chains_like_one_run(client: httpx.AsyncClient) -> None:
    x = features(2, 8)
    whole = output(await infer(client, "tiny_lstm", {"inputs": [json_input(x)]}))
    first = await infer(client, "tiny_lstm", {"inputs": [json_input(x[:, :3])]})
    h, c = output(first, "STATE_H"), output(first, "STATE_C")
    second = await infer(
        client,
        "tiny_lstm",
        {
            "inputs": [
                json_input(x[:, 3:]),
                json_input(h, "STATE_H"),
                json_input(c, "STATE_C"),
            ]
        },
    )
    joined = np.concatenate([output(first), output(second)], axis=1)
    np.testing.assert_allclose(joined, whole, atol=1e-5)


async def test_text_model_bytes_input(client: httpx.AsyncClient) -> None:
    body = {
        "inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [2], "data": ["hello", "world"]}]
    }
    probs = output(await infer(client, "tiny_char", body))
    assert probs.shape == (2, 5, 29)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    r = await client.post(
        "/v1/models/tiny_char/predict", json={"text": ["hello", "world"], "return": "all"}
    )
    tops = [[step["top"][0]["p"] for step in seq] for seq in r.json()["outputs"]]
    np.testing.assert_allclose(probs.max(-1), np.asarray(tops), atol=1e-5)


async def test_text_model_binary_bytes_input(client: httpx.AsyncClient) -> None:
    inp = triton.InferInput("INPUT", [1], "BYTES")
    inp.set_data_from_numpy(np.asarray([b"abc"], dtype=object), binary_data=True)
    body, size = triton.InferenceServerClient.generate_request_body([inp])
    r = await client.post(
        "/v2/models/tiny_char/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(size)},
    )
    assert read_result(r).as_numpy("OUTPUT").shape == (1, 3, 29)


# -- sequences --------------------------------------------------------------------------


def seq_body(
    x: np.ndarray, seq_id: int | str, start: bool = False, end: bool = False
) -> dict[str, Any]:
    return {
        "inputs": [json_input(x)],
        "parameters": {"sequence_id": seq_id, "sequence_start": start, "sequence_end": end},
    }


@pytest.mark.parametrize("seq_id", [42, 2**64 - 1, "user-7/ø"])
async def test_sequence_stepwise_equals_whole(client: httpx.AsyncClient, seq_id: int | str) -> None:
    x = features(1, 7)
    whole = await v1_predict(client, "tiny_lstm", x)
    chunks = [x[:, :1], x[:, 1:4], x[:, 4:6], x[:, 6:]]
    outs = []
    for i, chunk in enumerate(chunks):
        r = await infer(
            client,
            "tiny_lstm",
            seq_body(chunk, seq_id, start=i == 0, end=i == len(chunks) - 1),
        )
        outs.append(output(r))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), whole, atol=1e-5)
    r = await infer(client, "tiny_lstm", seq_body(x[:, :1], seq_id))
    assert r.status_code == 400  # ended: its state is gone


async def test_non_start_for_unknown_sequence_is_tritons_400(client: httpx.AsyncClient) -> None:
    r = await infer(client, "tiny_lstm", seq_body(features(1, 1), 99))
    assert r.status_code == 400
    assert r.json()["error"] == (
        "inference request for sequence 99 to model 'tiny_lstm' must specify the START flag "
        "on the first request of the sequence"
    )


async def test_int_and_string_ids_are_different_sequences(client: httpx.AsyncClient) -> None:
    x = features(1, 2)
    assert (await infer(client, "tiny_lstm", seq_body(x, 5, start=True))).status_code == 200
    assert (await infer(client, "tiny_lstm", seq_body(x, "5"))).status_code == 400
    assert (await infer(client, "tiny_gru", seq_body(x, 5))).status_code == 400


async def test_sequence_start_restarts_an_existing_sequence(client: httpx.AsyncClient) -> None:
    x = features(1, 3)
    first = output(await infer(client, "tiny_lstm", seq_body(x, "r", start=True)))
    await infer(client, "tiny_lstm", seq_body(x, "r"))
    again = output(await infer(client, "tiny_lstm", seq_body(x, "r", start=True)))
    np.testing.assert_array_equal(first, again)


async def test_sequence_keeps_its_version(client: httpx.AsyncClient) -> None:
    x = features(1, 4)
    whole = output(
        await client.post("/v2/models/tiny_lstm/versions/1/infer", json={"inputs": [json_input(x)]})
    )
    a = await client.post(
        "/v2/models/tiny_lstm/versions/1/infer", json=seq_body(x[:, :2], "v", start=True)
    )
    b = await infer(client, "tiny_lstm", seq_body(x[:, 2:], "v", end=True))
    assert b.json()["model_version"] == "1"
    np.testing.assert_allclose(np.concatenate([output(a), output(b)], 1), whole, atol=1e-5)


async def test_sequence_state_outputs_and_batch_limit(client: httpx.AsyncClient) -> None:
    x = features(1, 3)
    r = await infer(client, "tiny_lstm", seq_body(x, 1, start=True))
    stateless = await infer(client, "tiny_lstm", {"inputs": [json_input(x)]})
    np.testing.assert_allclose(output(r, "STATE_H"), output(stateless, "STATE_H"), atol=1e-6)
    r = await infer(client, "tiny_lstm", seq_body(features(2, 1), 1))
    assert r.status_code == 400 and "batch size 1" in r.json()["error"]


async def test_sequences_are_stored_as_sequence_sessions(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await infer(client, "tiny_lstm", seq_body(features(1, 2), "kept", start=True))
    core = app.state.core
    seqs = await core.sessions.list("anonymous", "sequence")
    assert len(seqs) == 1 and seqs[0].steps == 2 and seqs[0].id.startswith("seq:tiny_lstm:")
    assert await core.sessions.list("anonymous") == []
    assert (await client.get(f"/v1/sessions/{seqs[0].id}")).status_code == 404


async def test_concurrent_steps_on_one_sequence_all_apply(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await infer(client, "tiny_lstm", seq_body(features(1, 1), "c", start=True))
    rs = await asyncio.gather(
        *(infer(client, "tiny_lstm", seq_body(features(1, 1), "c")) for _ in range(8))
    )
    assert all(r.status_code == 200 for r in rs)
    (rec,) = await app.state.core.sessions.list("anonymous", "sequence")
    assert rec.steps == 9


@pytest.mark.parametrize(
    "params",
    [
        {"sequence_id": True},
        {"sequence_id": -1},
        {"sequence_id": 2**64},
        {"sequence_id": 1.5},
        {"sequence_id": 3, "sequence_start": "yes"},
        {"sequence_start": True},
    ],
)
async def test_invalid_sequence_parameters(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    r = await infer(
        client, "tiny_lstm", {"inputs": [json_input(features(1, 1))], "parameters": params}
    )
    assert r.status_code == 400, r.text


# -- expiry and ownership ---------------------------------------------------------------


@pytest.fixture
async def short_ttl_client(tiny_store: Path) -> Any:
    app = create_app(Settings(model_store=tiny_store, request_log=False, session_ttl_seconds=1))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_idle_sequence_expires(short_ttl_client: httpx.AsyncClient) -> None:
    c = short_ttl_client
    x = features(1, 1)
    # A stateless request first: the model process's first run can outlast the 1 s TTL on
    # a loaded machine, and the sequence would expire during its own first step.
    assert (await infer(c, "tiny_lstm", {"inputs": [json_input(x)]})).status_code == 200
    assert (await infer(c, "tiny_lstm", seq_body(x, 8, start=True))).status_code == 200
    assert (await infer(c, "tiny_lstm", seq_body(x, 8))).status_code == 200
    await asyncio.sleep(1.1)
    r = await infer(c, "tiny_lstm", seq_body(x, 8))
    assert r.status_code == 400 and "START flag" in r.json()["error"]


@pytest.fixture
async def keyed_client(tiny_store: Path) -> Any:
    app = create_app(Settings(model_store=tiny_store, request_log=False, api_keys="k1,k2"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_auth_and_sequences_per_key(keyed_client: httpx.AsyncClient) -> None:
    c = keyed_client
    x = features(1, 1)
    assert (await c.get("/v2/health/live")).status_code == 200
    r = await c.get("/v2/models/tiny_lstm")
    assert r.status_code == 401 and "error" in r.json()
    k1 = {"Authorization": "Bearer k1"}
    k2 = {"Authorization": "Bearer k2"}
    assert (await infer(c, "tiny_lstm", seq_body(x, 1, start=True), headers=k1)).status_code == 200
    assert (await infer(c, "tiny_lstm", seq_body(x, 1), headers=k2)).status_code == 400
    assert (await infer(c, "tiny_lstm", seq_body(x, 1), headers=k1)).status_code == 200


# -- malformed and invalid requests ----------------------------------------------------


async def post_raw(
    client: httpx.AsyncClient,
    body: bytes,
    headers: dict[str, str] | None = None,
    model: str = "tiny_lstm",
) -> httpx.Response:
    return await client.post(f"/v2/models/{model}/infer", content=body, headers=headers or {})


@pytest.mark.parametrize("length", ["abc", "0", "-3", "100000"])
async def test_bad_header_length_is_400(client: httpx.AsyncClient, length: str) -> None:
    body, _ = binary_request(features(1, 2))
    r = await post_raw(client, body, {"Inference-Header-Content-Length": length})
    assert r.status_code == 400 and "error" in r.json()


async def test_header_length_cutting_the_json_is_400(client: httpx.AsyncClient) -> None:
    body, headers = binary_request(features(1, 2))
    n = int(headers["Inference-Header-Content-Length"])
    r = await post_raw(client, body, {"Inference-Header-Content-Length": str(n - 5)})
    assert r.status_code == 400


def _binary_with(header: dict[str, Any], tail: bytes) -> tuple[bytes, dict[str, str]]:
    import orjson

    head = orjson.dumps(header)
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(
    ("shape", "size", "tail_len"),
    [
        ([1, 2, F], 4 * 2 * F - 4, 4 * 2 * F - 4),  # size disagrees with the shape
        ([1, 2, F], 4 * 2 * F, 4 * 2 * F - 4),  # size overruns the data
        ([1, 2, F], 4 * 2 * F, 4 * 2 * F + 8),  # unclaimed bytes left over
    ],
)
async def test_binary_size_mismatches_are_400(
    client: httpx.AsyncClient, shape: list[int], size: int, tail_len: int
) -> None:
    header = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "FP32",
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    body, headers = _binary_with(header, b"\0" * tail_len)
    r = await post_raw(client, body, headers)
    assert r.status_code == 400, r.text


async def test_non_finite_binary_data_is_400(client: httpx.AsyncClient) -> None:
    x = features(1, 2)
    x[0, 1, 1] = np.nan
    body, headers = binary_request(x)
    assert (await post_raw(client, body, headers)).status_code == 400


async def test_json_data_beyond_fp32_is_400_without_a_warning(client: httpx.AsyncClient) -> None:
    """1e300 is a finite JSON number that FP32 cannot hold: refused as non-finite, and the
    cast raises no numpy warning (the suite turns warnings into errors)."""
    tensor = {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, F], "data": [1e300, 0.0, 0.0]}
    r = await infer(client, "tiny_lstm", {"inputs": [tensor]})
    assert r.status_code == 400, r.text
    assert "finite" in r.json()["error"]


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "INPUT", "datatype": "FP32", "shape": [1, 2, F], "data": [1.0] * 5},
        {"name": "INPUT", "datatype": "FP32", "shape": [1, 2, F + 1], "data": [1.0] * 8},
        {"name": "INPUT", "datatype": "FP32", "shape": [2, F], "data": [1.0] * 6},
        {"name": "INPUT", "datatype": "FP64", "shape": [1, 1, F], "data": [1.0] * 3},
        {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, F], "data": [1.0, "a", 2.0]},
        {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, F], "data": [1.0, True, 2.0]},
        {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, F], "data": [[1.0], [2.0, 3.0]]},
        {"name": "INPUT", "datatype": "FP32", "shape": [0, 1, F], "data": []},
        {"name": "INPUT", "datatype": "FLOAT", "shape": [1, 1, F], "data": [1.0] * 3},
        {"name": "INPUT", "datatype": "FP32", "shape": "1,1,3", "data": [1.0] * 3},
        {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, F]},
        {"name": "OTHER", "datatype": "FP32", "shape": [1, 1, F], "data": [1.0] * 3},
        {"name": "STATE_H", "datatype": "FP32", "shape": [1, 1, HIDDEN], "data": [0.0] * HIDDEN},
    ],
)
async def test_invalid_tensors_are_400(client: httpx.AsyncClient, tensor: dict[str, Any]) -> None:
    r = await infer(client, "tiny_lstm", {"inputs": [tensor]})
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str)


async def test_wrong_state_shape_and_unknown_output_are_400(client: httpx.AsyncClient) -> None:
    x = features(2, 1)
    bad_state = json_input(np.zeros((1, 1, HIDDEN), np.float32), "STATE_H")
    r = await infer(client, "tiny_lstm", {"inputs": [json_input(x), bad_state]})
    assert r.status_code == 400
    r = await infer(client, "tiny_lstm", {"inputs": [json_input(x)], "outputs": [{"name": "Y"}]})
    assert r.status_code == 400 and "'Y'" in r.json()["error"]
    gru_c = json_input(np.zeros((2, 1, HIDDEN), np.float32), "STATE_C")
    assert (await infer(client, "tiny_gru", {"inputs": [json_input(x), gru_c]})).status_code == 400


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"", {}),
        (b"not json", {}),
        (b"[1, 2]", {}),
        (b'{"inputs": "x"}', {}),
        (b'{"inputs": []}', {}),
        (
            b'{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1,1,3], '
            b'"data": [NaN, 1, 2]}]}',
            {},
        ),
        (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}),
        (b"{}", {"Content-Encoding": "br"}),
    ],
)
async def test_malformed_bodies_are_400(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
) -> None:
    r = await post_raw(client, body, headers)
    assert r.status_code == 400, r.text
    assert "error" in r.json()


async def test_text_input_errors(client: httpx.AsyncClient) -> None:
    def text(data: list[Any], datatype: str = "BYTES") -> dict[str, Any]:
        return {
            "inputs": [{"name": "INPUT", "datatype": datatype, "shape": [len(data)], "data": data}]
        }

    assert (await infer(client, "tiny_char", text(["ab", "abc"]))).status_code == 400
    assert (await infer(client, "tiny_char", text(["AB!"]))).status_code == 400
    assert (await infer(client, "tiny_char", text([1.0], "FP32"))).status_code == 400
    assert (await infer(client, "tiny_char", text([""]))).status_code == 400
    bad_utf8 = struct.pack("<I", 2) + b"\xff\xfe"
    body, headers = _binary_with(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ]
        },
        bad_utf8,
    )
    assert (await post_raw(client, body, headers, "tiny_char")).status_code == 400


async def test_limits_from_settings(tiny_store: Path) -> None:
    settings = Settings(
        model_store=tiny_store, request_log=False, max_steps_per_request=4, max_batch_sequences=2
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            ok = await infer(c, "tiny_lstm", {"inputs": [json_input(features(2, 4))]})
            assert ok.status_code == 200
            r = await infer(c, "tiny_lstm", {"inputs": [json_input(features(1, 5))]})
            assert r.status_code == 400 and "limit" in r.json()["error"]
            r = await infer(c, "tiny_lstm", {"inputs": [json_input(features(3, 1))]})
            assert r.status_code == 400 and "limit" in r.json()["error"]
            assert (await c.get("/v2/models/tiny_lstm/config")).json()["max_batch_size"] == 2


async def test_oversized_decompressed_body_is_413(tiny_store: Path) -> None:
    app = create_app(Settings(model_store=tiny_store, request_log=False, max_body_bytes=2048))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            bomb = gzip.compress(b" " * 100_000)
            r = await post_raw(c, bomb, {"Content-Encoding": "gzip"})
            assert r.status_code == 413 and "error" in r.json()


async def test_sequence_can_start_from_explicit_state(client: httpx.AsyncClient) -> None:
    x = features(1, 6)
    whole = output(await infer(client, "tiny_lstm", {"inputs": [json_input(x)]}))
    prefix = await infer(client, "tiny_lstm", {"inputs": [json_input(x[:, :2])]})
    state = [json_input(output(prefix, n), n) for n in ("STATE_H", "STATE_C")]
    body = seq_body(x[:, 2:4], "e", start=True)
    body["inputs"] += state
    mid = output(await infer(client, "tiny_lstm", body))
    last = output(await infer(client, "tiny_lstm", seq_body(x[:, 4:], "e", end=True)))
    np.testing.assert_allclose(
        np.concatenate([output(prefix), mid, last], axis=1), whole, atol=1e-5
    )
    await infer(client, "tiny_lstm", seq_body(x[:, :1], "e2", start=True))
    body = seq_body(x[:, 1:2], "e2")
    body["inputs"] += state
    r = await infer(client, "tiny_lstm", body)
    assert r.status_code == 400 and "state inputs" in r.json()["error"]
