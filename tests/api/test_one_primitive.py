"""Every door steps a session through the one primitive, ``SessionManager.advance``: the
``/v1`` step route, each WebSocket frame and ``/v2`` sequence requests. The core's one
compare-and-set loop is the only place in the service that saves a session record."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

import service
from service.oip.sequences import KIND, store_id
from service.sessions.advance import Advance
from service.sessions.manager import SessionManager
from tests.api.test_stream import create, websocket
from tests.api.test_v2 import features, infer, output, seq_body, v1_predict

ONE = {"inputs": [[1.0, 2.0, 3.0]]}


@pytest.fixture
def calls(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each call of the app's ``advance``: its session id and keyword arguments."""
    sessions: SessionManager = app.state.core.sessions
    real = sessions.advance
    seen: list[dict[str, Any]] = []

    async def recorded(owner: str, session_id: str, inputs: Any, **kw: Any) -> Advance:
        seen.append({"session_id": session_id, **kw})
        return await real(owner, session_id, inputs, **kw)

    monkeypatch.setattr(sessions, "advance", recorded)
    return seen


async def test_the_v1_step_goes_through_advance(
    client: httpx.AsyncClient, calls: list[dict[str, Any]]
) -> None:
    sid = await create(client)
    r = await client.post(f"/v1/sessions/{sid}/step", json={**ONE, "offset": 0})
    assert r.status_code == 200 and r.json()["steps"] == 1
    again = await client.post(f"/v1/sessions/{sid}/step", json={**ONE, "offset": 0})
    assert again.json() == {**r.json(), "replayed": True}
    assert [(c["session_id"], c["offset"]) for c in calls] == [(sid, 0), (sid, 0)]


async def test_websocket_frames_go_through_advance(
    app: FastAPI, client: httpx.AsyncClient, calls: list[dict[str, Any]]
) -> None:
    sid = await create(client)
    async with websocket(app, f"/v1/sessions/{sid}/stream") as ws:
        assert (await ws.step(ONE))["steps"] == 1
        replay = await ws.step({**ONE, "offset": 0})
        assert replay["replayed"] is True and replay["steps"] == 1
    assert [c["session_id"] for c in calls] == [sid, sid]


async def test_v2_sequences_go_through_advance(
    app: FastAPI, client: httpx.AsyncClient, calls: list[dict[str, Any]]
) -> None:
    x = features(1, 4)
    whole = await v1_predict(client, "tiny_lstm", x)
    assert calls == []  # a stateless request is no session step
    first = await infer(client, "tiny_lstm", seq_body(x[:, :3], 9, start=True))
    last = await infer(client, "tiny_lstm", seq_body(x[:, 3:], 9))
    np.testing.assert_allclose(
        np.concatenate([output(first), output(last)], axis=1), whole, atol=1e-5
    )
    sid = store_id("tiny_lstm", "anonymous", 9)
    assert [(c["session_id"], c["kind"]) for c in calls] == [(sid, KIND)] * 2
    assert calls[0]["start"] is not None and calls[1]["start"] is None
    # the record keeps the raw outputs of the last request, usable by any door
    rec = await app.state.core.sessions.get("anonymous", sid, KIND)
    assert rec.steps == 4 and rec.last is not None
    assert (rec.last.offset, rec.last.n_steps, rec.last.outputs.shape[0]) == (3, 1, 1)
    await infer(client, "tiny_lstm", seq_body(x[:, :1], 9, end=True))
    assert calls[-1]["end"] is True
    assert (await infer(client, "tiny_lstm", seq_body(x[:, :1], 9))).status_code == 400


def _saves(tree: ast.AST) -> list[int]:
    """Lines that call some ``<x>.save(...)``."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "save"
    ]


def test_one_compare_and_set_loop_saves_sessions() -> None:
    """Only the session manager's write loop saves a record (the stores implement ``save``;
    training saves checkpoints, not sessions)."""
    root = Path(service.__file__).parent
    found = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("training/"):
            continue
        lines = _saves(ast.parse(path.read_text(), rel))
        if lines:
            found[rel] = len(lines)
    assert found == {"sessions/manager.py": 1}
