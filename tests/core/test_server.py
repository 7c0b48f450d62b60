"""Process-level settings of ``lstm-serve serve``: the garbage collector."""

from __future__ import annotations

import asyncio
import gc

import pytest
from fastapi import FastAPI

from service.server import GC_THRESHOLDS, GracefulServer, serve, server_config


async def test_startup_freezes_what_it_built_so_full_collections_skip_it() -> None:
    app = FastAPI()
    server = GracefulServer(server_config(app, "127.0.0.1", 0, 1), app)
    gc.unfreeze()
    running = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        assert gc.get_freeze_count() > 10_000
    finally:
        server.should_exit = True
        await running
        gc.unfreeze()


def test_serve_raises_the_collection_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []

    def run(self: GracefulServer) -> None:
        seen.append(gc.get_threshold())

    before = gc.get_threshold()
    monkeypatch.setattr(GracefulServer, "run", run)
    try:
        serve(FastAPI(), "127.0.0.1", 0, 1)
    finally:
        gc.set_threshold(*before)
    assert seen == [GC_THRESHOLDS] and GC_THRESHOLDS[0] > before[0]
