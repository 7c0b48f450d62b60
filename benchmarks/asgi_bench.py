"""The event loop's CPU per request, in-process: the app called as ASGI, no HTTP server.

``python -m benchmarks.asgi_bench [--requests N] [--concurrency C] [--rounds R] [--log]``

It builds the app with ``create_app`` (defaults: the model in its child process; the
access log off unless ``--log``; no gRPC port), runs its lifespan, creates 1000 sessions
and calls the app directly from ``--concurrency`` coroutines, case after case, round
after round (every other round in reverse order):

- ``step``: ``POST /v1/sessions/{id}/step`` through the whole app (middleware stack,
  router, endpoint), as the HTTP server hands it over;
- ``step, endpoint alone``: the same step handed straight to the app's step route
  (``Route.matches`` and ``Route.handle``), skipping the middleware stack and the
  router's search: a reference row for what they cost;
- ``predict``: ``/v1`` predict of one 24-step sequence (the last step's outputs), and
  ``predict, all steps`` with ``"return": "all"``;
- ``v2``: ``/v2`` JSON infer of the same sequence naming no outputs (all of them, the
  final states too), and ``v2, OUTPUT`` naming ``OUTPUT`` (the 24 steps' outputs, as
  ``predict, all steps`` answers).

Per case: requests per second and the CPU time of the event-loop thread per request
(``time.thread_time``: the model process is not in it). What an HTTP server adds (socket
I/O, parsing, its threads) is in ``benchmarks.bench``, not here; without it, a change's
cost on the loop shows with less of this machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Scope

Call = tuple[str, str, bytes]
"""A request: method, path, body."""

SESSIONS = 1000
STEPS = 24


@dataclass
class Case:
    name: str
    request: Callable[[int], Call]
    direct: Route | None = None
    """The app's route to hand the request to, past the middleware stack and the router."""
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


class Client:
    """Calls an ASGI app in-process, whole or one of its routes alone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._idle = asyncio.Event()  # never set: a second receive() waits, as on a socket

    async def call(
        self,
        method: str,
        path: str,
        body: bytes,
        direct: Route | None = None,
        expect: int = 200,
    ) -> bytes:
        status = 0
        chunks: list[bytes] = []
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self._idle.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                chunks.append(message.get("body", b""))

        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        if direct is not None:
            match, child = direct.matches(scope)  # the path parameters, as the router finds them
            if match != Match.FULL:
                raise RuntimeError(f"{method} {path} is not {direct.path}")
            scope.update(child, app=self.app)
            await direct.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {b''.join(chunks)[:300]!r}")
        return b"".join(chunks)


def cases(ids: list[str], step_route: Route) -> list[Case]:
    from service.oip.tensors import INPUT, OUTPUT

    seq = [[10.5 + 0.1 * t, 60.5, 1000.5, 5.5] for t in range(STEPS)]
    flat = [v for row in seq for v in row]
    step = orjson.dumps({"inputs": [seq[0]]})
    predict = orjson.dumps({"inputs": seq})
    predict_all = orjson.dumps({"inputs": seq, "return": "all"})
    tensor = {"name": INPUT, "datatype": "FP32", "shape": [1, STEPS, 4], "data": flat}
    v2 = orjson.dumps({"inputs": [tensor]})
    v2_output = orjson.dumps({"inputs": [tensor], "outputs": [{"name": OUTPUT}]})
    predict_path = "/v1/models/weather_lstm/predict"
    v2_path = "/v2/models/weather_lstm/infer"

    def stepping(i: int) -> Call:
        return "POST", f"/v1/sessions/{ids[i % len(ids)]}/step", step

    def posting(path: str, body: bytes) -> Callable[[int], Call]:
        return lambda i: ("POST", path, body)

    return [
        Case("step", stepping),
        Case("step, endpoint alone", stepping, direct=step_route),
        Case("predict", posting(predict_path, predict)),
        Case("predict, all steps", posting(predict_path, predict_all)),
        Case("v2", posting(v2_path, v2)),
        Case("v2, OUTPUT", posting(v2_path, v2_output)),
    ]


async def drive(client: Client, case: Case, requests: int, concurrency: int) -> None:
    """``requests`` calls of ``case`` from ``concurrency`` coroutines; records the rate and
    the loop thread's CPU per request."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            method, path, body = case.request(left)
            await client.call(method, path, body, case.direct)

    t0, c0 = time.perf_counter(), time.thread_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    case.rates.append(requests / wall)
    case.cpu_us.append(cpu / requests * 1e6)


async def run(args: argparse.Namespace) -> list[Case]:
    from service.http.app import create_app
    from service.http.v1.step import ROUTE
    from service.settings import Settings

    settings = Settings(request_log=args.log, grpc_port=0, max_sessions=100_000)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        client = Client(app)
        step_route = next(r for r in app.router.routes if isinstance(r, Route) and r.path == ROUTE)
        body = orjson.dumps({"model": "weather_lstm"})
        ids: list[str] = []
        for _ in range(SESSIONS):
            created: dict[str, Any] = orjson.loads(
                await client.call("POST", "/v1/sessions", body, expect=201)
            )
            ids.append(str(created["id"]))
        todo = cases(ids, step_route)
        for case in todo:  # warm-up, not recorded
            await drive(client, case, min(2000, args.requests), args.concurrency)
            case.rates.clear()
            case.cpu_us.clear()
        for r in range(args.rounds):
            for case in todo if r % 2 == 0 else todo[::-1]:
                await drive(client, case, args.requests, args.concurrency)
    return todo


def report(todo: list[Case], args: argparse.Namespace) -> None:
    print(
        f"in-process ASGI calls, concurrency {args.concurrency}, {args.requests:,} requests "
        f"per case and round, {args.rounds} rounds, access log {'on' if args.log else 'off'}"
    )
    print(f"{'case':<24} {'req/s':>9} {'loop CPU us/req':>16}  rounds (us/req)")
    for case in todo:
        rounds = " ".join(f"{v:.1f}" for v in case.cpu_us)
        rate = statistics.median(case.rates)
        cpu = statistics.median(case.cpu_us)
        print(f"{case.name:<24} {rate:>9,.0f} {cpu:>16.1f}  {rounds}")
    by = {c.name: c for c in todo}
    for a, b in (
        ("step, endpoint alone", "step"),
        ("v2", "predict"),
        ("v2, OUTPUT", "predict, all steps"),
    ):
        per_round = [x / y for x, y in zip(by[a].rates, by[b].rates, strict=True)]
        shown = " ".join(f"{v:.2f}" for v in per_round)
        print(f"req/s, {a} / {b}: {statistics.median(per_round):.2f}  (rounds: {shown})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.asgi_bench")
    parser.add_argument("--requests", type=int, default=10_000, help="per case and round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log", action="store_true", help="access log on (to stderr)")
    args = parser.parse_args(argv)
    report(uvloop.run(run(args)), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
