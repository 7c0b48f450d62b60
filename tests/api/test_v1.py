"""The /v1 contract through the ASGI app: happy paths and every error status.

Every error test on a session checks that the session is exactly as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from service.http.app import create_app
from service.settings import Settings

SEQ = [[0.5, 1.0, -2.0], [1.5, 0.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 0.25, 0.0]]
PROBLEM = "application/problem+json"
JSON = {"content-type": "application/json"}


def assert_problem(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["type"] == "about:blank"
    assert isinstance(body["title"], str) and isinstance(body["detail"], str)
    if code is not None:
        assert body["code"] == code, body
    return body


async def snapshot(
    client: httpx.AsyncClient, sid: str, headers: dict[str, str] | None = None
) -> Any:
    r = await client.get(f"/v1/sessions/{sid}/state", headers=headers)
    assert r.status_code == 200
    return r.json()


async def new_session(client: httpx.AsyncClient, **body: Any) -> str:
    r = await client.post("/v1/sessions", json={"model": "tiny_lstm", **body})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


async def test_models_listing_and_manifest(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert models["tiny_lstm"]["versions"] == [1, 2]
    assert models["tiny_lstm"]["default_version"] == 2
    assert models["tiny_gru"]["cell"] == "gru" and models["tiny_char"]["task"] == "language_model"
    r = await client.get("/v1/models/tiny_lstm", params={"version": 1})
    doc = r.json()
    assert doc["version"] == 1 and doc["input"] == {
        "kind": "features",
        "size": 3,
        "names": ["f0", "f1", "f2"],
    }
    assert {s["name"] for s in doc["state"]} == {"h", "c"} and len(doc["sha256"]) == 64
    assert (await client.get("/v1/models/tiny_char")).json()["input"]["kind"] == "text"


async def test_predict_shapes(client: httpx.AsyncClient) -> None:
    one = (await client.post("/v1/models/tiny_lstm/predict", json={"inputs": SEQ})).json()
    assert one["model"] == "tiny_lstm" and one["version"] == 2 and len(one["outputs"]) == 3
    every = (
        await client.post("/v1/models/tiny_lstm/predict", json={"inputs": SEQ, "return": "all"})
    ).json()
    assert len(every["outputs"]) == len(SEQ)
    np.testing.assert_allclose(every["outputs"][-1], one["outputs"], atol=1e-6)
    ragged = (
        await client.post(
            "/v1/models/tiny_lstm/predict", json={"inputs": [SEQ, SEQ[:2]], "return": "all"}
        )
    ).json()
    assert [len(o) for o in ragged["outputs"]] == [4, 2]
    np.testing.assert_allclose(ragged["outputs"][0], every["outputs"], atol=1e-6)
    np.testing.assert_allclose(ragged["outputs"][1], every["outputs"][:2], atol=1e-6)
    v1 = (
        await client.post("/v1/models/tiny_lstm/predict", json={"inputs": SEQ, "version": 1})
    ).json()
    assert v1["version"] == 1 and v1["outputs"] != one["outputs"]


async def test_predict_text(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/tiny_char/predict", json={"text": "hello"})
    top = r.json()["outputs"]["top"]
    assert len(top) == 5 and all(0 < t["p"] <= 1 for t in top)
    assert top == sorted(top, key=lambda t: -t["p"])
    r = await client.post(
        "/v1/models/tiny_char/predict", json={"text": ["ab", "abc"], "return": "all"}
    )
    assert [len(o) for o in r.json()["outputs"]] == [2, 3]


async def test_generate_is_reproducible_with_a_seed(client: httpx.AsyncClient) -> None:
    body = {"context": "the ", "steps": 12, "seed": 7, "temperature": 0.8, "top_k": 5}
    a = (await client.post("/v1/models/tiny_char/generate", json=body)).json()
    b = (await client.post("/v1/models/tiny_char/generate", json=body)).json()
    assert a["text"] == b["text"] and len(a["text"]) == 12 and len(a["outputs"]) == 12
    r = await client.post("/v1/models/tiny_lstm/generate", json={"context": SEQ, "steps": 3})
    outs = r.json()["outputs"]
    assert len(outs) == 3
    first = (await client.post("/v1/models/tiny_lstm/predict", json={"inputs": SEQ})).json()
    np.testing.assert_allclose(outs[0], first["outputs"], atol=1e-5)
    fed = (
        await client.post("/v1/models/tiny_lstm/predict", json={"inputs": [*SEQ, outs[0]]})
    ).json()
    np.testing.assert_allclose(outs[1], fed["outputs"], atol=1e-4)


async def test_session_walkthrough(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/sessions", json={"model": "tiny_lstm", "ttl_seconds": 120})
    assert r.status_code == 201
    created = r.json()
    sid = created["id"]
    assert r.headers["location"] == f"/v1/sessions/{sid}"
    assert created["steps"] == 0 and created["version"] == 2 and len(sid) >= 22
    assert {"created_at", "expires_at"} <= created.keys()
    outs = []
    for i, step in enumerate(SEQ):
        res = (
            await client.post(f"/v1/sessions/{sid}/step", json={"inputs": [step], "offset": i})
        ).json()
        assert res["steps"] == i + 1 and res["id"] == sid
        outs.extend(res["outputs"])
    whole = (
        await client.post("/v1/models/tiny_lstm/predict", json={"inputs": SEQ, "return": "all"})
    ).json()
    np.testing.assert_allclose(outs, whole["outputs"], atol=1e-5)
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 4
    assert [s["id"] for s in (await client.get("/v1/sessions")).json()["sessions"]] == [sid]

    fork = await client.post(f"/v1/sessions/{sid}/fork")
    assert fork.status_code == 201 and fork.json()["steps"] == 4
    state = await snapshot(client, sid)
    assert state["state"]["h"]["shape"] == [1, 8] and state["state"]["h"]["dtype"] == "float32"
    restored = await client.post(
        "/v1/sessions", json={"model": "tiny_lstm", "state": state["state"], "steps": 4}
    )
    assert restored.status_code == 201 and restored.json()["steps"] == 4
    a = (await client.post(f"/v1/sessions/{sid}/step", json={"inputs": [SEQ[0]]})).json()
    b = (
        await client.post(f"/v1/sessions/{restored.json()['id']}/step", json={"inputs": [SEQ[0]]})
    ).json()
    assert a["outputs"] == b["outputs"] and b["steps"] == 5

    gen = (await client.post(f"/v1/sessions/{sid}/generate", json={"steps": 2})).json()
    assert len(gen["outputs"]) == 2
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 5
    adv = (
        await client.post(f"/v1/sessions/{sid}/generate", json={"steps": 2, "advance": True})
    ).json()
    assert adv["outputs"] == gen["outputs"]
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 7

    reset = (await client.post(f"/v1/sessions/{sid}/reset")).json()
    assert reset["steps"] == 0
    r = await client.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 204 and r.content == b""
    assert_problem(await client.get(f"/v1/sessions/{sid}"), 404, "session_not_found")


async def test_replay_of_the_last_request(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    first = (
        await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:2], "offset": 0})
    ).json()
    again = await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:2], "offset": 0})
    assert again.status_code == 200
    assert again.json() == {**first, "replayed": True}
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 2


# -- errors -------------------------------------------------------------------------------


async def test_400_malformed_bodies_change_nothing(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]})
    before = await snapshot(client, sid)
    for raw in (b"{", b"not json", b"[1, 2]", b"", b'"x"'):
        r = await client.post(
            f"/v1/sessions/{sid}/step", content=raw, headers={"content-type": "application/json"}
        )
        assert_problem(r, 400, "malformed_request")
    assert_problem(
        await client.post("/v1/models/tiny_lstm/predict", content=b"{", headers=JSON), 400
    )
    assert_problem(await client.post("/v1/sessions", content=b"{", headers=JSON), 400)
    assert await snapshot(client, sid) == before


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"inputs": [[1.0, 2.0]]}, "wrong_feature_count"),
        ({"inputs": [[1.0, 2.0, 3.0, 4.0]]}, "wrong_feature_count"),
        ({"inputs": []}, "invalid_input"),
        ({"inputs": [["a", 2.0, 3.0]]}, "invalid_input"),
        ({"inputs": [[1.0, 2.0, 3.0]] * 4097}, "too_many_steps"),
        ({"text": "abc"}, "wrong_input_kind"),
        ({}, "wrong_input_kind"),
        ({"inputs": [[1.0, 2.0, 3.0]], "offset": "3"}, "invalid_input"),
        ({"inputs": [[1.0, 2.0, 1e39]]}, "non_finite"),
    ],
)
async def test_422_invalid_steps_change_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], code: str
) -> None:
    sid = await new_session(client)
    await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]})
    before = await snapshot(client, sid)
    assert_problem(await client.post(f"/v1/sessions/{sid}/step", json=body), 422, code)
    assert await snapshot(client, sid) == before


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_422_nan_and_infinity(client: httpx.AsyncClient, literal: bytes) -> None:
    sid = await new_session(client)
    before = await snapshot(client, sid)
    raw = b'{"inputs": [[1.0, 2.0, ' + literal + b"]]}"
    r = await client.post(f"/v1/sessions/{sid}/step", content=raw, headers=JSON)
    assert_problem(r, 422, "non_finite")
    r = await client.post("/v1/models/tiny_lstm/predict", content=raw, headers=JSON)
    assert_problem(r, 422, "non_finite")
    assert await snapshot(client, sid) == before


async def test_422_other_invalid_requests(client: httpx.AsyncClient) -> None:
    predict = "/v1/models/tiny_lstm/predict"
    assert_problem(await client.post(predict, json={"inputs": SEQ, "return": "first"}), 422)
    assert_problem(await client.post(predict, json={"inputs": SEQ, "version": "x"}), 422)
    assert_problem(await client.post("/v1/models/tiny_char/predict", json={"text": ""}), 422)
    assert_problem(
        await client.post("/v1/models/tiny_char/predict", json={"text": "héllo"}),
        422,
        "unknown_token",
    )
    gen = "/v1/models/tiny_char/generate"
    assert_problem(await client.post(gen, json={"context": "ab", "steps": 0}), 422)
    assert_problem(
        await client.post(gen, json={"context": "ab", "steps": 10**6}), 422, "too_many_steps"
    )
    assert_problem(await client.post(gen, json={"context": "ab", "temperature": -1}), 422)
    assert_problem(await client.post(gen, json={"steps": 3}), 422, "missing_context")
    assert_problem(await client.post("/v1/sessions", json={"model": 3}), 422)
    assert_problem(
        await client.post("/v1/sessions", json={"model": "tiny_lstm", "ttl_seconds": 0}), 422
    )
    assert_problem(await client.post("/v1/sessions", json={"model": "tiny_lstm", "bogus": 1}), 422)
    sid = await new_session(client)
    assert_problem(
        await client.post(f"/v1/sessions/{sid}/generate", json={"steps": 2}), 422, "missing_context"
    )


async def test_422_wrong_state_on_restore(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    state = (await snapshot(client, sid))["state"]
    bad = {**state, "c": {**state["c"], "shape": [1, 9]}}
    r = await client.post("/v1/sessions", json={"model": "tiny_lstm", "state": bad})
    assert_problem(r, 422, "invalid_state")
    bad = {**state, "c": {**state["c"], "dtype": "float16"}}
    r = await client.post("/v1/sessions", json={"model": "tiny_lstm", "state": bad})
    assert_problem(r, 422, "invalid_state")
    bad = {**state, "c": {**state["c"], "data_b64": "!!!"}}
    r = await client.post("/v1/sessions", json={"model": "tiny_lstm", "state": bad})
    assert_problem(r, 422, "invalid_state")


async def test_404s(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/models/nope"), 404, "model_not_found")
    assert_problem(
        await client.get("/v1/models/tiny_lstm", params={"version": 9}), 404, "model_not_found"
    )
    assert_problem(await client.post("/v1/models/nope/predict", json={"inputs": SEQ}), 404)
    assert_problem(
        await client.post("/v1/sessions", json={"model": "nope"}), 404, "model_not_found"
    )
    assert_problem(
        await client.post("/v1/sessions", json={"model": "tiny_lstm", "version": 7}), 404
    )
    for method, suffix in [
        ("GET", ""),
        ("POST", "/step"),
        ("POST", "/reset"),
        ("POST", "/fork"),
        ("GET", "/state"),
        ("DELETE", ""),
        ("POST", "/generate"),
    ]:
        body = {"context": SEQ} if suffix == "/generate" else {"inputs": SEQ}
        if suffix in ("/reset", "/fork"):
            body = {}
        r = await client.request(method, f"/v1/sessions/doesnotexist{suffix}", json=body)
        assert_problem(r, 404, "session_not_found")
    assert_problem(await client.get("/v1/nothing-here"), 404)


async def test_409_offset_conflict_changes_nothing(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:2], "offset": 0})
    before = await snapshot(client, sid)
    for offset in (0, 1, 3, 100):
        r = await client.post(
            f"/v1/sessions/{sid}/step", json={"inputs": [SEQ[3]], "offset": offset}
        )
        body = assert_problem(r, 409, "offset_conflict")
        assert body["steps"] == 2
    assert await snapshot(client, sid) == before


async def test_413_large_bodies(tiny_store: Path) -> None:
    app = create_app(Settings(model_store=tiny_store, max_body_bytes=2048, request_log=False))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        sid = await new_session(client)
        before = await snapshot(client, sid)
        big = {"inputs": [[1.0, 2.0, 3.0]] * 400}
        assert_problem(
            await client.post(f"/v1/sessions/{sid}/step", json=big), 413, "request_too_large"
        )

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"inputs": ['
            for _ in range(400):
                yield b"[1.0, 2.0, 3.0],"
            yield b"[1.0, 2.0, 3.0]]}"

        r = await client.post(f"/v1/sessions/{sid}/step", content=chunks(), headers=JSON)
        assert_problem(r, 413, "request_too_large")
        assert await snapshot(client, sid) == before


@pytest.fixture
async def keyed_app(tiny_store: Path) -> AsyncIterator[FastAPI]:
    app = create_app(
        Settings(model_store=tiny_store, api_keys="alpha-key, beta-key", request_log=False)
    )
    async with app.router.lifespan_context(app):
        yield app


async def test_401_and_ownership(keyed_app: FastAPI) -> None:
    alpha = {"Authorization": "Bearer alpha-key"}
    beta = {"Authorization": "Bearer beta-key"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=keyed_app), base_url="http://t"
    ) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic alpha-key"}):
            r = await c.get("/v1/models", headers=headers)
            assert_problem(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = await c.post("/v1/sessions", json={"model": "tiny_lstm"}, headers=alpha)
        sid = r.json()["id"]
        await c.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]}, headers=alpha)
        before = await snapshot(c, sid, alpha)
        assert_problem(await c.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]}), 401)
        assert_problem(
            await c.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]}, headers=beta),
            404,
            "session_not_found",
        )
        assert_problem(await c.delete(f"/v1/sessions/{sid}", headers=beta), 404)
        assert (await c.get("/v1/sessions", headers=beta)).json()["sessions"] == []
        assert [
            s["id"] for s in (await c.get("/v1/sessions", headers=alpha)).json()["sessions"]
        ] == [sid]
        assert await snapshot(c, sid, alpha) == before


async def test_429_capacity_with_retry_after(tiny_store: Path) -> None:
    app = create_app(Settings(model_store=tiny_store, max_sessions=2, request_log=False))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        sid = await new_session(client)
        await new_session(client)
        r = await client.post("/v1/sessions", json={"model": "tiny_lstm"})
        assert_problem(r, 429, "session_capacity_reached")
        assert int(r.headers["retry-after"]) >= 1
        assert_problem(await client.post(f"/v1/sessions/{sid}/fork"), 429)
        await client.delete(f"/v1/sessions/{sid}")
        assert (await client.post("/v1/sessions", json={"model": "tiny_lstm"})).status_code == 201


async def test_410_expired_then_404(tiny_store: Path) -> None:
    clock = [1000.0]
    app = create_app(Settings(model_store=tiny_store, request_log=False))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        store = app.state.core.store
        store._clock = lambda: clock[0]
        app.state.core.sessions.clock = lambda: clock[0]
        sid = await new_session(client, ttl_seconds=30)
        clock[0] += 31
        r = await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]})
        assert_problem(r, 410, "session_expired")
        assert_problem(await client.get(f"/v1/sessions/{sid}"), 410, "session_expired")
        assert (await client.get("/v1/sessions")).json()["sessions"] == []
        clock[0] += 30
        assert_problem(await client.get(f"/v1/sessions/{sid}"), 404, "session_not_found")


async def test_410_evicted(client: httpx.AsyncClient, app: FastAPI) -> None:
    sid = await new_session(client)
    await app.state.core.store.evict(sid)
    assert_problem(
        await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]}),
        410,
        "session_evicted",
    )


async def test_request_id_health_and_metrics(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.json() == {"status": "ok"} and r.headers["x-request-id"] == "abc-123"
    r = await client.get("/v1/models/nope")
    assert len(r.headers["x-request-id"]) == 32
    assert (await client.get("/readyz")).status_code == 200
    await client.post("/v1/models/tiny_lstm/predict", json={"inputs": SEQ})
    await new_session(client)
    text = (await client.get("/metrics")).text
    for name in (
        "lstm_serve_requests_total",
        "lstm_serve_request_duration_seconds_bucket",
        "lstm_serve_sessions_active",
        "lstm_serve_sessions_created_total",
        "lstm_serve_sessions_expired_total",
        "lstm_serve_sessions_evicted_total",
        "lstm_serve_inference_batch_size_bucket",
        "lstm_serve_inference_queue_wait_seconds_bucket",
        "lstm_serve_model_run_seconds_bucket",
    ):
        assert name in text, name
    assert 'route="/v1/models/{name}/predict"' in text


async def test_client_disconnect_mid_body_is_no_server_error(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sid = await new_session(client)
    before = await snapshot(client, sid)
    events: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"inputs": [[1.0, 2.0', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return events.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/v1/sessions/{sid}/step",
        "raw_path": f"/v1/sessions/{sid}/step".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
        "state": {},
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    assert await snapshot(client, sid) == before


async def test_the_step_fast_path_keeps_request_ids_metrics_and_routing(
    client: httpx.AsyncClient,
) -> None:
    sid = await new_session(client)
    r = await client.post(
        f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]}, headers={"X-Request-ID": "s-1"}
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "s-1"
    assert r.headers["content-type"] == "application/json"
    r = await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[1:2], "offset": 0})
    assert_problem(r, 409, "offset_conflict")
    assert r.headers["x-request-id"]
    for path in ("/v1/sessions//step", f"/v1/sessions/{sid}/x/step"):
        assert_problem(await client.post(path, json={"inputs": SEQ[:1]}), 404)
    assert (await client.get(f"/v1/sessions/{sid}/step")).status_code == 405
    text = (await client.get("/metrics")).text
    assert 'route="/v1/sessions/{session_id}/step",status="200"' in text
    assert 'route="/v1/sessions/{session_id}/step",status="409"' in text


@pytest.mark.parametrize("version", ["¹", "٣", "0", "01", "1e3", "99999999999999999999"])
async def test_non_ascii_or_odd_versions_are_client_errors(
    client: httpx.AsyncClient, version: str
) -> None:
    r = await client.get("/v1/models/tiny_lstm", params={"version": version})
    assert r.status_code in (404, 422), r.text
    r = await client.get(f"/v2/models/tiny_lstm/versions/{version}")
    assert r.status_code == 404 and "error" in r.json()
    r = await client.post(f"/v2/models/tiny_lstm/versions/{version}/infer", content=b"{}")
    assert r.status_code in (400, 404)


async def test_the_step_fast_path_answers_an_internal_fault_with_a_problem(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await new_session(client)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not the client's fault")

    monkeypatch.setattr(app.state.core.sessions, "advance", broken)
    r = await client.post(f"/v1/sessions/{sid}/step", json={"inputs": SEQ[:1]})
    assert_problem(r, 500, "internal_error")
    assert "a bug" not in r.text and len(r.headers["x-request-id"]) == 32
    text = (await client.get("/metrics")).text
    assert 'route="/v1/sessions/{session_id}/step",status="500"' in text
