"""``stream: true`` generation over server-sent events, read off the wire with httpx."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.server import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
async def http(tiny_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=30.0) as client:
        yield client


async def read_events(resp: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """Parse ``event:``/``data:`` blocks strictly as the server writes them."""
    event: str | None = None
    data: list[str] = []
    async for line in resp.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "":
            if event is not None:
                yield event, orjson.loads("\n".join(data))
            event, data = None, []
        else:
            raise AssertionError(f"unexpected SSE line {line!r}")


async def sse(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    async with http.stream("POST", path, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        return [e async for e in read_events(resp)]


async def new_session(http: httpx.AsyncClient, model: str) -> str:
    r = await http.post("/v1/sessions", json={"model": model})
    assert r.status_code == 201
    sid: str = r.json()["id"]
    return sid


async def test_event_sequence_for_a_language_model(http: httpx.AsyncClient) -> None:
    body = {"context": "the ", "steps": 12, "seed": 3, "temperature": 0.8}
    events = await sse(http, "/v1/models/tiny_char/generate", body)
    names = [e for e, _ in events]
    assert names == ["step"] * 12 + ["end"]
    steps = [d for e, d in events if e == "step"]
    assert [d["step"] for d in steps] == list(range(12))
    for d in steps:
        assert set(d) == {"step", "output"}
        assert set(d["output"]) == {"token", "p"} and 0.0 < d["output"]["p"] <= 1.0
    end = events[-1][1]
    assert end["model"] == "tiny_char" and end["version"] == 1
    assert end["text"] == "".join(d["output"]["token"] for d in steps)
    assert end["steps"] == 12


@pytest.mark.parametrize(
    ("model", "context"),
    [("tiny_char", "hello"), ("tiny_lstm", [[0.1, 0.2, 0.3], [1.0, 0.0, -1.0]])],
)
async def test_streamed_equals_not_streamed_with_the_same_seed(
    http: httpx.AsyncClient, model: str, context: Any
) -> None:
    body = {"context": context, "steps": 25, "seed": 1234, "temperature": 1.0}
    plain = await http.post(f"/v1/models/{model}/generate", json=body)
    assert plain.status_code == 200
    events = await sse(http, f"/v1/models/{model}/generate", body)
    streamed = [d["output"] for e, d in events if e == "step"]
    assert streamed == plain.json()["outputs"]
    again = await sse(http, f"/v1/models/{model}/generate", body)
    assert again == events


async def test_different_seeds_differ(http: httpx.AsyncClient) -> None:
    outs = []
    for seed in (1, 2):
        body = {"context": "abc", "steps": 40, "seed": seed, "temperature": 1.5}
        events = await sse(http, "/v1/models/tiny_char/generate", body)
        outs.append(events[-1][1]["text"])
    assert outs[0] != outs[1]


async def test_session_generation_streamed_and_advanced(http: httpx.AsyncClient) -> None:
    sid = await new_session(http, "tiny_char")
    r = await http.post(f"/v1/sessions/{sid}/step", json={"text": "abc"})
    assert r.json()["steps"] == 3
    body = {"steps": 10, "seed": 9}
    plain = (await http.post(f"/v1/sessions/{sid}/generate", json=body)).json()
    events = await sse(http, f"/v1/sessions/{sid}/generate", body)
    assert [d["output"] for e, d in events if e == "step"] == plain["outputs"]
    assert events[-1][0] == "end" and events[-1][1]["id"] == sid
    # neither advanced the session
    assert (await http.get(f"/v1/sessions/{sid}")).json()["steps"] == 3
    events = await sse(http, f"/v1/sessions/{sid}/generate", {**body, "advance": True})
    assert [d["output"] for e, d in events if e == "step"] == plain["outputs"]
    assert (await http.get(f"/v1/sessions/{sid}")).json()["steps"] == 3 + 10


async def test_invalid_request_is_a_problem_not_a_stream(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/models/tiny_char/generate", json={"context": "a", "steps": 0, "stream": True}
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    r = await http.post(
        "/v1/sessions/nope/generate", json={"context": "a", "steps": 3, "stream": True}
    )
    assert r.status_code == 404 and r.json()["code"] == "session_not_found"


async def test_first_event_arrives_before_the_generation_ends(http: httpx.AsyncClient) -> None:
    body = {"context": "a", "steps": 2000, "seed": 0, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    async with http.stream("POST", "/v1/models/tiny_char/generate", json=body) as resp:
        async for event, _ in read_events(resp):
            if first is None and event == "step":
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    assert first is not None
    assert first < total / 2, (first, total)


async def test_client_disconnect_stops_the_generation(http: httpx.AsyncClient) -> None:
    sid = await new_session(http, "tiny_char")
    body = {"context": "abc", "steps": 2000, "advance": True, "stream": True}
    async with http.stream("POST", f"/v1/sessions/{sid}/generate", json=body) as resp:
        async for event, _ in read_events(resp):
            assert event == "step"
            break
    # the abandoned generation neither finished nor advanced the session, and let go of it
    started = time.perf_counter()
    r = await http.post(f"/v1/sessions/{sid}/step", json={"text": "x", "offset": 0})
    assert r.status_code == 200, r.text
    assert r.json()["steps"] == 1
    assert time.perf_counter() - started < 2.0
