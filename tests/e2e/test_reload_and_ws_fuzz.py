"""Hot reload on SIGHUP of a real server, and hypothesis fuzzing of the WebSocket frame parser."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.e2e.server import Server, running_server
from tests.tiny_models import write_tiny_model

pytestmark = pytest.mark.e2e


def test_sighup_reloads_the_model_store(tiny_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    with (
        running_server({"LSTM_SERVE_MODEL_STORE": str(store)}, tmp_path) as server,
        httpx.Client(base_url=server.url) as c,
    ):
        old = c.post("/v1/sessions", json={"model": "tiny_gru"}).json()["id"]
        write_tiny_model(store, "tiny_gru", "gru", version=2, seed=21)
        server.process.send_signal(signal.SIGHUP)
        for _ in range(100):
            if c.get("/v1/models/tiny_gru").json()["versions"] == [1, 2]:
                break
            time.sleep(0.05)
        assert c.post("/v1/sessions", json={"model": "tiny_gru"}).json()["version"] == 2
        assert c.get(f"/v1/sessions/{old}").json()["version"] == 1
        assert c.post(f"/v1/sessions/{old}/step", json={"inputs": [[1, 2, 3]]}).status_code == 200
        assert server.process.poll() is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["inputs", "text", "offset", "x"]), inner, max_size=3)
    ),
    max_leaves=10,
)
frames = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.lists(
        st.lists(st.floats(-5, 5, width=32), min_size=3, max_size=3), min_size=1, max_size=3
    ).map(lambda seq: json.dumps({"inputs": seq})),
)


@pytest.fixture(scope="module")
def fuzz_session(tiny_server: Server) -> str:
    sid: str = httpx.post(f"{tiny_server.url}/v1/sessions", json={"model": "tiny_lstm"}).json()[
        "id"
    ]
    return sid


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_websocket_frames_never_break_the_socket(
    tiny_server: Server, fuzz_session: str, batch: list[str | bytes]
) -> None:
    url = f"ws://127.0.0.1:{tiny_server.port}/v1/sessions/{fuzz_session}/stream"
    before = httpx.get(f"{tiny_server.url}/v1/sessions/{fuzz_session}").json()["steps"]
    applied = 0
    with connect(url) as ws:
        for frame in batch:
            ws.send(frame)
            reply: dict[str, Any] = json.loads(ws.recv(timeout=10))
            if "error" in reply:
                problem = reply["error"]
                assert 400 <= problem["status"] < 500 and problem["code"], problem
            else:
                applied += len(reply["outputs"])
                assert reply["steps"] == before + applied
        ws.send('{"inputs": [[0.0, 0.0, 0.0]]}')  # still open and serving
        assert json.loads(ws.recv(timeout=10))["steps"] == before + applied + 1
