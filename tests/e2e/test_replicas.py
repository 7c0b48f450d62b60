"""Several ``lstm-serve`` replicas sharing one real Redis, behind ``deploy/nginx.conf``.

Three server processes use the same Redis database; nginx round-robins over them with the
deployed configuration (only its upstream addresses, port and paths are local). Every
stateful answer is checked against one process's stateless whole-sequence prediction.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.e2e.cluster import Cluster, running_cluster, sequence
from tests.e2e.server import Server, start_server
from tests.redis_process import RedisDatabases, RedisProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

MODEL = "weather_lstm"
TOL = 1e-5
N_REPLICAS = 3


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_databases: RedisDatabases
) -> Iterator[Cluster]:
    """The replicas on a Redis database of this module's own (on this run's server)."""
    with (
        redis_databases.database() as url,
        running_cluster(url, tmp_path_factory.mktemp("cluster"), N_REPLICAS) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def model_size(cluster: Cluster) -> int:
    models = httpx.get(f"{cluster.url}/v1/models", timeout=10).json()["models"]
    assert MODEL in {m["name"] for m in models}, models
    info = httpx.get(f"{cluster.url}/v1/models/{MODEL}", timeout=10).json()
    size: int = info["input"]["size"]
    return size


def _reference(server: Server, inputs: list[list[float]]) -> np.ndarray:
    """One process, whole sequence, no session: the outputs every step should reproduce."""
    r = httpx.post(
        f"{server.url}/v1/models/{MODEL}/predict",
        json={"inputs": inputs, "return": "all"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"], dtype=np.float64)


def _create(client: httpx.Client) -> str:
    r = client.post("/v1/sessions", json={"model": MODEL})
    assert r.status_code == 201, r.text
    session_id: str = r.json()["id"]
    return session_id


def _step(
    client: httpx.Client, session_id: str, inputs: list[list[float]], offset: int
) -> dict[str, Any]:
    r = client.post(f"/v1/sessions/{session_id}/step", json={"inputs": inputs, "offset": offset})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["steps"] == offset + len(inputs)
    return body


def _chunks(n: int) -> list[tuple[int, int]]:
    """Uneven chunk boundaries covering ``range(n)``: 1, 2, 3, 1, 2, 3, ..."""
    out, start, size = [], 0, 1
    while start < n:
        out.append((start, min(n, start + size)))
        start, size = start + size, size % 3 + 1
    return out


def test_steps_spread_over_replicas_match_one_process(cluster: Cluster, model_size: int) -> None:
    inputs = sequence(30, model_size, seed=1)
    want = _reference(cluster.replicas[0], inputs)
    got: list[list[float]] = []
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        sid = _create(client)
        chunks = _chunks(len(inputs))
        for a, b in chunks:
            got += _step(client, sid, inputs[a:b], offset=a)["outputs"]
        assert client.get(f"/v1/sessions/{sid}").json()["steps"] == len(inputs)
    np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL)

    served = cluster.upstreams(rf"/v1/sessions/{re.escape(sid)}/step", len(chunks))
    assert len(served) == len(chunks)
    assert len(set(served)) == N_REPLICAS, served


def test_a_replica_killed_mid_sequence_loses_nothing(cluster: Cluster, model_size: int) -> None:
    inputs = sequence(24, model_size, seed=2)
    want = _reference(cluster.replicas[1], inputs)
    chunks = _chunks(len(inputs))
    half = len(chunks) // 2
    got: list[list[float]] = []
    victim = cluster.replicas[0]
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        sid = _create(client)
        for a, b in chunks[:half]:
            got += _step(client, sid, inputs[a:b], offset=a)["outputs"]
        served_before = cluster.upstreams(rf"/v1/sessions/{re.escape(sid)}/step", half)
        assert len(served_before) == half, served_before
        assert f"127.0.0.1:{victim.port}" in served_before

        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        for a, b in chunks[half:]:
            got += _step(client, sid, inputs[a:b], offset=a)["outputs"]
        assert client.get(f"/v1/sessions/{sid}").json()["steps"] == len(inputs)
    np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL)

    after = cluster.upstreams(rf"/v1/sessions/{re.escape(sid)}/step", len(chunks))[half:]
    assert len(after) == len(chunks) - half, after
    answered = {u.split(", ")[-1] for u in after}
    assert f"127.0.0.1:{victim.port}" not in answered
    assert len(answered) == N_REPLICAS - 1, after

    # The replica comes back on its port and serves the same sessions again.
    cluster.restart(0)
    cluster.wait_in_rotation(0)
    with httpx.Client(base_url=cluster.replicas[0].url, timeout=10) as direct:
        assert direct.get(f"/v1/sessions/{sid}").json()["steps"] == len(inputs)


async def test_websocket_stream_through_nginx(cluster: Cluster, model_size: int) -> None:
    """The deployed conf upgrades /v1/sessions/{id}/stream; frames step the shared session."""
    inputs = sequence(9, model_size, seed=4)
    async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as client:
        sid = (await client.post("/v1/sessions", json={"model": MODEL})).json()["id"]
        got: list[list[float]] = []
        ws_url = cluster.url.replace("http://", "ws://", 1) + f"/v1/sessions/{sid}/stream"
        async with connect(ws_url, open_timeout=10) as ws:
            for a, b in _chunks(6):
                await ws.send(orjson.dumps({"inputs": inputs[a:b], "offset": a}).decode())
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply["steps"] == b, reply
                got += reply["outputs"]
        # The rest over plain HTTP, on whichever replicas nginx picks.
        r = await client.post(f"/v1/sessions/{sid}/step", json={"inputs": inputs[6:], "offset": 6})
        assert r.status_code == 200, r.text
        got += r.json()["outputs"]
    want = _reference(cluster.replicas[1], inputs)
    np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL)


async def test_concurrent_offset_steps_apply_each_exactly_once(
    cluster: Cluster, model_size: int
) -> None:
    """Workers race on one session through nginx; a 409 tells each the current offset."""
    workers, per_worker = 6, 8
    applied: dict[int, tuple[list[float], list[float]]] = {}
    conflicts = 0

    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as client:
        r = await client.post("/v1/sessions", json={"model": MODEL})
        sid = r.json()["id"]

        async def worker(w: int) -> None:
            nonlocal conflicts
            mine = sequence(per_worker, model_size, seed=100 + w)
            offset = 0
            for x in mine:
                while True:
                    r = await client.post(
                        f"/v1/sessions/{sid}/step", json={"inputs": [x], "offset": offset}
                    )
                    body = r.json()
                    if r.status_code == 409:
                        assert body["code"] == "offset_conflict"
                        conflicts += 1
                        offset = body["steps"]
                        continue
                    if r.status_code == 503:  # contended past the server's retries
                        await asyncio.sleep(0.01)
                        continue
                    assert r.status_code == 200, r.text
                    assert not body.get("replayed")
                    assert offset not in applied
                    applied[offset] = (x, body["outputs"][0])
                    offset = body["steps"]
                    break

        await asyncio.gather(*(worker(w) for w in range(workers)))
        final = (await client.get(f"/v1/sessions/{sid}")).json()

    total = workers * per_worker
    assert final["steps"] == total
    assert sorted(applied) == list(range(total))
    assert conflicts > 0, "the workers never raced"
    order = [applied[k][0] for k in range(total)]
    outputs = np.asarray([applied[k][1] for k in range(total)])
    np.testing.assert_allclose(outputs, _reference(cluster.replicas[1], order), rtol=TOL, atol=TOL)
    served = cluster.upstreams(rf"/v1/sessions/{re.escape(sid)}/step")
    assert len({u.split(", ")[-1] for u in served}) >= 2


async def test_concurrent_steps_without_offsets_serialise(
    cluster: Cluster, model_size: int
) -> None:
    """No offsets: every request is applied once, in some order, none lost or interleaved."""
    n = 24
    inputs = sequence(n, model_size, seed=7)
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as client:
        sid = (await client.post("/v1/sessions", json={"model": MODEL})).json()["id"]

        async def one(x: list[float]) -> dict[str, Any]:
            while True:
                r = await client.post(f"/v1/sessions/{sid}/step", json={"inputs": [x]})
                if r.status_code == 503 and r.json()["code"] == "session_store_unavailable":
                    await asyncio.sleep(0.01)  # contended: nothing was applied
                    continue
                assert r.status_code == 200, r.text
                body: dict[str, Any] = r.json()
                return body

        bodies = await asyncio.gather(*(one(x) for x in inputs))
        final = (await client.get(f"/v1/sessions/{sid}")).json()

    assert final["steps"] == n
    assert sorted(b["steps"] for b in bodies) == list(range(1, n + 1))
    by_step = sorted(zip(bodies, inputs, strict=True), key=lambda p: int(p[0]["steps"]))
    order = [x for _, x in by_step]
    outputs = np.asarray([b["outputs"][0] for b, _ in by_step])
    np.testing.assert_allclose(outputs, _reference(cluster.replicas[1], order), rtol=TOL, atol=TOL)


def test_redis_outage_answers_503_and_recovers_without_restart(tmp_path: Path) -> None:
    """Redis dies under a replica: 503 with Retry-After, not ready but alive; then it recovers."""
    redis_server = RedisProcess()
    redis_server.start()
    server = start_server(
        {"LSTM_SERVE_SESSION_STORE": redis_server.url, "LSTM_SERVE_REQUEST_LOG": "false"},
        tmp_path,
        ready_timeout=60,
    )
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            sid = _create(client)
            size = client.get(f"/v1/models/{MODEL}").json()["input"]["size"]
            x = sequence(1, size, seed=3)
            assert client.post(f"/v1/sessions/{sid}/step", json={"inputs": x}).status_code == 200

            redis_server.kill()
            for r in (
                client.post(f"/v1/sessions/{sid}/step", json={"inputs": x}),
                client.get(f"/v1/sessions/{sid}"),
                client.post("/v1/sessions", json={"model": MODEL}),
            ):
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"]
                assert r.json()["code"] == "session_store_unavailable"
            assert r.elapsed.total_seconds() < 2
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200
            stateless = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": x})
            assert stateless.status_code == 200

            redis_server.start()  # empty: it kept nothing
            assert client.get("/readyz").status_code == 200
            sid = _create(client)
            r = client.post(f"/v1/sessions/{sid}/step", json={"inputs": x, "offset": 0})
            assert r.status_code == 200 and r.json()["steps"] == 1
        assert server.process.poll() is None
    finally:
        server.stop()
        redis_server.kill()


def test_two_replicas_alternating_steps_never_answer_from_a_stale_copy(
    tmp_path: Path, redis_url: str
) -> None:
    """Two servers on one Redis, no proxy: each step goes to the other replica, then runs
    of steps stay on one replica (its copy becomes trusted) before moving (the copy left
    behind is stale). Every output equals the whole-sequence prediction; a retry of the
    last request is replayed on either replica; a retry of an older request is a 409 with
    the true step count on the replica whose copy is stale."""
    env = {"LSTM_SERVE_SESSION_STORE": redis_url, "LSTM_SERVE_REQUEST_LOG": "false"}
    servers: list[Server] = []
    clients: list[httpx.Client] = []
    try:
        for _ in range(2):
            servers.append(start_server(env, tmp_path, ready_timeout=60))
            clients.append(httpx.Client(base_url=servers[-1].url, timeout=10))
        size = clients[0].get(f"/v1/models/{MODEL}").json()["input"]["size"]
        inputs = sequence(40, size, seed=11)
        sid = _create(clients[0])
        # strictly alternating, then runs of 3 on one replica before moving
        route = [i % 2 for i in range(12)] + [(i // 3) % 2 for i in range(28)]
        got: list[list[float]] = []
        for i, r in enumerate(route):
            got += _step(clients[r], sid, inputs[i : i + 1], offset=i)["outputs"]
            if i in (5, 20, 33):
                # the client retries the same request on the other replica: a replay
                again = _step(clients[1 - r], sid, inputs[i : i + 1], offset=i)
                assert again["replayed"] and again["outputs"] == got[-1:]
        want = _reference(servers[0], inputs)
        np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL)

        # replica 0 stepped 36-38 last, replica 1 then 39: replica 0's copy says 39 steps
        # with the request at 38 last, so it would call a retry of 38 a replay
        assert route[36:] == [0, 0, 0, 1]
        old = clients[0].post(
            f"/v1/sessions/{sid}/step", json={"inputs": inputs[38:39], "offset": 38}
        )
        assert old.status_code == 409, old.text
        assert old.json()["steps"] == len(inputs)
        for c in clients:
            assert c.get(f"/v1/sessions/{sid}").json()["steps"] == len(inputs)
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop()
