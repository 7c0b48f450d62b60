"""The server wrapper: the collector is tuned once the lifespan startup is complete, and
the lifespan shutdown waits for the HTTP requests in flight."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from starlette.types import Message

from service.http.server import GC_YOUNG_THRESHOLD, ServedApp


async def test_startup_freezes_what_it_built_so_full_collections_skip_it() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    gc.unfreeze()
    threshold = gc.get_threshold()
    assert threshold[0] != GC_YOUNG_THRESHOLD
    try:
        await ServedApp(app, 1.0)({"type": "lifespan"}, receive, send)
        assert sent == [{"type": "lifespan.startup.complete"}]
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_lifespan_shutdown_waits_for_requests_in_flight() -> None:
    release = asyncio.Event()
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await release.wait()
            events.append("request done")
        else:
            await receive()
            events.append("shutdown")

    async def nothing() -> Message:
        return {}

    async def shutdown() -> Message:
        return {"type": "lifespan.shutdown"}

    async def ignore(message: Message) -> None:
        pass

    served = ServedApp(app, 10.0)
    request = asyncio.create_task(served({"type": "http"}, nothing, ignore))
    await asyncio.sleep(0)
    assert served.in_flight == 1
    lifespan = asyncio.create_task(served({"type": "lifespan"}, shutdown, ignore))
    await asyncio.sleep(0.05)
    assert events == []  # the shutdown waits
    release.set()
    await asyncio.gather(request, lifespan)
    assert events == ["request done", "shutdown"] and served.in_flight == 0


async def test_the_wait_is_bounded_by_the_graceful_timeout() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asyncio.Event().wait()
        else:
            await receive()

    async def shutdown() -> Message:
        return {"type": "lifespan.shutdown"}

    async def ignore(message: Message) -> None:
        pass

    async def nothing() -> Message:
        return {}

    served = ServedApp(app, 0.05)
    stuck = asyncio.create_task(served({"type": "http"}, nothing, ignore))
    await asyncio.sleep(0)
    await asyncio.wait_for(served({"type": "lifespan"}, shutdown, ignore), 5)
    stuck.cancel()
