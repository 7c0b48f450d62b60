"""The /v1 contract against a real uvicorn process, with a real httpx client."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from tests.e2e.server import Server

pytestmark = pytest.mark.e2e

SEQ = [[0.5, 1.0, -2.0], [1.5, 0.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 0.25, 0.0], [3.0, 1.0, 0.0]]


def test_session_steps_equal_whole_sequence_predict(tiny_server: Server) -> None:
    with httpx.Client(base_url=tiny_server.url) as c:
        whole = c.post("/v1/models/tiny_gru/predict", json={"inputs": SEQ, "return": "all"}).json()
        r = c.post("/v1/sessions", json={"model": "tiny_gru"})
        assert r.status_code == 201
        sid = r.json()["id"]
        outs = []
        for chunk in (SEQ[:2], SEQ[2:3], SEQ[3:]):
            outs.extend(
                c.post(f"/v1/sessions/{sid}/step", json={"inputs": chunk}).json()["outputs"]
            )
        np.testing.assert_allclose(outs, whole["outputs"], atol=1e-5)
        assert c.get(f"/v1/sessions/{sid}").json()["steps"] == len(SEQ)
        assert c.delete(f"/v1/sessions/{sid}").status_code == 204


async def test_concurrent_steps_on_one_session_lose_nothing(tiny_server: Server) -> None:
    async with httpx.AsyncClient(base_url=tiny_server.url) as c:
        sid = (await c.post("/v1/sessions", json={"model": "tiny_lstm"})).json()["id"]
        steps = [[float(i), 0.5, -float(i)] for i in range(30)]
        results = await asyncio.gather(
            *(c.post(f"/v1/sessions/{sid}/step", json={"inputs": [s]}) for s in steps)
        )
        assert sorted(r.json()["steps"] for r in results) == list(range(1, 31))
        assert (await c.get(f"/v1/sessions/{sid}")).json()["steps"] == 30


def test_errors_are_problem_details_with_request_ids(tiny_server: Server) -> None:
    with httpx.Client(base_url=tiny_server.url) as c:
        r = c.post(
            "/v1/models/tiny_lstm/predict",
            content=b"{nope",
            headers={"X-Request-ID": "r1", "Content-Type": "application/json"},
        )
        assert r.status_code == 400 and r.headers["x-request-id"] == "r1"
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "malformed_request"
        r = c.post("/v1/sessions/xyz/step", json={"inputs": SEQ})
        assert r.status_code == 404 and r.json()["code"] == "session_not_found"
        assert c.get("/healthz").json() == {"status": "ok"}
        assert "lstm_serve_requests_total" in c.get("/metrics").text
