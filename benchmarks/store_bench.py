"""The session store's cost per step, in-process: ``SessionManager.advance`` on each store.

``python -m benchmarks.store_bench [--redis URL] [--topologies ...] [--seconds S] [--rounds R]``

Without ``--redis`` it starts a private ``redis-server`` on a free port (nothing on disk)
and stops it afterwards; it never writes to a Redis it did not start unless given one.
``--topologies cluster sentinel`` adds a private Redis Cluster (3 primaries, 3 replicas)
and a primary with one replica behind three sentinels (``tests/redis_topologies.py``), each
also with ``WAIT 1`` after every write (``cluster+wait1``, ``sentinel+wait1``).
Coroutines step sessions round-robin through one ``SessionManager`` (the model on a
thread, as ``LSTM_SERVE_MODEL_PROCESS=false``), at concurrency 1 and 64, the memory store
and the Redis store taking turns round after round. Per case it prints steps per second,
the median step latency and the CPU time per step of this process and of the Redis
server (from ``/proc/<pid>/stat``), and the ratio Redis / memory measured in the same run.
No HTTP: what is left is the store, the manager and the model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

REPO = Path(__file__).resolve().parent.parent


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_pid(url: str) -> int | None:
    """The pid of the Redis server at ``url`` when it runs on this machine."""
    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return pid if Path(f"/proc/{pid}").exists() else None


@dataclass
class Case:
    store: str
    concurrency: int
    steps: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    redis_cpu: float = 0.0
    latencies: list[float] | None = None

    def row(self) -> str:
        lat = self.latencies or [0.0]
        rate = self.steps / self.seconds if self.seconds else 0.0
        per = 1e6 / self.steps if self.steps else 0.0
        return (
            f"{self.store:<14} c{self.concurrency:<4} {rate:>9,.0f} steps/s  "
            f"p50 {statistics.median(lat) * 1e3:7.3f} ms  "
            f"CPU/step: server {self.cpu * per:6.1f} us, redis {self.redis_cpu * per:6.1f} us"
        )


async def drive(
    manager: object, ids: list[str], x: np.ndarray, conc: int, seconds: float, case: Case
) -> None:
    from service.sessions.manager import SessionManager

    assert isinstance(manager, SessionManager)
    lat: list[float] = case.latencies if case.latencies is not None else []
    case.latencies = lat
    stop = time.perf_counter() + seconds
    n = 0

    async def worker(w: int) -> None:
        nonlocal n
        i = w
        while time.perf_counter() < stop:
            sid = ids[i % len(ids)]
            i += conc
            t = time.perf_counter()
            await manager.advance("bench", sid, x)
            lat.append(time.perf_counter() - t)
            n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    case.seconds += time.perf_counter() - t0
    case.steps += n


async def run(args: argparse.Namespace, url: str, more: dict[str, str]) -> None:
    """Memory, the Redis at ``url``, and each of ``more`` (name -> store URL; a name
    ending in ``+wait1`` waits for one replica after every write)."""
    from service.inference.runner import Runner
    from service.models.registry import ModelRegistry
    from service.sessions.manager import SessionManager
    from service.sessions.memory import MemoryStore
    from service.sessions.redis_store import RedisStore
    from service.sessions.store import SessionStore
    from service.settings import Settings

    settings = Settings(request_log=False, max_sessions=1_000_000)
    registry = ModelRegistry(settings.model_store, 1)
    registry.load()
    model = registry.get(args.model)
    runner = Runner(process=False)
    rpid = redis_pid(url)
    prefix = f"bench:{uuid.uuid4().hex}:"
    stores: dict[str, SessionStore] = {
        "memory": MemoryStore(),
        "redis": RedisStore.from_url(url, prefix=prefix, **args.store_options),
    }
    for name, other in more.items():
        wait = 1 if name.endswith("+wait1") else 0
        stores[name] = RedisStore.from_url(other, prefix=prefix, wait_replicas=wait)
    managers = {k: SessionManager(s, registry, runner, settings) for k, s in stores.items()}
    ids: dict[str, list[str]] = {}
    for name, manager in managers.items():
        ids[name] = [(await manager.create("bench", model.name)).id for _ in range(args.sessions)]
    size = model.manifest.input.size  # type: ignore[union-attr]
    x = np.full((1, size), 0.5, dtype=np.float32)
    cases = {(s, c): Case(s, c) for c in args.concurrency for s in managers}
    for name, manager in managers.items():  # warm-up
        await drive(manager, ids[name], x, 16, 0.5, Case(name, 16))
    me = os.getpid()
    for _ in range(args.rounds):
        for c in args.concurrency:
            for name, manager in managers.items():
                case = cases[(name, c)]
                cpu0 = proc_cpu_seconds(me)
                r0 = proc_cpu_seconds(rpid) if rpid and name == "redis" else 0.0
                await drive(manager, ids[name], x, c, args.seconds / args.rounds, case)
                case.cpu += proc_cpu_seconds(me) - cpu0
                if rpid and name == "redis":
                    case.redis_cpu += proc_cpu_seconds(rpid) - r0
    for c in args.concurrency:
        mem = cases[("memory", c)]
        print(mem.row())
        for name in managers:
            if name == "memory":
                continue
            red = cases[(name, c)]
            ratio = (red.steps / red.seconds) / (mem.steps / mem.seconds)
            print(f"{red.row()}  {name} / memory {ratio:.2f}")
    await runner.close()
    for s in stores.values():
        await s.close()
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_bench")
    parser.add_argument("--redis", default=None, help="a Redis URL (default: a private one)")
    parser.add_argument("--model", default="weather_lstm")
    parser.add_argument("--seconds", type=float, default=6.0, help="per case, all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=512)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--topologies",
        nargs="*",
        default=[],
        choices=["cluster", "sentinel"],
        help="also a private Redis Cluster and/or Sentinel set, each without and with WAIT 1",
    )
    args = parser.parse_args(argv)
    args.store_options = {}
    if args.redis and not args.topologies:
        asyncio.run(run(args, args.redis, {}))
        return 0
    sys.path.insert(0, str(REPO))
    from tests.redis_process import start_private_redis
    from tests.redis_topologies import ClusterProcesses, SentinelProcesses

    started: list[ClusterProcesses | SentinelProcesses] = []
    more: dict[str, str] = {}
    server = None if args.redis else start_private_redis(databases=1)
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        try:
            for kind in args.topologies:
                topo: ClusterProcesses | SentinelProcesses = (
                    ClusterProcesses(Path(tmp) / kind)
                    if kind == "cluster"
                    else SentinelProcesses(Path(tmp) / kind)
                )
                started.append(topo)
                topo.start()
                more[kind] = more[f"{kind}+wait1"] = topo.url
            url = args.redis or (server.url if server else "")
            print(f"redis at {url}; load average {os.getloadavg()}")
            asyncio.run(run(args, url, more))
        finally:
            for topo in started:
                topo.stop()
            if server is not None:
                server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
