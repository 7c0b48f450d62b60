"""The web console at ``/ui`` and the two JSON routes it reads besides the ``/v1`` API.

- ``GET /ui``: the single page (``static/index.html``); its scripts and stylesheet under
  ``/ui/static``, and the charting library, ``plotly.min.js`` as the installed ``plotly``
  package ships it, at ``/ui/vendor/plotly.min.js``. Nothing is loaded from another host;
  the page's Content-Security-Policy forbids it. The page and its files hold no data and
  need no key.
- ``GET /v1/metrics``: this replica's Prometheus registry as JSON (every family and
  sample, read through ``prometheus_client``'s public ``collect()``), with readiness: what
  the console's overview plots. It passes the gate like every ``/v1`` route.
- ``GET /v1/models/{name}/sample``: the held-out rows a model version ships (the
  manifest's ``sample_file``), for the forecast playground. Through the gate as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, RedirectResponse, Response

from service.errors import InvalidInput, ModelNotFound, StoreUnavailable
from service.http.deps import Core, Owner
from service.http.health import readiness
from service.http.state import AppState
from service.http.v1.schemas import PROBLEM_RESPONSES
from service.models.manifest import is_version_number

STATIC = Path(__file__).resolve().parent / "static"
UI_URL = "/ui"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' ws: wss:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this origin: the console makes no request to any other host (plotly draws with
inline styles, so those are allowed)."""


REPLICA = f"{socket.gethostname()}:{os.getpid()}"
"""Which process answered: behind a load balancer each poll may reach another replica."""


def plotly_js() -> Path:
    """``plotly.min.js`` from the installed ``plotly`` package's data."""
    return Path(str(files("plotly") / "package_data" / "plotly.min.js"))


router = APIRouter(responses=PROBLEM_RESPONSES)


@router.get(UI_URL, include_in_schema=False)
async def console_page() -> Response:
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get(UI_URL + "/", include_in_schema=False)
async def console_slash() -> Response:
    return RedirectResponse("../ui", status_code=308)


@router.get(UI_URL + "/vendor/plotly.min.js", include_in_schema=False)
async def plotly_bundle() -> Response:
    return FileResponse(
        plotly_js(),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=86400"},
    )


def _number(value: float) -> float | str:
    """JSON has no infinities or NaN: Prometheus' ``+Inf`` bucket bound and the like as text."""
    return value if math.isfinite(value) else str(value)


def registry_snapshot(core: AppState) -> list[dict[str, Any]]:
    """Every metric family of this replica's registry as plain JSON values."""
    families = []
    for family in core.metrics.registry.collect():
        families.append(
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": _number(s.value)}
                    for s in family.samples
                ],
            }
        )
    return families


@router.get("/v1/metrics", tags=["health"])
async def metrics_json(core: Core, owner: Owner) -> Response:
    """This replica's metrics as JSON, with its readiness (models, session store)."""
    with contextlib.suppress(StoreUnavailable):
        core.metrics.sessions_active.set(await core.store.count())
    _, ready = await readiness(core)
    body = {
        "replica": REPLICA,
        "time": time.time(),
        "ready": ready,
        "model_process": core.settings.model_process,
        "metrics": registry_snapshot(core),
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/v1/models/{name}/sample", tags=["models"])
async def model_sample(core: Core, owner: Owner, name: str, version: str | None = None) -> Response:
    """The real held-out rows a forecasting model version ships (``{"names", "times",
    "values"}`` in the data's units); 404 ``model_not_found`` for a version without one."""
    if version is not None and not is_version_number(version):
        raise InvalidInput("version must be a positive integer")
    model = core.registry.get(name, int(version) if version is not None else None)
    file_name = model.manifest.sample_file
    if file_name is None:
        raise ModelNotFound(f"model {name!r} version {model.version} ships no held-out sample")
    path = model.onnx_path.parent / file_name
    try:
        raw = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise ModelNotFound(
            f"model {name!r} version {model.version}: its sample file is missing"
        ) from exc
    doc = orjson.loads(raw)
    doc |= {"model": model.name, "version": model.version}
    return Response(orjson.dumps(doc), media_type="application/json")


def mount_console(app: FastAPI) -> None:
    """Add the console page, its files and its JSON routes to ``app``."""
    app.include_router(router)
    app.mount(UI_URL + "/static", StaticFiles(directory=STATIC), name="console-static")
