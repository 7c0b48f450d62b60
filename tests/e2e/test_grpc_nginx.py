"""gRPC through the deployed ``deploy/nginx.conf`` (``grpc_pass``, h2c) to two replicas
sharing one Redis: a sequence driven by the real ``tritonclient.grpc`` whose calls land on
both replicas, part as unary ``ModelInfer`` calls and part over a ``ModelStreamInfer``
stream, equals one whole-sequence prediction."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from tests.e2e.cluster import Cluster, running_cluster, sequence

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

MODEL = "weather_lstm"
TOL = 1e-5
SEQ = 4242


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(redis_url, tmp_path, n_replicas=2, grpc=True) as c:
        yield c


def tensor(x: np.ndarray) -> tg.InferInput:
    inp = tg.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_sequence_over_grpc_through_nginx_spans_replicas(cluster: Cluster) -> None:
    size = httpx.get(f"{cluster.url}/v1/models/{MODEL}", timeout=10).json()["input"]["size"]
    x = np.asarray([sequence(12, size, seed=11)], dtype=np.float32)  # (1, 12, size)
    r = httpx.post(
        f"{cluster.replicas[0].url}/v1/models/{MODEL}/predict",
        json={"inputs": x.tolist(), "return": "all"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    whole = np.asarray(r.json()["outputs"], dtype=np.float32)

    client = tg.InferenceServerClient(cluster.grpc)
    outputs: list[np.ndarray] = []
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        # steps 0-5: one step per unary call, round-robined over the replicas
        for t in range(6):
            result = client.infer(
                MODEL, [tensor(x[:, t : t + 1])], sequence_id=SEQ, sequence_start=t == 0
            )
            outputs.append(result.as_numpy("OUTPUT"))
        # steps 6-9: two requests of two steps on one stream (one replica)
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(lambda result, error: answers.put((result, error)))
        for a in (6, 8):
            client.async_stream_infer(
                MODEL, [tensor(x[:, a : a + 2])], request_id=str(a), sequence_id=SEQ
            )
        for a in (6, 8):
            result, error = answers.get(timeout=30)
            assert error is None, error
            assert result.get_response().id == str(a)
            outputs.append(result.as_numpy("OUTPUT"))
        client.stop_stream()
        # steps 10-11: unary again, ending the sequence
        result = client.infer(MODEL, [tensor(x[:, 10:12])], sequence_id=SEQ, sequence_end=True)
        outputs.append(result.as_numpy("OUTPUT"))
        # ended: a request without the start flag is Triton's unknown sequence
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [tensor(x[:, :1])], sequence_id=SEQ)
        assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()

    np.testing.assert_allclose(np.concatenate(outputs, axis=1), whole, atol=TOL)
    assert cluster.grpc_ports is not None
    unary = cluster.upstreams(r"/inference\.GRPCInferenceService/ModelInfer", 8)
    assert len(unary) == 8, unary
    assert {u.strip() for u in unary} == {f"127.0.0.1:{p}" for p in cluster.grpc_ports}
    assert len(cluster.upstreams(r"/inference\.GRPCInferenceService/ModelStreamInfer", 1)) == 1
