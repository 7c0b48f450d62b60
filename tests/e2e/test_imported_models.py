"""Every framework fixture, imported with ``lstm-serve import`` into the store of a running
server, is served after SIGHUP without a restart: stepping through a /v1 session (HTTP and
WebSocket) and a tritonclient sequence equals one whole-sequence predict; the bidirectional
one serves predict and refuses sessions and sequences."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException
from websockets.sync.client import connect

from tests.e2e.server import REPO, Server, running_server
from tests.onnx_import.cases import CASES, STATEFUL, Case

pytestmark = pytest.mark.e2e

CHUNKS = [(0, 1), (1, 4), (4, 5), (5, 8)]


def _import_all(store: Path) -> None:
    for case in CASES:
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "import", str(case.path), "--name", case.name],
            cwd=REPO,
            env={"LSTM_SERVE_MODEL_STORE": str(store), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "SIGHUP" in done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("imported") / "store"
    shutil.copytree(tiny_store, store)
    with running_server(
        {"LSTM_SERVE_MODEL_STORE": str(store)}, tmp_path_factory.mktemp("logs")
    ) as server:
        before = {m["name"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert before and not before & {c.name for c in CASES}
        _import_all(store)
        server.process.send_signal(signal.SIGHUP)
        for _ in range(200):
            listed = {m["name"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
            if {c.name for c in CASES} <= listed:
                break
            time.sleep(0.05)
        assert {c.name for c in CASES} <= listed, server.log()[-2000:]
        assert server.process.poll() is None
        yield server


def _x(case: Case, server: Server) -> np.ndarray:
    size = httpx.get(f"{server.url}/v1/models/{case.name}").json()["input"]["size"]
    return np.random.default_rng(3).standard_normal((8, size)).astype(np.float32)


def _predict(server: Server, name: str, x: np.ndarray) -> np.ndarray:
    r = httpx.post(
        f"{server.url}/v1/models/{name}/predict", json={"inputs": x.tolist(), "return": "all"}
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"], dtype=np.float32)


def _session_http(server: Server, name: str, x: np.ndarray) -> np.ndarray:
    with httpx.Client(base_url=server.url) as c:
        sid = c.post("/v1/sessions", json={"model": name}).json()["id"]
        outs = []
        for a, b in CHUNKS:
            r = c.post(f"/v1/sessions/{sid}/step", json={"inputs": x[a:b].tolist(), "offset": a})
            assert r.status_code == 200, r.text
            outs += r.json()["outputs"]
        c.delete(f"/v1/sessions/{sid}")
    return np.asarray(outs, dtype=np.float32)


def _session_ws(server: Server, name: str, x: np.ndarray) -> np.ndarray:
    sid = httpx.post(f"{server.url}/v1/sessions", json={"model": name}).json()["id"]
    outs = []
    with connect(f"ws://127.0.0.1:{server.port}/v1/sessions/{sid}/stream") as ws:
        for a, b in CHUNKS:
            ws.send(json.dumps({"inputs": x[a:b].tolist()}))
            reply = json.loads(ws.recv(timeout=10))
            assert reply["steps"] == b, reply
            outs += reply["outputs"]
    return np.asarray(outs, dtype=np.float32)


def _triton_sequence(server: Server, name: str, x: np.ndarray, seq_id: int) -> np.ndarray:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    outs = []
    try:
        for a, b in CHUNKS:
            inp = triton.InferInput("INPUT", [1, b - a, x.shape[1]], "FP32")
            inp.set_data_from_numpy(x[None, a:b], binary_data=True)
            result = client.infer(
                name,
                [inp],
                sequence_id=seq_id,
                sequence_start=a == 0,
                sequence_end=b == CHUNKS[-1][1],
            )
            outs.append(result.as_numpy("OUTPUT")[0])
    finally:
        client.close()
    return np.concatenate(outs, axis=0)


@pytest.mark.parametrize("case", STATEFUL, ids=lambda c: c.name)
def test_imported_model_steps_like_the_whole_sequence(served: Server, case: Case) -> None:
    x = _x(case, served)
    whole = _predict(served, case.name, x)
    assert whole.shape[0] == 8
    diffs = {
        "session_http": np.abs(_session_http(served, case.name, x) - whole).max(),
        "websocket": np.abs(_session_ws(served, case.name, x) - whole).max(),
        "triton_sequence": np.abs(
            _triton_sequence(served, case.name, x, 900 + CASES.index(case)) - whole
        ).max(),
    }
    print(f"{case.name}: {diffs}")
    assert all(d <= 1e-5 for d in diffs.values()), diffs


def test_bidirectional_model_serves_predict_and_refuses_stepping(served: Server) -> None:
    case = next(c for c in CASES if not c.stateful)
    x = _x(case, served)
    assert _predict(served, case.name, x).shape == (8, 2)
    doc = httpx.get(f"{served.url}/v1/models/{case.name}").json()
    assert doc["stateful"] is False
    r = httpx.post(f"{served.url}/v1/sessions", json={"model": case.name})
    assert r.status_code == 422
    assert r.json()["code"] == "model_not_stateful" and "predict" in r.json()["detail"]
    with pytest.raises(InferenceServerException) as exc:
        _triton_sequence(served, case.name, x, 4242)
    assert exc.value.status() == "400"  # /v2 answers invalid input as Triton does
    assert "whole sequences only" in str(exc.value.message())
