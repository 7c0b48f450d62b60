"""The raw HTTP floor: a minimal Starlette route with the step route's shape and no model.

It reads and parses the same JSON body as ``POST /v1/sessions/{id}/step``, keeps a step
count per session id, and answers a step-shaped reply (``id``, ``steps``, one output per
input step) encoded with orjson, on stock uvicorn (uvloop + httptools). What the service
spends above this is the price of the model, sessions, validation and its HTTP server.
``--server granian`` serves the same app on Granian with the service's own server
configuration (``service.http.server.server_for``, default settings): the floor of the
service's HTTP server. Run:
``python benchmarks/floor_app.py --port 8101 [--server granian]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.http.server import server_for
from service.settings import Settings

_steps: dict[str, int] = {}


async def step(request: Request) -> Response:
    session_id: str = request.path_params["session_id"]
    body: dict[str, Any] = orjson.loads(await request.body())
    inputs: list[list[float]] = body["inputs"]
    steps = _steps.get(session_id, 0) + len(inputs)
    _steps[session_id] = steps
    reply = {"id": session_id, "steps": steps, "outputs": [list(row) for row in inputs]}
    return Response(orjson.dumps(reply), media_type="application/json")


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/v1/sessions/{session_id}/step", step, methods=["POST"]),
        Route("/readyz", health),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    args = parser.parse_args()
    if args.server == "granian":
        uvloop.run(_granian(args.host, args.port))
        return
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


async def _granian(host: str, port: int) -> None:
    """Serve ``app`` on the service's Granian server until the process is stopped."""
    await server_for(app, Settings(), host, port).serve()


if __name__ == "__main__":
    main()
