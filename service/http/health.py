"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from service.errors import StoreUnavailable
from service.http.deps import Core
from service.http.v1.schemas import json_response

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz() -> Response:
    return json_response({"status": "ok"})


async def readiness(core: Core) -> tuple[bool, dict[str, object]]:
    models_ok = core.registry.ready
    try:
        await core.store.ping()
        store_ok = True
    except StoreUnavailable:
        store_ok = False
    ready = models_ok and store_ok and not core.draining
    return ready, {
        "status": "ready" if ready else "not_ready",
        "models": models_ok,
        "session_store": store_ok,
        "draining": core.draining,
    }


@router.get("/readyz", tags=["health"])
async def readyz(core: Core) -> Response:
    ready, body = await readiness(core)
    if ready:
        return json_response(body)
    return json_response(body, 503, {"Retry-After": "1"})


@router.get(
    "/metrics",
    tags=["health"],
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(core: Core) -> Response:
    with contextlib.suppress(StoreUnavailable):
        core.metrics.sessions_active.set(await core.store.count())
    return Response(core.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
