"""The access log: one JSON line per request with its fields in order, none lost under a
burst, no query string or credential in it, and lines over the queue's bound counted."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from service.http.access_log import AccessLog
from service.http.app import create_app
from service.metrics import Metrics
from service.settings import Settings

FIELDS = [
    "ts",
    "level",
    "logger",
    "msg",
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
]


@pytest.fixture
def access_info() -> Iterator[None]:
    """The access logger at INFO, as ``lstm-serve serve`` runs it by default."""
    logger = logging.getLogger("service.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


def _access_lines(err: str) -> list[dict[str, object]]:
    docs = [orjson.loads(line) for line in err.splitlines() if '"service.access"' in line]
    return [d for d in docs if d["logger"] == "service.access"]


async def test_burst_every_line_valid_in_order_none_lost(
    tiny_store: Path, access_info: None, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(Settings(model_store=tiny_store, model_process=False))
    sent: list[tuple[str, str]] = []  # (request id given, path as logged)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post("/v1/sessions", json={"model": "tiny_lstm"})
            sid = r.json()["id"]
            capsys.readouterr()

            async def one(i: int) -> None:
                rid = f"burst-{i}"
                kind = i % 4
                if kind == 0:
                    path, url = f"/v1/sessions/{sid}/step", f"/v1/sessions/{sid}/step"
                    resp = await c.post(
                        url, json={"inputs": [[0.5] * 3]}, headers={"X-Request-ID": rid}
                    )
                elif kind == 1:
                    path, url = "/healthz", "/healthz?api_key=sekrit-query"
                    resp = await c.get(url, headers={"X-Request-ID": rid})
                elif kind == 2:
                    path = "/v1/sessions/token=[redacted]"  # the rest of the segment goes too
                    resp = await c.post(
                        "/v1/sessions/token=sekrit-path/step",
                        json={"inputs": [[0.5] * 3]},
                        headers={"X-Request-ID": rid},
                    )
                else:
                    path, url = "/nowhere", "/nowhere"
                    resp = await c.get(url, headers={"X-Request-ID": rid})
                assert resp.headers["x-request-id"] == rid
                sent.append((rid, path))

            await asyncio.gather(*(one(i) for i in range(400)))
    err = capsys.readouterr().err  # the lifespan's end wrote what was queued
    assert "sekrit" not in err
    # the create's line may come before or after the capture was reset
    lines = [d for d in _access_lines(err) if str(d["request_id"]).startswith("burst-")]
    assert len(lines) == len(sent) == 400
    for doc in lines:
        assert list(doc) == FIELDS
        assert doc["level"] == "info" and doc["msg"] == "request"
        assert isinstance(doc["status"], int) and isinstance(doc["duration_ms"], float)
    logged = {d["request_id"]: d for d in lines}
    assert len(logged) == 400
    for rid, path in sent:
        doc = logged[rid]
        assert doc["path"] == path
        i = int(rid.split("-")[1])
        want = [
            (200, "POST", "/v1/sessions/{session_id}/step"),
            (200, "GET", "/healthz"),
            (404, "POST", "/v1/sessions/{session_id}/step"),
            (404, "GET", "unmatched"),
        ][i % 4]
        assert (doc["status"], doc["method"], doc["route"]) == want


async def test_off_when_the_access_logger_is_above_info(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("service.access")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        app = create_app(Settings(model_store=tiny_store, model_process=False))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                assert (await c.get("/healthz")).status_code == 200
    finally:
        logger.setLevel(level)
    assert _access_lines(capsys.readouterr().err) == []


class BlockedStream:
    """A binary stream whose first write blocks until released, as a stalled pipe does."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.data = b""

    def write(self, data: bytes) -> int:
        self.entered.set()
        self.release.wait(30)
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass


def test_lines_over_the_bound_are_counted_as_dropped() -> None:
    metrics = Metrics()
    stream = BlockedStream()
    log = AccessLog(metrics, stream, bound=8)  # type: ignore[arg-type]

    def line(i: int) -> None:
        log.write(
            f"id-{i}", "POST", "/v1/sessions/s/step", "/v1/sessions/{session_id}/step", 200, 0.001
        )

    line(0)
    assert stream.entered.wait(10)  # the writer took line 0 and is stuck writing it
    for i in range(1, 50):
        line(i)  # 8 wait in the queue, 41 are dropped
    assert metrics.registry.get_sample_value("lstm_serve_access_log_dropped_total") == 41
    assert b"lstm_serve_access_log_dropped_total 41.0" in metrics.render()
    stream.release.set()
    log.close()
    written = [orjson.loads(x) for x in stream.data.splitlines()]
    assert [d["request_id"] for d in written] == [f"id-{i}" for i in range(9)]
