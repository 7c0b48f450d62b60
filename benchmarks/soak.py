"""A short soak: minutes of mixed traffic against one server, watching its memory.

Starts ``python -m service.cli serve`` on a free port (the bundled models; the memory
session store, or Redis with ``--store redis://...``), then runs a bounded asyncio load
generator (``--concurrency`` workers) for ``--seconds``. Each worker loops over a weighted
mix of what clients do:

- session lifecycle: create, a few steps with offsets (features or text), sometimes the
  state, a fork (deleted again) or a non-advancing generate, then delete;
- predict: a ragged batch of weather sequences, or text for the language model;
- generate: a forecast, or streamed text over SSE (read to the ``end`` event);
- WebSocket stream: a session stepped frame by frame over ``/v1/sessions/{id}/stream``.

Every few seconds it samples the server's resident set size (``VmRSS`` of the process and
its children, from ``/proc``) and prints one row. The verdict compares the mean RSS over
the last third of the run with the first sample after ``--warmup`` seconds: the growth
must stay under ``--max-growth-mib``. It also requires no unexpected answers and no
sessions left behind. Exit status 0 on PASS, 1 on FAIL.

Usage: ``.venv/bin/python benchmarks/soak.py [--seconds 180] [--store redis://...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[1]
WEATHER = "weather_lstm"
TEMPS = "temps_gru"
TEXT = "pydoc_char_lstm"
WORDS = [
    "def",
    "class",
    "return",
    "import",
    "yield",
    "lambda",
    "with",
    "open",
    "the",
    "statement",
    "value",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` and its descendants, in MiB (Linux ``/proc``)."""
    total_kib, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total_kib / 1024


@dataclass
class Stats:
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors[what] += 1
        if len(self.samples) < 5:
            self.samples.append(what)


class UnexpectedAnswer(Exception):
    pass


def expect(r: httpx.Response, status: int) -> Any:
    if r.status_code != status:
        raise UnexpectedAnswer(
            f"{r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:200]}"
        )
    return orjson.loads(r.content) if r.content else None


def rows(rng: random.Random, n: int, size: int) -> list[list[float]]:
    base = [3.0, 16.0, 8.0, 3.3] if size == 4 else [16.0, 8.0]
    return [[round(b + rng.gauss(0, 2), 3) for b in base] for _ in range(n)]


def phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + " "


class Traffic:
    """The operations of the mix, each one bounded and cleaning up after itself."""

    def __init__(self, http: httpx.AsyncClient, ws_base: str, stats: Stats) -> None:
        self.http, self.ws_base, self.stats = http, ws_base, stats

    async def session(self, rng: random.Random) -> None:
        model = rng.choice([WEATHER, TEMPS, TEXT])
        body = expect(await self.http.post("/v1/sessions", json={"model": model}), 201)
        sid, offset = body["id"], 0
        try:
            for _ in range(rng.randint(3, 8)):
                n = rng.randint(1, 4)
                step: dict[str, Any] = (
                    {"text": phrase(rng, 1)[:n]}
                    if model == TEXT
                    else {"inputs": rows(rng, n, 4 if model == WEATHER else 2)}
                )
                step["offset"] = offset
                r = await self.http.post(f"/v1/sessions/{sid}/step", json=step)
                offset = expect(r, 200)["steps"]
            extra = rng.random()
            if extra < 0.2:
                expect(await self.http.get(f"/v1/sessions/{sid}/state"), 200)
            elif extra < 0.35:
                fork = expect(await self.http.post(f"/v1/sessions/{sid}/fork", json={}), 201)
                expect(await self.http.delete(f"/v1/sessions/{fork['id']}"), 204)
            elif extra < 0.5 and model != TEXT:
                r = await self.http.post(f"/v1/sessions/{sid}/generate", json={"steps": 5})
                expect(r, 200)
        finally:
            expect(await self.http.delete(f"/v1/sessions/{sid}"), 204)

    async def predict(self, rng: random.Random) -> None:
        if rng.random() < 0.6:
            batch = [rows(rng, rng.randint(5, 60), 4) for _ in range(rng.randint(1, 8))]
            r = await self.http.post(f"/v1/models/{WEATHER}/predict", json={"inputs": batch})
        else:
            r = await self.http.post(
                f"/v1/models/{TEXT}/predict", json={"text": phrase(rng, rng.randint(2, 10))}
            )
        expect(r, 200)

    async def generate(self, rng: random.Random) -> None:
        if rng.random() < 0.5:
            body = {"context": rows(rng, 14, 4), "steps": 7}
            expect(await self.http.post(f"/v1/models/{WEATHER}/generate", json=body), 200)
            return
        body = {
            "context": phrase(rng, 3),
            "steps": rng.randint(20, 60),
            "temperature": 0.8,
            "seed": rng.randint(0, 1 << 30),
            "stream": True,
        }
        async with self.http.stream("POST", f"/v1/models/{TEXT}/generate", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                expect(r, 200)
            ended = False
            async for line in r.aiter_lines():
                ended = ended or line == "event: end"
            if not ended:
                raise UnexpectedAnswer("SSE generation ended without an end event")

    async def stream(self, rng: random.Random) -> None:
        body = expect(await self.http.post("/v1/sessions", json={"model": WEATHER}), 201)
        sid = body["id"]
        try:
            async with connect(f"{self.ws_base}/v1/sessions/{sid}/stream") as ws:
                offset = 0
                for _ in range(rng.randint(5, 15)):
                    n = rng.randint(1, 3)
                    frame = {"inputs": rows(rng, n, 4), "offset": offset}
                    await ws.send(orjson.dumps(frame).decode())
                    reply = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                    if reply.get("steps") != offset + n:
                        raise UnexpectedAnswer(f"stream frame answered {str(reply)[:200]}")
                    offset += n
        finally:
            expect(await self.http.delete(f"/v1/sessions/{sid}"), 204)


MIX = (("session", 35), ("predict", 25), ("generate", 15), ("stream", 25))


async def worker(traffic: Traffic, seed: int, deadline: float, stats: Stats) -> None:
    rng = random.Random(seed)
    names = [n for n, _ in MIX]
    weights = [w for _, w in MIX]
    while time.monotonic() < deadline:
        name = rng.choices(names, weights)[0]
        try:
            await getattr(traffic, name)(rng)
            stats.ops[name] += 1
        except (UnexpectedAnswer, httpx.HTTPError, OSError, TimeoutError) as exc:
            stats.error(f"{name}: {type(exc).__name__}: {exc}")


@dataclass
class Sample:
    t: float
    rss: float
    ops: int
    errors: int
    sessions: int


async def live_sessions(http: httpx.AsyncClient) -> int:
    text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("lstm_serve_sessions_active "):
            return int(float(line.split()[1]))
    return -1


async def sampler(
    http: httpx.AsyncClient, pid: int, stats: Stats, every: float, deadline: float
) -> list[Sample]:
    start = time.monotonic()
    samples: list[Sample] = []
    last_ops, last_t = 0, start
    print(f"{'t (s)':>6} {'RSS (MiB)':>10} {'ops':>7} {'ops/s':>6} {'errors':>6} {'sessions':>8}")
    while True:
        now = time.monotonic()
        ops = sum(stats.ops.values())
        s = Sample(now - start, rss_mib(pid), ops, sum(stats.errors.values()), -1)
        with contextlib.suppress(httpx.HTTPError):
            s.sessions = await live_sessions(http)
        rate = (ops - last_ops) / max(1e-9, now - last_t)
        last_ops, last_t = ops, now
        samples.append(s)
        print(f"{s.t:6.0f} {s.rss:10.1f} {s.ops:7d} {rate:6.1f} {s.errors:6d} {s.sessions:8d}")
        if now >= deadline:
            return samples
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))


