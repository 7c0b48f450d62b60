"""``lstm-serve serve`` freezes its start-up heap for the garbage collector and collects
young objects less often."""

from __future__ import annotations

import asyncio
import gc

from fastapi import FastAPI

from service.http.server import GC_YOUNG_THRESHOLD, GracefulServer, server_config


async def test_startup_freezes_what_it_built_so_full_collections_skip_it() -> None:
    app = FastAPI()
    server = GracefulServer(server_config(app, "127.0.0.1", 0, 1), app)
    gc.unfreeze()
    threshold = gc.get_threshold()
    assert threshold[0] != GC_YOUNG_THRESHOLD
    running = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        server.should_exit = True
        await running
        gc.unfreeze()
        gc.set_threshold(*threshold)
