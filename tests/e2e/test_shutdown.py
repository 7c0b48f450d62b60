"""Graceful shutdown of a real server: SIGTERM drains, closes streams with 1001, loses nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from tests.e2e.server import Server, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def redis_env(tiny_store: Path, redis_url: str) -> dict[str, str]:
    """A Redis database of the test's own (``redis_url``: this run's server, emptied after)."""
    return {
        "LSTM_SERVE_SESSION_STORE": redis_url,
        "LSTM_SERVE_MODEL_STORE": str(tiny_store),
        "LSTM_SERVE_REQUEST_LOG": "false",
    }


def _step(i: int) -> list[float]:
    return [float(i % 7), 0.25 * i, -1.0]


async def _drive(
    server: Server, sid: str, acked: list[list[float]], stop_at: asyncio.Event
) -> None:
    """Step with offsets until the server goes away; record every acknowledged step."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        for i in range(100_000):
            step = _step(i)
            try:
                r = await c.post(
                    f"/v1/sessions/{sid}/step", json={"inputs": [step], "offset": len(acked)}
                )
            except httpx.TransportError:
                return
            if r.status_code != 200:
                return
            assert r.json()["steps"] == len(acked) + 1
            acked.append(step)
            if len(acked) == 50:
                stop_at.set()


async def test_sigterm_drains_steps_and_closes_streams_with_1001(
    redis_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(redis_env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=server.url) as c:
            sid = (await c.post("/v1/sessions", json={"model": "tiny_lstm"})).json()["id"]
            other = (await c.post("/v1/sessions", json={"model": "tiny_lstm"})).json()["id"]
        ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/v1/sessions/{other}/stream")
        await ws.send('{"inputs": [[1.0, 2.0, 3.0]]}')
        assert '"steps":1' in await ws.recv()

        acked: list[list[float]] = []
        halfway = asyncio.Event()
        driver = asyncio.create_task(_drive(server, sid, acked, halfway))
        await asyncio.wait_for(halfway.wait(), 30)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        await asyncio.wait_for(driver, 30)
        code = await asyncio.to_thread(server.process.wait, 30)
        # the server re-raises the SIGTERM it captured once the graceful shutdown is done
        assert code in (0, -signal.SIGTERM) and time.monotonic() - started < 25
        assert "Application shutdown complete" in server.log()
    finally:
        server.stop(signal.SIGKILL)

    # A fresh server on the same Redis sees exactly the acknowledged steps, and the state
    # is that of those steps: nothing lost, nothing half-applied.
    again = start_server(redis_env, tmp_path)
    try:
        with httpx.Client(base_url=again.url) as c:
            assert c.get(f"/v1/sessions/{sid}").json()["steps"] == len(acked)
            probe = [[0.5, 0.5, 0.5]]
            nxt = c.post(f"/v1/sessions/{sid}/step", json={"inputs": probe}).json()["outputs"]
            whole = c.post(
                "/v1/models/tiny_lstm/predict", json={"inputs": [*acked, *probe]}
            ).json()["outputs"]
            np.testing.assert_allclose(nxt[0], whole, atol=1e-5)
    finally:
        again.stop()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _gone(pid: int, seconds: float) -> bool:
    """``pid`` exited (or is a zombie nobody reaped yet) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
def test_the_model_process_goes_with_the_server(
    redis_env: dict[str, str], tmp_path: Path, sig: int
) -> None:
    """The onnxruntime child exits with the server, even one killed without a chance to
    stop it (it sees its socket close). Ctrl-C (SIGINT) is a clean stop: exit status 0
    and no traceback, as with ``uvicorn`` itself."""
    server = start_server(redis_env, tmp_path)
    try:
        (child,) = _children(server.process.pid)
        with open(f"/proc/{child}/cmdline") as f:
            assert "service.inference.worker.child" in f.read()
        server.process.send_signal(sig)
        status = server.process.wait(30)
        assert _gone(child, 10), f"model process {child} outlived the server ({sig!r})"
        if sig == signal.SIGINT:
            log = server.log()
            assert "Application shutdown complete" in log
            assert "Traceback" not in log, log[-3000:]
            assert status == 0
    finally:
        server.stop(signal.SIGKILL)