def start_server(store: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LSTM_SERVE_SESSION_STORE": store}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server not ready after 60 s; see {log_path}")


def verdict(samples: list[Sample], seconds: float, warmup: float, max_growth: float) -> bool:
    after = [s for s in samples if s.t >= warmup]
    tail = [s for s in samples if s.t >= seconds * 2 / 3]
    if not after or not tail:
        print("VERDICT: FAIL (too few samples; run longer than the warm-up)")
        return False
    base = after[0]
    tail_mean = sum(s.rss for s in tail) / len(tail)
    growth = tail_mean - base.rss
    n = len(after)
    mean_t = sum(s.t for s in after) / n
    mean_r = sum(s.rss for s in after) / n
    var_t = sum((s.t - mean_t) ** 2 for s in after) or 1.0
    slope = sum((s.t - mean_t) * (s.rss - mean_r) for s in after) / var_t * 60
    print(
        f"RSS after warm-up (t={base.t:.0f}s): {base.rss:.1f} MiB; "
        f"mean of the last third ({len(tail)} samples, t>={seconds * 2 / 3:.0f}s): "
        f"{tail_mean:.1f} MiB; growth {growth:+.1f} MiB ({growth / base.rss * 100:+.1f}%); "
        f"trend after warm-up {slope:+.2f} MiB/min; peak {max(s.rss for s in samples):.1f} MiB"
    )
    ok = growth < max_growth
    print(f"memory: {'PASS' if ok else 'FAIL'} (growth {growth:+.1f} < {max_growth} MiB)")
    return ok


async def soak(args: argparse.Namespace, pid: int, url: str) -> bool:
    stats = Stats()
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        traffic = Traffic(http, url.replace("http://", "ws://", 1), stats)
        start = time.monotonic()
        deadline = start + args.seconds
        workers = [
            asyncio.create_task(worker(traffic, args.seed + i, deadline, stats))
            for i in range(args.concurrency)
        ]
        samples = await sampler(http, pid, stats, args.sample_every, deadline)
        await asyncio.gather(*workers)
        elapsed = time.monotonic() - start
        left = await live_sessions(http)
        listed = len(expect(await http.get("/v1/sessions"), 200)["sessions"])

    total = sum(stats.ops.values())
    print()
    mix = ", ".join(f"{k} {v}" for k, v in sorted(stats.ops.items()))
    print(f"operations: {total} in {elapsed:.0f} s ({total / elapsed:.1f}/s): {mix}")
    print(f"unexpected answers: {sum(stats.errors.values())}")
    for line in stats.samples:
        print(f"  {line}")
    print(f"sessions left: {listed} listed, {left} active by /metrics")
    ok = verdict(samples, args.seconds, args.warmup, args.max_growth_mib)
    ok = ok and not stats.errors and listed == 0 and left in (0, -1)
    print(f"VERDICT: {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the run")
    parser.add_argument("--warmup", type=float, help="seconds before the baseline sample")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between rows")
    parser.add_argument("--concurrency", type=int, default=8, help="load generator workers")
    parser.add_argument("--store", default="memory", help="'memory' or a redis:// URL")
    parser.add_argument("--max-growth-mib", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(30.0, args.seconds / 6)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        log_path = Path(tmp) / "server.log"
        proc, url = start_server(args.store, log_path)
        print(
            f"soak: {args.seconds:.0f} s, {args.concurrency} workers, store {args.store}, "
            f"server pid {proc.pid} at {url}, warm-up {args.warmup:.0f} s"
        )
        try:
            ok = asyncio.run(soak(args, proc.pid, url))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.returncode not in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM
            print(f"server exited with {proc.returncode}:")
            print(log_path.read_text(errors="replace")[-2000:])
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
