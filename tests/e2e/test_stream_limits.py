"""Concurrent WebSocket streams per key are limited (close 1013, try again later)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import websockets

from tests.e2e.server import running_server

pytestmark = pytest.mark.e2e


async def test_streams_per_key(tiny_store: Path, tmp_path: Path) -> None:
    env = {
        "LSTM_SERVE_MODEL_STORE": str(tiny_store),
        "LSTM_SERVE_API_KEYS": "k1,k2",
        "LSTM_SERVE_MAX_STREAMS_PER_KEY": "2",
    }
    with running_server(env, tmp_path) as server:
        ws_url = f"ws://127.0.0.1:{server.port}/v1/sessions"
        k1 = {"Authorization": "Bearer k1"}
        k2 = {"Authorization": "Bearer k2"}
        async with httpx.AsyncClient(base_url=server.url) as c:
            s1 = (await c.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=k1)).json()[
                "id"
            ]
            s2 = (await c.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=k2)).json()[
                "id"
            ]
        a = await websockets.connect(f"{ws_url}/{s1}/stream", additional_headers=k1)
        b = await websockets.connect(f"{ws_url}/{s1}/stream", additional_headers=k1)
        third = await websockets.connect(f"{ws_url}/{s1}/stream", additional_headers=k1)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await third.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert closed.value.rcvd.reason == "too_many_streams"
        other = await websockets.connect(f"{ws_url}/{s2}/stream", additional_headers=k2)
        await other.send('{"inputs": [[1, 2, 3]]}')
        assert '"steps":1' in await other.recv()
        await a.close()
        await a.wait_closed()
        for _ in range(50):  # the server forgets a closed stream at once; allow a moment
            again = await websockets.connect(f"{ws_url}/{s1}/stream", additional_headers=k1)
            await again.send('{"inputs": [[1, 2, 3]]}')
            try:
                reply = await again.recv()
                break
            except websockets.ConnectionClosed:
                continue
        assert '"steps":' in reply
        for ws in (b, again, other):
            await ws.close()
