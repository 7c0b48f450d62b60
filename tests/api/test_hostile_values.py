"""Hostile values against the in-process app: never a 5xx, and the output budget holds.

The fuzzer (``tests/strategies.py``) puts one hostile value into one field of a valid
request for each door: integers past any width, denormals, float32 overflow, lone
surrogates, NUL, zero-sized and overflowing shapes, deep nesting, unknown fields, oversize
headers. Every answer is a success or a 4xx in the door's format, and the caller's session
listing keeps working afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from service.http.app import create_app
from service.models.output_size import v1_step_bytes
from service.models.registry import ModelRegistry
from service.settings import Settings
from tests.conftest import BUNDLED_STORE
from tests.strategies import (
    ROW,
    HostileRequest,
    check_answer,
    hostile_requests,
    oversize_headers,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


async def _session(client: httpx.AsyncClient) -> str:
    r = await client.post("/v1/sessions", json={"model": "tiny_lstm"})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


async def send(client: httpx.AsyncClient, req: HostileRequest, **headers: str) -> httpx.Response:
    path = req.door.path
    if req.door.needs_session:
        path = path.format(sid=await _session(client))
    return await client.post(
        path, content=req.content, headers={"Content-Type": "application/json", **headers}
    )


@FUZZ
@given(req=hostile_requests())
async def test_hostile_values_never_5xx(client: httpx.AsyncClient, req: HostileRequest) -> None:
    r = await send(client, req)
    check_answer(r, req.door.v2, f"{req.door.path} {req.where}")
    listing = await client.get("/v1/sessions")
    assert listing.status_code == 200, listing.text


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@given(req=hostile_requests(), headers=oversize_headers())
async def test_oversize_headers_never_5xx(
    client: httpx.AsyncClient, req: HostileRequest, headers: dict[str, str]
) -> None:
    r = await send(client, req, **headers)
    check_answer(r, req.door.v2, f"{req.door.path} with {len(headers)} big headers")


@pytest.mark.parametrize(
    "request_id", ["a" * 100_000, "\x00", "line\r\nbreak", "é", "\ud800"], ids=repr
)
async def test_hostile_request_ids_are_not_echoed_raw(
    client: httpx.AsyncClient, request_id: str
) -> None:
    raw = request_id.encode("utf-8", "surrogatepass")
    r = await client.get("/healthz", headers=[(b"X-Request-ID", raw)])
    assert r.status_code == 200
    assert len(r.headers["x-request-id"]) <= 1024


# -- the output budget --------------------------------------------------------------------


@asynccontextmanager
async def app_client(store: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    s = Settings(model_store=store, request_log=False, model_process=False, **overrides)
    application = create_app(s)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def _char_infer(n: int, length: int, binary: bool) -> dict[str, Any]:
    texts = ["ab" * length] * n
    return {
        "inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [n], "data": texts}],
        "parameters": {"binary_data_output": binary},
    }


async def test_v2_infer_over_the_output_budget_is_413_before_running(tiny_store: Path) -> None:
    async with app_client(tiny_store, max_response_bytes=2_000_000) as c:
        # 8 texts of 1000 characters: 8000 steps of a 29-token distribution. As JSON that
        # is up to 8000 * 29 * 17 bytes (3.9 MB); as binary 8000 * 29 * 4 (0.9 MB)
        body = _char_infer(8, 500, binary=False)
        r = await c.post("/v2/models/tiny_char/infer", json=body)
        assert r.status_code == 413, r.text
        assert "2000000" in r.json()["error"]
        ok = await c.post("/v2/models/tiny_char/infer", json=_char_infer(8, 500, binary=True))
        assert ok.status_code == 200, ok.text
        assert int(ok.headers["inference-header-content-length"]) < len(ok.content)


async def test_v1_predict_all_over_the_output_budget_is_413(tiny_store: Path) -> None:
    async with app_client(tiny_store, max_response_bytes=100_000) as c:
        body = {"inputs": [[ROW] * 2000] * 2, "return": "all"}
        r = await c.post("/v1/models/tiny_lstm/predict", json=body)
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "response_too_large"
        assert r.headers["content-type"].startswith("application/problem+json")
        body["return"] = "last"
        assert (await c.post("/v1/models/tiny_lstm/predict", json=body)).status_code == 200


async def test_generate_over_the_output_budget_is_413(tiny_store: Path) -> None:
    async with app_client(tiny_store, max_response_bytes=4096) as c:
        for path in ("/v1/models/tiny_char/generate",):
            for stream in (False, True):
                body = {"context": "ab", "steps": 200, "stream": stream}
                r = await c.post(path, json=body)
                assert r.status_code == 413, r.text
                assert r.json()["code"] == "response_too_large"
        sid = (await c.post("/v1/sessions", json={"model": "tiny_char"})).json()["id"]
        r = await c.post(f"/v1/sessions/{sid}/generate", json={"context": "ab", "steps": 200})
        assert r.status_code == 413 and r.json()["code"] == "response_too_large", r.text
        ok = await c.post(f"/v1/sessions/{sid}/generate", json={"context": "ab", "steps": 5})
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("model", ["tiny_char", "tiny_lstm"])
async def test_the_estimate_bounds_the_real_response(
    tiny_store: Path, model: str, binary: bool
) -> None:
    """The budget is checked against an upper bound of the response: a budget a byte
    smaller than the real response refuses the request, and one about twice it does not."""
    if model == "tiny_char":
        body = _char_infer(3, 40, binary)
    else:
        data = [(-1) ** i * 1.2345678e-5 * i for i in range(360)]
        body = {
            "id": "x",
            "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [3, 40, 3], "data": data}],
            "parameters": {"binary_data_output": binary},
        }
    async with app_client(tiny_store) as c:
        size = len((await c.post(f"/v2/models/{model}/infer", json=body)).content)
    async with app_client(tiny_store, max_response_bytes=size - 1) as c:
        assert (await c.post(f"/v2/models/{model}/infer", json=body)).status_code == 413
    async with app_client(tiny_store, max_response_bytes=2 * size + 1024) as c:
        assert (await c.post(f"/v2/models/{model}/infer", json=body)).status_code == 200


async def test_pydoc_32_long_texts_on_v2_answer_413_with_the_default_budget() -> None:
    """32 texts of 4,096 characters asked 185 MB of JSON (every step's distribution)."""
    text = ("def f(x):\n    return x + 1\n" * 200)[:4096]
    body = {"inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [32], "data": [text] * 32}]}
    async with app_client(BUNDLED_STORE) as c:
        r = await c.post("/v2/models/pydoc_char_lstm/infer", json=body)
        assert r.status_code == 413, r.text[:300]
        assert "error" in r.json()
        small = dict(body)
        small["inputs"] = [{**body["inputs"][0], "shape": [1], "data": [text[:256]]}]
        assert (await c.post("/v2/models/pydoc_char_lstm/infer", json=small)).status_code == 200


def test_a_session_step_stays_within_the_default_budget() -> None:
    """A session step (HTTP or WebSocket) gives at most max_steps_per_request steps of one
    sequence: with the defaults, every bundled model's largest step fits the budget."""
    s = Settings()
    reg = ModelRegistry(BUNDLED_STORE)
    reg.load()
    for name in reg.names():
        manifest = reg.get(name).manifest
        largest = s.max_steps_per_request * v1_step_bytes(manifest, s.top_k_default)
        assert largest * 4 <= s.max_response_bytes, (name, largest)
