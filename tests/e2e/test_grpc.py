"""The gRPC door end to end: the real ``tritonclient.grpc`` (sync and ``aio``) against a
real ``lstm-serve serve`` process, beside HTTP on the same core."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.e2e.server import Server, free_port, running_server
from tests.redis_process import start_private_redis

pytestmark = pytest.mark.e2e

KEY = "grpc-key"
AUTH = {"authorization": f"Bearer {KEY}"}
F = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[Server]:
    port = free_port()
    env = {
        "LSTM_SERVE_MODEL_STORE": str(tiny_store),
        "LSTM_SERVE_GRPC_PORT": str(port),
        "LSTM_SERVE_API_KEYS": KEY,
        "LSTM_SERVE_MAX_BODY_BYTES": str(64 * 1024),
    }
    with running_server(env, tmp_path_factory.mktemp("logs")) as s:
        s.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield s


def grpc_url(server: Server) -> str:
    url: str = server.grpc  # type: ignore[attr-defined]
    return url


@pytest.fixture
def client(server: Server) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(grpc_url(server))
    yield c
    c.close()


def features(batch: int, steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, steps, F)) * 3).astype(np.float32)


def v1_predict(server: Server, model: str, x: np.ndarray) -> np.ndarray:
    r = httpx.post(
        f"{server.url}/v1/models/{model}/predict",
        json={"inputs": x.tolist(), "return": "all"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"], dtype=np.float32)


def tensor(x: np.ndarray) -> tg.InferInput:
    inp = tg.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def code_of(exc: InferenceServerException) -> str:
    return str(exc.status())


# -- health and metadata -------------------------------------------------------------------


def test_health_and_metadata(client: tg.InferenceServerClient, server: Server) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(headers=AUTH, as_json=True)
    assert meta["name"] == "lstm-serve"
    assert {"sequence", "binary_tensor_data"} <= set(meta["extensions"])
    assert client.is_model_ready("tiny_lstm", headers=AUTH)
    assert client.is_model_ready("tiny_lstm", "2", headers=AUTH)
    assert not client.is_model_ready("no_such_model", headers=AUTH)
    over_grpc = client.get_model_metadata("tiny_lstm", headers=AUTH, as_json=True)
    over_http = httpx.get(
        f"{server.url}/v2/models/tiny_lstm", headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    for doc in (over_grpc, over_http):
        for t in doc["inputs"] + doc["outputs"]:
            t["shape"] = [int(d) for d in t["shape"]]
    assert over_grpc == over_http
    config = client.get_model_config("tiny_gru", "1", headers=AUTH, as_json=True)["config"]
    assert config["name"] == "tiny_gru"
    assert [s["input_name"] for s in config["sequence_batching"]["state"]] == ["STATE_H"]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_repository_index(headers=AUTH)
    assert code_of(info.value) == "StatusCode.UNIMPLEMENTED"


def test_health_service_and_reflection(server: Server) -> None:
    with grpc.insecure_channel(grpc_url(server)) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        [reply] = list(stub.ServerReflectionInfo(iter([ask])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


# -- inference -----------------------------------------------------------------------------


def test_infer_raw_equals_v1_predict(client: tg.InferenceServerClient, server: Server) -> None:
    x = features(3, 5, seed=1)
    outputs = [tg.InferRequestedOutput("OUTPUT"), tg.InferRequestedOutput("STATE_H")]
    result = client.infer("tiny_lstm", [tensor(x)], outputs=outputs, request_id="r-1", headers=AUTH)
    assert result.get_response().id == "r-1"
    assert result.get_response().raw_output_contents  # Triton's raw outputs
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT"), v1_predict(server, "tiny_lstm", x), atol=1e-5
    )
    assert result.as_numpy("STATE_H").shape[0] == 3
    assert result.as_numpy("STATE_C") is None  # only the outputs asked for


def test_infer_typed_contents_equal_raw(server: Server) -> None:
    x = features(2, 4, seed=2)
    request = service_pb2.ModelInferRequest(model_name="tiny_lstm")
    t = request.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(grpc_url(server)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
    names = [o.name for o in response.outputs]
    out = response.outputs[names.index("OUTPUT")]
    got = np.frombuffer(response.raw_output_contents[names.index("OUTPUT")], "<f4")
    assert list(out.shape) == [2, 4, F]
    np.testing.assert_allclose(got.reshape(2, 4, F), v1_predict(server, "tiny_lstm", x), atol=1e-5)


def test_text_model_takes_bytes(client: tg.InferenceServerClient) -> None:
    inp = tg.InferInput("INPUT", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"hello"], dtype=object))
    probs = client.infer("tiny_char", [inp], headers=AUTH).as_numpy("OUTPUT")
    assert probs.shape[:2] == (1, 5)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


# -- sequences -----------------------------------------------------------------------------


def chunks(steps: int, rng: random.Random) -> list[tuple[int, int]]:
    cuts, at = [], 0
    while at < steps:
        n = min(rng.randint(1, 4), steps - at)
        cuts.append((at, at + n))
        at += n
    return cuts


def test_stream_sequences_equal_whole(client: tg.InferenceServerClient, server: Server) -> None:
    """Several sequences interleaved on one stream, each in chunks of 1 to 4 steps."""
    rng = random.Random(7)
    seqs_by_name: dict[int | str, np.ndarray] = {
        sid: features(1, 12, seed=sid) for sid in (11, 12, 13, 14)
    }
    seqs_by_name["named-seq"] = features(1, 9, seed=5)
    plans = {sid: chunks(x.shape[1], rng) for sid, x in seqs_by_name.items()}
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)), headers=AUTH)
    sent: dict[str, tuple[int | str, int]] = {}
    order = [(sid, i) for sid, plan in plans.items() for i in range(len(plan))]
    order.sort(key=lambda item: (item[1], rng.random()))  # interleaved, in order per sequence
    for sid, i in order:
        a, b = plans[sid][i]
        rid = f"{sid}-{i}"
        sent[rid] = (sid, i)
        client.async_stream_infer(
            "tiny_lstm",
            [tensor(seqs_by_name[sid][:, a:b])],
            request_id=rid,
            sequence_id=sid,
            sequence_start=i == 0,
            sequence_end=i == len(plans[sid]) - 1,
        )
    got: dict[str, np.ndarray] = {}
    for _ in sent:
        result, error = answers.get(timeout=30)
        assert error is None, error
        got[result.get_response().id] = result.as_numpy("OUTPUT")
    client.stop_stream()
    assert set(got) == set(sent)
    for sid, x in seqs_by_name.items():
        stepped = np.concatenate([got[f"{sid}-{i}"] for i in range(len(plans[sid]))], axis=1)
        np.testing.assert_allclose(stepped, v1_predict(server, "tiny_lstm", x), atol=1e-5)


async def test_aio_client_streams_concurrent_sequences(server: Server) -> None:
    client = tga.InferenceServerClient(grpc_url(server))
    try:
        x = features(1, 3)
        single = await client.infer("tiny_gru", [tensor(x)], headers=AUTH)
        np.testing.assert_allclose(
            single.as_numpy("OUTPUT"), v1_predict(server, "tiny_gru", x), atol=1e-5
        )
        seqs = {sid: features(1, 6, seed=sid) for sid in range(21, 27)}

        async def requests() -> AsyncIterator[dict[str, Any]]:
            for step in range(3):  # two steps per request, the sequences interleaved
                for sid, whole in seqs.items():
                    yield {
                        "model_name": "tiny_gru",
                        "inputs": [tensor(whole[:, 2 * step : 2 * step + 2])],
                        "request_id": f"{sid}:{step}",
                        "sequence_id": sid,
                        "sequence_start": step == 0,
                        "sequence_end": step == 2,
                    }

        got: dict[str, np.ndarray] = {}
        async for result, error in client.stream_infer(requests(), headers=AUTH):
            assert error is None, error
            got[result.get_response().id] = result.as_numpy("OUTPUT")
            if len(got) == 3 * len(seqs):
                break
        for sid, whole in seqs.items():
            stepped = np.concatenate([got[f"{sid}:{s}"] for s in range(3)], axis=1)
            np.testing.assert_allclose(stepped, v1_predict(server, "tiny_gru", whole), atol=1e-5)
    finally:
        await client.close()


def test_sequence_moves_between_http_and_grpc(
    client: tg.InferenceServerClient, server: Server
) -> None:
    x = features(1, 6, seed=3)
    http = th.InferenceServerClient(server.url.removeprefix("http://"))
    headers = {"Authorization": f"Bearer {KEY}"}

    def over_http(part: np.ndarray, **kw: Any) -> np.ndarray:
        inp = th.InferInput("INPUT", list(part.shape), "FP32")
        inp.set_data_from_numpy(part)
        out: np.ndarray = http.infer("tiny_lstm", [inp], headers=headers, **kw).as_numpy("OUTPUT")
        return out

    try:
        first = over_http(x[:, :2], sequence_id=4242, sequence_start=True)
        second = client.infer(
            "tiny_lstm", [tensor(x[:, 2:4])], sequence_id=4242, headers=AUTH
        ).as_numpy("OUTPUT")
        third = over_http(x[:, 4:], sequence_id=4242, sequence_end=True)
    finally:
        http.close()
    stepped = np.concatenate([first, second, third], axis=1)
    np.testing.assert_allclose(stepped, v1_predict(server, "tiny_lstm", x), atol=1e-5)
    with pytest.raises(InferenceServerException) as info:  # ended over HTTP: gone for gRPC
        client.infer("tiny_lstm", [tensor(x[:, :1])], sequence_id=4242, headers=AUTH)
    assert code_of(info.value) == "StatusCode.INVALID_ARGUMENT"


# -- errors --------------------------------------------------------------------------------


def test_errors_and_their_codes(client: tg.InferenceServerClient) -> None:
    def failure(**kw: Any) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as info:
            client.infer(**kw)
        return info.value

    ok = {"inputs": [tensor(features(1, 2))], "headers": AUTH}
    err = failure(model_name="no_such_model", **ok)
    assert code_of(err) == "StatusCode.NOT_FOUND"
    err = failure(
        model_name="tiny_lstm",
        inputs=[tensor(np.zeros((1, 2, F + 1), np.float32))],
        headers=AUTH,
    )
    assert code_of(err) == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected shape for input 'INPUT'" in str(err.message())
    err = failure(model_name="tiny_lstm", sequence_id=987654, **ok)
    assert code_of(err) == "StatusCode.INVALID_ARGUMENT"
    assert "must specify the START flag on the first request of the sequence" in str(err.message())
    err = failure(model_name="tiny_lstm", inputs=ok["inputs"])
    assert code_of(err) == "StatusCode.UNAUTHENTICATED"
    err = failure(
        model_name="tiny_lstm", inputs=ok["inputs"], headers={"authorization": "Bearer x"}
    )
    assert code_of(err) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("tiny_lstm")  # metadata needs the key, as over HTTP
    assert code_of(info.value) == "StatusCode.UNAUTHENTICATED"
    big = np.zeros((1, 8000, F), np.float32)  # 96 KB: over the 64 KiB body limit
    err = failure(model_name="tiny_lstm", inputs=[tensor(big)], headers=AUTH)
    assert code_of(err) == "StatusCode.RESOURCE_EXHAUSTED"


def test_stream_survives_a_bad_request(client: tg.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)), headers=AUTH)
    good = tensor(features(1, 2))
    bad = tensor(np.zeros((1, 2, F + 2), np.float32))
    client.async_stream_infer(
        "tiny_lstm", [good], request_id="a", sequence_id=77, sequence_start=True
    )
    client.async_stream_infer("tiny_lstm", [bad], request_id="b", sequence_id=77)
    client.async_stream_infer(
        "tiny_lstm", [good], request_id="c", sequence_id=77, sequence_end=True
    )
    first = answers.get(timeout=30)
    second = answers.get(timeout=30)
    third = answers.get(timeout=30)
    client.stop_stream()
    assert first[1] is None and first[0].get_response().id == "a"
    assert second[0] is None and "unexpected shape" in str(second[1])
    assert third[1] is None and third[0].get_response().id == "c"
    assert first[0].as_numpy("OUTPUT").shape == (1, 2, F)


def test_stream_needs_a_key(client: tg.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    with contextlib.suppress(InferenceServerException):  # it may have ended already
        client.async_stream_infer("tiny_lstm", [tensor(features(1, 1))])
    result, error = answers.get(timeout=30)
    client.stop_stream()
    assert result is None
    assert "StatusCode.UNAUTHENTICATED" in str(error.status())


def test_metrics_by_rpc_and_code(client: tg.InferenceServerClient, server: Server) -> None:
    client.infer("tiny_lstm", [tensor(features(1, 1))], headers=AUTH)
    with pytest.raises(InferenceServerException):
        client.infer("no_such_model", [tensor(features(1, 1))], headers=AUTH)
    text = httpx.get(f"{server.url}/metrics").text
    for code in ("OK", "NOT_FOUND"):
        labels = f'code="{code}",rpc="ModelInfer",service="inference.GRPCInferenceService"'
        assert f"lstm_serve_grpc_requests_total{{{labels}}}" in text


# -- health as /readyz ---------------------------------------------------------------------


def test_health_service_follows_readyz(tmp_path: Path, tiny_store: Path) -> None:
    """With its session store down, the server is not ready: /readyz 503, NOT_SERVING."""
    redis = start_private_redis()
    port = free_port()
    env = {
        "LSTM_SERVE_MODEL_STORE": str(tiny_store),
        "LSTM_SERVE_SESSION_STORE": redis.url,
        "LSTM_SERVE_GRPC_PORT": str(port),
    }
    try:
        with running_server(env, tmp_path) as s, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health: Any = health_pb2_grpc.HealthStub(ch)
            ask = health_pb2.HealthCheckRequest(service="")
            assert health.Check(ask).status == health_pb2.HealthCheckResponse.SERVING
            assert httpx.get(f"{s.url}/readyz").status_code == 200
            redis.kill()
            assert httpx.get(f"{s.url}/readyz", timeout=30).status_code == 503
            assert health.Check(ask).status == health_pb2.HealthCheckResponse.NOT_SERVING
            triton = tg.InferenceServerClient(f"127.0.0.1:{port}")
            assert not triton.is_server_ready()
            triton.close()
            redis.start()
            assert httpx.get(f"{s.url}/readyz", timeout=30).status_code == 200
            assert health.Check(ask).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        redis.kill()


async def test_sigterm_ends_an_open_stream_cleanly(tmp_path: Path, tiny_store: Path) -> None:
    port = free_port()
    env = {"LSTM_SERVE_MODEL_STORE": str(tiny_store), "LSTM_SERVE_GRPC_PORT": str(port)}
    with running_server(env, tmp_path) as s:
        client = tga.InferenceServerClient(f"127.0.0.1:{port}")
        more = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": "tiny_lstm", "inputs": [tensor(features(1, 1))], "request_id": "1"}
            await more.wait()  # the stream stays open, idle, until the server ends it

        seen: list[Any] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                seen.append(result)
                s.process.terminate()
        await client.close()
        assert [r.get_response().id for r in seen] == ["1"]
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "the server is shutting down"
        assert s.process.wait(30) == -15  # stopped by SIGTERM, after its drain
