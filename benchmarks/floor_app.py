"""The raw HTTP floor: a minimal Starlette route with the step route's shape and no model.

It reads and parses the same JSON body as ``POST /v1/sessions/{id}/step``, keeps a step
count per session id, and answers a step-shaped reply (``id``, ``steps``, one output per
input step) encoded with orjson, under the same uvicorn (uvloop + httptools) as the
service. What the service spends above this is the price of the model, sessions and
validation. Run: ``python benchmarks/floor_app.py --port 8101``.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
