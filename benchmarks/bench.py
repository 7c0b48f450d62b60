"""``lstm-serve bench``: the served step against the HTTP floor and a PyTorch baseline.

It starts each server as its own uvicorn process on a free port, all at once, and drives
them with wrk (HTTP) or ``benchmarks/ws_load.py`` (WebSocket) over many sessions
round-robin, at concurrency 1 and 64. The session step of every server is driven in
turn, in ``--rounds`` rounds, so that each ratio compares numbers taken minutes apart no
more than a round apart (this machine's speed drifts):

- ``service``: ``lstm-serve serve`` on the bundled model (or a tiny random one if the
  bundled store lacks it), as users run it (the access log on): session step, ``/v1``
  predict and ``/v2`` JSON infer of one 24-step sequence, WebSocket steps in lock-step
  (one frame in flight per socket) and streamed (``WS_DEPTH`` frames in flight per socket);
- ``service/nolog``: the same with ``LSTM_SERVE_REQUEST_LOG=false``, for reference;
- ``--compare PATH``: another checkout of lstm-serve (for example the code before a
  change, ``git worktree add /tmp/before <commit>``) served the same way from its own code
  and bundled model store, with and without its access log, beside this one in the same
  rounds;
- ``uvicorn`` (only when ``--only`` names it): the same app, settings and access log on
  stock uvicorn (httptools, uvloop) instead of Granian, for the choice of HTTP server
  (no gRPC door: ``lstm-serve serve`` starts that);
- ``floor``: ``benchmarks/floor_app.py``, a bare Starlette route that parses the same
  body and answers a step-shaped reply with no model, on stock uvicorn;
- ``floor/granian`` (only when ``--only`` names ``granian``): the same floor app on
  Granian with the service's own server configuration: what the service's HTTP server
  costs a bare route;
- ``torch``: ``benchmarks/torch_baseline.py``, FastAPI + PyTorch eager with a dict of
  states and the same model shape (skipped when torch is not installed).

On ``service``'s gRPC port, ``benchmarks/grpc_load.py`` (``grpc.aio``) drives unary
``ModelInfer`` of the same 24-step sequence and one step per request over
``ModelStreamInfer`` (``grpc_cases``), at each concurrency, after the WebSocket cases.

Every HTTP case (step, predict, infer) is driven in turn on each server that has it, in
``--rounds`` rounds, every other round in reverse order.

In-process it measures the raw onnxruntime step cost (the compute limit) and the memory
of idle sessions (RSS growth of a fresh process creating them through the
``SessionManager`` into a ``MemoryStore``). It prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
WS_DEPTH = 16
"""Frames each socket keeps in flight in the WebSocket streaming case."""


@dataclass
class Result:
    server: str
    case: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def row(self) -> str:
        return (
            f"{self.server:<15} {self.case:<24} {self.concurrency:>5} {self.rps:>10,.0f} "
            f"{self.p50_ms:>9.3f} {self.p99_ms:>9.3f} {self.errors:>7}"
        )


HEADER = (
    f"{'server':<15} {'case':<24} {'conc':>5} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} "
    f"{'errors':>7}"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _free_ports(n: int) -> list[int]:
    """``n`` different free ports (held together while they are picked)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@contextlib.contextmanager
def _server(
    cmd: list[str], port: int, env: dict[str, str] | None, log: Path, cwd: Path = REPO
) -> Iterator[subprocess.Popen[bytes]]:
    import httpx

    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[1:3]} exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[1:3]} not ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _parse_bench(output: str) -> dict[str, float]:
    match = re.search(r"^BENCH (\{.*\})$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no BENCH line in load generator output:\n{output[-2000:]}")
    doc: dict[str, float] = json.loads(match.group(1))
    return doc


def _rate(doc: dict[str, float]) -> float:
    return doc["requests"] / (doc["duration_us"] / 1e6) if doc["duration_us"] else 0.0


def _combine(docs: list[dict[str, float]]) -> dict[str, float]:
    """Rounds of one case as one: requests and time summed, the median round's latencies."""
    if len(docs) == 1:
        return docs[0]

    def median(key: str) -> float:
        values = sorted(d[key] for d in docs)
        return values[len(values) // 2]

    total = {key: sum(d[key] for d in docs) for key in ("requests", "duration_us", "errors")}
    return {
        **total,
        "non2xx": sum(d["non2xx"] for d in docs),
        "p50_us": median("p50_us"),
        "p99_us": median("p99_us"),
    }


def _result(server: str, case: str, conc: int, doc: dict[str, float]) -> Result:
    return Result(
        server,
        case,
        conc,
        _rate(doc),
        doc["p50_us"] / 1000,
        doc["p99_us"] / 1000,
        int(doc["errors"] + doc["non2xx"]),
    )


def wrk(
    port: int,
    conc: int,
    seconds: float,
    script: str,
    script_args: Sequence[str],
    path: str = "/",
) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{conc}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH_DIR / script),
        f"http://127.0.0.1:{port}{path}",
        "--",
        *script_args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return _parse_bench(out.stdout)


def ws_load(
    port: int, conc: int, seconds: float, ids: Path, body: Path, depth: int = 1
) -> dict[str, float]:
    cmd = [
        sys.executable,
        str(BENCH_DIR / "ws_load.py"),
        "--port",
        str(port),
        "--sessions",
        str(ids),
        "--body",
        str(body),
        "--connections",
        str(conc),
        "--duration",
        str(seconds),
        "--depth",
        str(depth),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return _parse_bench(out.stdout)


def grpc_load(
    grpc_port: int, model: str, case: str, conc: int, seconds: float, body: Path, sequences: int
) -> dict[str, float]:
    cmd = [
        sys.executable,
        str(BENCH_DIR / "grpc_load.py"),
        *("--target", f"127.0.0.1:{grpc_port}", "--model", model, "--case", case),
        *("--body", str(body), "--connections", str(conc), "--duration", str(seconds)),
        *("--sequences", str(sequences)),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return _parse_bench(out.stdout)


def grpc_cases(
    grpc_port: int,
    model: str,
    args: argparse.Namespace,
    seconds: float,
    predict_body: Path,
    step_body: Path,
    record: Callable[[Result], None],
) -> None:
    """The service's gRPC door: ``ModelInfer`` of the 24-step sequence, and one step per
    request over ``ModelStreamInfer`` (``args.sessions`` sequences, one stream per
    caller, one request in flight per stream), at each concurrency."""
    for c in args.concurrency:
        doc = grpc_load(grpc_port, model, "infer", c, seconds, predict_body, args.sessions)
        record(_result("service", "grpc infer (24 steps)", c, doc))
    for c in args.concurrency:
        doc = grpc_load(grpc_port, model, "stream", c, seconds, step_body, args.sessions)
        record(_result("service", "grpc stream step", c, doc))


# -- in-process measurements -------------------------------------------------------------


def ort_step_cost(store: Path, model_name: str, reps: int) -> dict[str, float]:
    """Microseconds per sequence for one step: bare ``session.run``, and ``run_batch``."""
    import numpy as np

    from service.models.registry import ModelRegistry

    reg = ModelRegistry(store, 1)
    reg.load()
    model = reg.get(model_name)
    m = model.manifest
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for batch in (1, 64):
        if m.graph.input_dtype == "int64":
            x = rng.integers(0, 10, size=(batch, 1)).astype(np.int64)
        else:
            x = rng.standard_normal((batch, 1, _features(model))).astype(np.float32)
        states = [model.zero_state() for _ in range(batch)]
        feeds = {m.graph.input: x}
        for spec in m.state:
            feeds[spec.input] = np.stack([s[spec.name] for s in states], axis=spec.batch_axis)
        names = [m.graph.output, *(s.output for s in m.state)]
        n = max(50, reps // batch)
        for _ in range(20):
            model.session.run(names, feeds)
        t = time.perf_counter()
        for _ in range(n):
            model.session.run(names, feeds)
        out[f"ort_run_b{batch}_us_per_seq"] = (time.perf_counter() - t) / n / batch * 1e6
        t = time.perf_counter()
        for _ in range(n):
            model.run_batch(x, states)
        out[f"run_batch_b{batch}_us_per_seq"] = (time.perf_counter() - t) / n / batch * 1e6
    out.update(asyncio.run(_runner_round_trip(model, reps)))
    return out


async def _runner_round_trip(model: object, reps: int) -> dict[str, float]:
    import numpy as np

    from service.inference.runner import Runner
    from service.models.registry import LoadedModel

    assert isinstance(model, LoadedModel)
    runner = Runner()
    m = model.manifest
    x = (
        np.zeros(1, dtype=np.int64)
        if m.graph.input_dtype == "int64"
        else np.zeros((1, _features(model)), dtype=np.float32)
    )
    state = model.zero_state()
    n = max(200, reps // 4)
    for _ in range(50):
        await runner.run(model, [x], [state])
    t = time.perf_counter()
    for _ in range(n):
        await runner.run(model, [x], [state])
    lone = (time.perf_counter() - t) / n * 1e6
    await runner.close()
    return {"runner_lone_call_us": lone}


def _features(model: object) -> int:
    from service.models.manifest import FeaturesInput
    from service.models.registry import LoadedModel

    assert isinstance(model, LoadedModel) and isinstance(model.manifest.input, FeaturesInput)
    return model.manifest.input.size


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def idle_session_memory(store: Path, model_name: str, count: int) -> dict[str, float]:
    """RSS growth of this process creating ``count`` sessions (run it in a fresh process)."""
    from service.inference.runner import Runner
    from service.models.registry import ModelRegistry
    from service.sessions.manager import SessionManager
    from service.sessions.memory import MemoryStore
    from service.settings import Settings

    reg = ModelRegistry(store, 1)
    reg.load()
    settings = Settings(model_store=store, max_sessions=count + 10, request_log=False)

    async def create_all() -> tuple[int, int, float]:
        runner = Runner()
        manager = SessionManager(MemoryStore(), reg, runner, settings)
        await manager.create("bench", model_name)
        gc.collect()
        before = _rss_bytes()
        t = time.perf_counter()
        for _ in range(count):
            await manager.create("bench", model_name)
        elapsed = time.perf_counter() - t
        gc.collect()
        after = _rss_bytes()
        await runner.close()
        return before, after, elapsed

    before, after, elapsed = asyncio.run(create_all())
    return {
        "sessions": count,
        "rss_growth_mb": (after - before) / 2**20,
        "bytes_per_session": (after - before) / count,
        "create_per_s": count / elapsed,
    }


# -- orchestration ---------------------------------------------------------------------------


def _resolve_store(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    from service.models.store import scan
    from service.settings import Settings

    store = Path(args.store) if args.store else Settings().model_store
    names = {v.manifest.name for v in scan(store).versions}
    if args.model in names:
        return store, args.model
    print(f"note: {args.model!r} not in {store}; benchmarking a tiny random LSTM instead")
    sys.path.insert(0, str(REPO))
    from tests.tiny_models import write_tiny_model

    write_tiny_model(tmp, "bench_lstm", "lstm", features=4, hidden=64)
    return tmp, "bench_lstm"


def _load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds per case")
    parser.add_argument("--duration", type=float, default=None, help="seconds per case")
    parser.add_argument("--model", default="weather_lstm")
    parser.add_argument("--store", default=None, help="model store (default: the bundled one)")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions round-robin")
    parser.add_argument("--idle-sessions", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="the HTTP step cases of all servers are driven in turn, this many times "
        "(at most one round a second)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="servers: service nolog redis floor torch (the default), uvicorn granian",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="another lstm-serve checkout to serve beside this one, with and without its "
        "access log (its own code and bundled model store, this run's settings)",
    )
    parser.add_argument("--compare-label", default="compare", help="its name in the table")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--_idle-memory", dest="idle_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.idle_child:
        store, name, count = args.idle_child
        print(json.dumps(idle_session_memory(Path(store), name, int(count))))
        return 0

    seconds = args.duration or (3.0 if args.quick else 10.0)
    only = set(args.only or ["service", "nolog", "redis", "floor", "torch"])
    have_wrk = shutil.which("wrk") is not None
    have_torch = importlib.util.find_spec("torch") is not None
    tmp = Path(tempfile.mkdtemp(prefix="lstm-serve-bench-"))
    store, model_name = _resolve_store(args, tmp)

    from service.models.registry import ModelRegistry

    reg = ModelRegistry(store, 1)
    reg.load()
    model = reg.get(model_name)
    m = model.manifest
    manifest_path = model.onnx_path.parent / "manifest.json"
    from service.models.manifest import FeaturesInput

    if not isinstance(m.input, FeaturesInput):
        print("lstm-serve bench needs a features model for the step body", file=sys.stderr)
        return 2
    feat = m.input.size
    mean = list(m.input.mean)
    step_body = tmp / "step.json"
    step_body.write_text(json.dumps({"inputs": [[round(v + 0.5, 3) for v in mean]]}))
    predict_body = tmp / "predict.json"
    predict_body.write_text(
        json.dumps({"inputs": [[round(v + 0.1 * t, 3) for v in mean] for t in range(24)]})
    )
    predict_path = f"/v1/models/{model_name}/predict"

    print(
        f"lstm-serve bench: model {model.key} ({m.cell}, {m.layers}x{m.hidden_size}, "
        f"{feat} features); {os.cpu_count()} CPUs; {seconds:g}s per case; "
        f"{args.sessions} sessions round-robin; load average at start {_load_avg()}"
    )
    if not have_wrk:
        print(
            "wrk is not installed (Debian: apt-get install wrk): HTTP cases are skipped",
            file=sys.stderr,
        )
    results: list[Result] = []
    extra: dict[str, object] = {}

    def record(r: Result) -> None:
        results.append(r)
        print(r.row(), flush=True)

    print(HEADER)
    env = {
        "LSTM_SERVE_MODEL_STORE": str(store),
        "LSTM_SERVE_MAX_SESSIONS": str(max(100_000, args.sessions * 2)),
    }
    nolog = {"LSTM_SERVE_REQUEST_LOG": "false"}
    # (server, checkout, extra environment): the service as users run it (access log on,
    # the default level), then the reference rows
    services: list[tuple[str, Path, dict[str, str]]] = []
    if "service" in only:
        services.append(("service", REPO, {}))
    if "nolog" in only:
        services.append(("service/nolog", REPO, nolog))
    if "uvicorn" in only:
        services.append((UVICORN, REPO, {}))
    if args.compare is not None:
        label = args.compare_label
        # its own bundled store when it has one: a manifest of this checkout may have
        # fields that the other's does not know
        theirs = args.compare / "model_store"
        own_store = {"LSTM_SERVE_MODEL_STORE": str(theirs)} if theirs.is_dir() else {}
        services += [
            (label, args.compare, own_store),
            (f"{label}/nolog", args.compare, {**own_store, **nolog}),
        ]
    v2_path = f"/v2/models/{model_name}/infer"
    infer_body = tmp / "infer.json"
    # Every server runs at once, and each case is driven on every server in turn, round
    # after round: this machine's speed drifts by tens of percent over minutes, and a ratio
    # of numbers taken minutes apart measured the drift as much as the servers.
    steppers: list[tuple[str, str, int, Path]] = []  # server, case, port, session ids
    posters: list[tuple[str, int]] = []  # servers with /v1 predict and /v2 infer
    service_port = service_grpc = 0
    service_ids = tmp / "ids.txt"
    cpu = StepCpu()  # CPU per step of the service processes and the Redis server
    with contextlib.ExitStack() as running:
        for name, tree, extra_env in services:
            port, grpc_port = _free_ports(2)
            cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
            if name == UVICORN:
                cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.http.app:create_app"]
                cmd += ["--http", "httptools", "--loop", "uvloop", "--no-access-log"]
                cmd += ["--port", str(port)]
            slug = name.replace("/", "-")
            log = tmp / f"{slug}.log"
            own = {**env, **extra_env, "LSTM_SERVE_GRPC_PORT": str(grpc_port)}
            proc = running.enter_context(_server(cmd, port, own, log, tree))
            cpu.pids[name] = [proc.pid]
            ids = _create_sessions(port, model_name, args.sessions, tmp / f"{slug}-ids.txt")
            steppers.append((name, "session step", port, ids))
            posters.append((name, port))
            if not service_port and name != UVICORN:  # the WebSocket and gRPC cases
                service_port, service_ids = port, ids
                service_grpc = grpc_port
        redis_port = 0
        if "redis" in only:
            redis_port = _start_redis_service(running, env, tmp, model_name, args.sessions, cpu)
            steppers.append((REDIS_SERVER, "session step", redis_port, cpu.ids))
        if posters:
            infer_body.write_text(json.dumps(_infer_body(posters[0][1], model_name, predict_body)))
        others: list[tuple[str, str, list[str]]] = []
        floor = [sys.executable, str(BENCH_DIR / "floor_app.py")]
        if "floor" in only:
            others.append(("floor", "step (no model)", floor))
        if "granian" in only:
            others.append((GRANIAN_FLOOR, "step (no model)", [*floor, "--server", "granian"]))
        if "torch" in only:
            if have_torch:
                torch_cmd = [sys.executable, str(BENCH_DIR / "torch_baseline.py")]
                others.append(
                    ("torch", "session step", [*torch_cmd, "--manifest", str(manifest_path)])
                )
            else:
                print("torch is not installed (pip install -e '.[train]'): baseline skipped")
        fake_ids = _fake_ids(args.sessions, tmp / "fake_ids.txt")
        for server, case, base in others if have_wrk else []:
            port = _free_port()
            cmd = [*base, "--port", str(port)]
            log = tmp / f"{server.replace('/', '-')}.log"
            running.enter_context(_server(cmd, port, None, log))
            steppers.append((server, case, port, fake_ids))

        if have_wrk:
            # (case, servers as (name, port, wrk script, its arguments, path))
            cases: list[tuple[str, list[tuple[str, int, str, list[str], str]]]] = [
                (
                    "session step",
                    [
                        (name, port, "step.lua", [str(ids), str(step_body)], "/")
                        for name, _, port, ids in steppers
                    ],
                ),
                (
                    "predict (24 steps)",
                    [
                        (name, port, "post.lua", [str(predict_body)], predict_path)
                        for name, port in posters
                    ],
                ),
                (
                    "v2 infer JSON (24 steps)",
                    [
                        (name, port, "post.lua", [str(infer_body)], v2_path)
                        for name, port in posters
                    ],
                ),
            ]
            for _, _, port, ids in steppers:
                wrk(port, 16, 1, "step.lua", [str(ids), str(step_body)])  # warm-up
            rounds = max(1, min(args.rounds, round(seconds)))
            for c in args.concurrency:
                for case, drivers in cases:
                    if not drivers:
                        continue
                    docs: dict[str, list[dict[str, float]]] = {d[0]: [] for d in drivers}
                    for r in range(rounds):
                        # every other round in reverse order, so that no server always
                        # runs right after the same other one (a server busy with what
                        # its load left queued, or the machine's drift, favours neither)
                        for name, port, script, script_args, path in (
                            drivers if r % 2 == 0 else drivers[::-1]
                        ):
                            with cpu.measure(name, case, c) as got:
                                doc = wrk(port, c, seconds / rounds, script, script_args, path)
                                got.append(doc["requests"])
                            docs[name].append(doc)
                    by_server = {d[0]: _combine(docs[d[0]]) for d in drivers}
                    for name, doc in by_server.items():
                        shown = case if name in dict(posters) else _other_case(steppers, name)
                        record(_result(name, shown, c, doc))
                    _ratios(extra, docs, case, c, rounds, args.compare_label)

        if service_port:
            port = service_port
            if _route_exists(port):
                for c in args.concurrency:
                    doc = ws_load(port, c, seconds, service_ids, step_body)
                    record(_result("service", "ws session step", c, doc))
                # streaming: each socket keeps WS_DEPTH frames in flight, as a sensor feed
                # or a replayed series does; waiting frames share a step (see stream.py)
                c = max(args.concurrency)
                doc = ws_load(port, c, seconds, service_ids, step_body, WS_DEPTH)
                record(_result("service", f"ws stream ({WS_DEPTH} in flight)", c, doc))
            else:
                print("service: no WebSocket stream route; ws case skipped")
            grpc_cases(service_grpc, model_name, args, seconds, predict_body, step_body, record)
            extra["service_batching"] = _batching(port)
        if redis_port and _route_exists(redis_port):
            c = max(args.concurrency)
            with cpu.measure(REDIS_SERVER, "ws stream", c) as got:
                doc = ws_load(redis_port, c, seconds, cpu.ids, step_body, WS_DEPTH)
                got.append(doc["requests"])
            record(_result(REDIS_SERVER, f"ws stream ({WS_DEPTH} in flight)", c, doc))
        extra["cpu_per_step_us"] = cpu.report()

    print()
    cost = ort_step_cost(store, model_name, 20_000 if not args.quick else 4000)
    print(
        "onnxruntime in-process, one step: "
        f"session.run {cost['ort_run_b1_us_per_seq']:.1f} us at batch 1, "
        f"{cost['ort_run_b64_us_per_seq']:.2f} us/seq at batch 64; "
        f"LoadedModel.run_batch {cost['run_batch_b1_us_per_seq']:.1f} us / "
        f"{cost['run_batch_b64_us_per_seq']:.2f} us/seq; "
        f"Runner.run lone call (thread hop) {cost['runner_lone_call_us']:.1f} us"
    )
    extra["ort"] = cost
    idle_n = args.idle_sessions if not args.quick else min(args.idle_sessions, 20_000)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench",
            "--_idle-memory",
            str(store),
            model_name,
            str(idle_n),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    extra["idle_sessions"] = mem
    print(
        f"idle sessions (in-process SessionManager + MemoryStore, fresh process): "
        f"{mem['sessions']:,} sessions add {mem['rss_growth_mb']:.1f} MB RSS "
        f"({mem['bytes_per_session']:.0f} B each; created at {mem['create_per_s']:,.0f}/s)"
    )
    if "service_batching" in extra:
        print(f"service batching during the run: {extra['service_batching']}")
    _summary(results, mem, idle_n, args.compare_label)
    _redis_summary(results)
    print(f"load average at end {_load_avg()}")
    if args.json:
        args.json.write_text(
            json.dumps({"results": [r.__dict__ for r in results], **extra}, indent=2)
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _create_sessions(port: int, model: str, n: int, path: Path) -> Path:
    import httpx

    ids: list[str] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(n):
            r = client.post("/v1/sessions", json={"model": model})
            if r.status_code != 201 and r.status_code != 200:
                raise RuntimeError(f"creating a session on port {port}: {r.status_code} {r.text}")
            ids.append(r.json()["id"])
    path.write_text("\n".join(ids) + "\n")
    return path


def _infer_body(port: int, model: str, predict_body: Path) -> dict[str, object]:
    """The ``/v2`` JSON infer request for the same sequence as the predict body, to the
    input the model's ``/v2`` metadata names."""
    import httpx

    meta = httpx.get(f"http://127.0.0.1:{port}/v2/models/{model}", timeout=10).json()
    input_name: str = meta["inputs"][0]["name"]
    seq: list[list[float]] = json.loads(predict_body.read_text())["inputs"]
    flat = [v for step in seq for v in step]
    shape = [1, len(seq), len(seq[0])]
    return {"inputs": [{"name": input_name, "datatype": "FP32", "shape": shape, "data": flat}]}


def _other_case(steppers: list[tuple[str, str, int, Path]], name: str) -> str:
    return next(case for server, case, _, _ in steppers if server == name)


def _ratios(
    extra: dict[str, object],
    docs: dict[str, list[dict[str, float]]],
    case: str,
    conc: int,
    rounds: int,
    compare: str,
) -> None:
    """Ratios of interleaved rounds (each round's pair taken seconds apart), printed and
    kept in the JSON: access log on / off, this checkout / ``--compare``, step / floor."""
    pairs = [
        ("service", "service/nolog", "log on / off"),
        (REDIS_SERVER, "service", "Redis store / memory store"),
        ("service/nolog", f"{compare}/nolog", f"this / {compare}, log off"),
        ("service", compare, f"this / {compare}, log on"),
        ("service/nolog", "floor", "step / floor"),
        ("service", UVICORN, "Granian / uvicorn"),
        (GRANIAN_FLOOR, "floor", "floor, Granian / uvicorn"),
        (f"{compare}/nolog", "floor", f"{compare} step / floor"),
    ]
    for a, b, what in pairs:
        if a not in docs or b not in docs:
            continue
        per_round = [_rate(x) / _rate(y) for x, y in zip(docs[a], docs[b], strict=True)]
        total = _rate(_combine(docs[a])) / _rate(_combine(docs[b]))
        shown = " ".join(f"{x:.2f}" for x in per_round) if rounds > 1 else ""
        print(f"{'':16}{case} c{conc}, {what}: {total:.2f}  (rounds: {shown})")
        extra[f"{case} c{conc}: {what}"] = {"overall": total, "rounds": per_round}


def _fake_ids(n: int, path: Path) -> Path:
    path.write_text("\n".join(f"s{i:06d}" for i in range(n)) + "\n")
    return path


def _route_exists(port: int) -> bool:
    """WebSocket routes are not in the OpenAPI document: try a handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"GET /v1/sessions/none/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        return s.recv(64).startswith(b"HTTP/1.1 101")


def _batching(port: int) -> str:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("lstm_serve_inference_batch_size_count"):
            count += float(line.split()[-1])
        elif line.startswith("lstm_serve_inference_batch_size_sum"):
            total += float(line.split()[-1])
    if not count:
        return "no runs recorded"
    return f"{count:,.0f} onnxruntime runs, {total / count:.1f} sequences per run on average"


def _find(results: list[Result], server: str, case: str, conc: int) -> Result | None:
    for r in results:
        if r.server == server and r.case.startswith(case) and r.concurrency == conc:
            return r
    return None


def _summary(results: list[Result], mem: dict[str, float], idle_n: int, compare: str) -> None:
    print("\ntargets:")
    step64 = _find(results, "service", "session step", 64)
    step1 = _find(results, "service", "session step", 1)
    floor64 = _find(results, "floor", "step", 64)
    torch64 = _find(results, "torch", "session step", 64)
    ws64 = _find(results, "service", "ws session step", 64)
    stream64 = _find(results, "service", "ws stream", 64)

    def line(
        name: str, value: float | None, target: str, ok: bool | None, kind: str = "target"
    ) -> None:
        shown = "n/a" if value is None else f"{value:.2f}"
        verdict = "not measured" if ok is None else ("met" if ok else "NOT met")
        print(f"  {name:<44} {shown:>8}  ({kind} {target}: {verdict})")

    r = step64.rps / floor64.rps if step64 and floor64 else None
    line("step c64 / HTTP floor, stock uvicorn", r, ">= 0.8", None if r is None else r >= 0.8)
    r = step64.rps / torch64.rps if step64 and torch64 else None
    line("step c64 throughput / FastAPI+PyTorch", r, ">= 4", None if r is None else r >= 4)
    p = step1.p50_ms if step1 else None
    line("step p50 at concurrency 1 (ms)", p, "< 1", None if p is None else p < 1)
    scaled = mem["rss_growth_mb"] * 100_000 / idle_n
    line("MB added by 100k idle sessions", scaled, "< 300", scaled < 300)
    r = stream64.rps / step64.rps if stream64 and step64 else None
    line(
        f"WS stream c64 ({WS_DEPTH} in flight) / HTTP step c64",
        r,
        ">= 3",
        None if r is None else r >= 3,
    )
    r = ws64.rps / step64.rps if ws64 and step64 else None
    print(f"  {'(WS lock-step c64 / HTTP step c64)':<44} {'n/a' if r is None else f'{r:.2f}':>8}")
    nolog64 = _find(results, "service/nolog", "session step", 64)
    r = step64.rps / nolog64.rps if step64 and nolog64 else None
    line("step c64, access log on / off", r, ">= 0.9", None if r is None else r >= 0.9)
    predict64 = _find(results, "service", "predict", 64)
    infer64 = _find(results, "service", "v2 infer", 64)
    r = infer64.rps / predict64.rps if infer64 and predict64 else None
    line("/v2 JSON infer c64 / /v1 predict c64", r, ">= 0.9", None if r is None else r >= 0.9)
    for server, other in ((compare, "service"), (f"{compare}/nolog", "service/nolog")):
        old = _find(results, server, "session step", 64)
        new = _find(results, other, "session step", 64)
        if old and new:
            r = new.rps / old.rps
            line(f"step c64, {other} / {server}", r, ">= 0.9", r >= 0.9)


# -- the Redis store (a private redis-server beside the memory-store service) ----------------

REDIS_SERVER = "service/redis"
"""The service as a replica runs it: defaults, sessions in a private ``redis-server``."""
UVICORN = "service/uvicorn"
"""The service on stock uvicorn, a reference row for the choice of HTTP server."""
GRANIAN_FLOOR = "floor/granian"
"""The floor app on Granian: the HTTP server's own cost beside stock uvicorn's."""


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its child processes (the model process) so far."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(_tree_cpu(int(c)) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


class StepCpu:
    """CPU time per request of each service (its process and model process) and, for the
    Redis-store service, of the Redis server, by case and concurrency."""

    def __init__(self) -> None:
        self.pids: dict[str, list[int]] = {}
        self.redis_pid = 0
        self.ids = Path()
        self.totals: dict[tuple[str, str, int], list[float]] = {}

    @contextlib.contextmanager
    def measure(self, name: str, case: str, conc: int) -> Iterator[list[float]]:
        """Around one load run; the caller appends the requests it made."""
        got: list[float] = []
        pids = self.pids.get(name)
        if not pids:
            yield got
            return
        redis = self.redis_pid if name == REDIS_SERVER else 0
        before = sum(map(_tree_cpu, pids)), _tree_cpu(redis) if redis else 0.0
        yield got
        t = self.totals.setdefault((name, case, conc), [0.0, 0.0, 0.0])
        t[0] += sum(map(_tree_cpu, pids)) - before[0]
        t[1] += (_tree_cpu(redis) - before[1]) if redis else 0.0
        t[2] += sum(got)

    def report(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        if self.totals:
            print("CPU per request (the service with its model process; the Redis server):")
        for (name, case, conc), (server, redis, n) in self.totals.items():
            if not n:
                continue
            row = {"server_us": server / n * 1e6, "redis_us": redis / n * 1e6}
            out[f"{name} {case} c{conc}"] = row
            shown = f", redis-server {row['redis_us']:.1f} us" if name == REDIS_SERVER else ""
            print(f"  {name:<16} {case:<26} c{conc:<3} service {row['server_us']:.1f} us{shown}")
        return out


@contextlib.contextmanager
def _redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A private ``redis-server`` on ``port``, keeping nothing on disk."""
    import redis

    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with redis.Redis(port=port, socket_timeout=0.5) as client:
                    if client.ping():
                        break
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(5)


def _start_redis_service(
    running: contextlib.ExitStack,
    env: dict[str, str],
    tmp: Path,
    model_name: str,
    sessions: int,
    cpu: StepCpu,
) -> int:
    """Start a private Redis and the service on it (defaults otherwise); its port."""
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (Debian: apt-get install redis-server): skipped")
        return 0
    redis_port, port, grpc_port = _free_ports(3)
    cpu.redis_pid = running.enter_context(_redis_server(redis_port)).pid
    own = {
        **env,
        "LSTM_SERVE_SESSION_STORE": f"redis://127.0.0.1:{redis_port}/0",
        "LSTM_SERVE_GRPC_PORT": str(grpc_port),
    }
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    proc = running.enter_context(_server(cmd, port, own, tmp / "service-redis.log"))
    cpu.pids[REDIS_SERVER] = [proc.pid]
    cpu.ids = _create_sessions(port, model_name, sessions, tmp / "redis-ids.txt")
    return port


def _redis_summary(results: list[Result]) -> None:
    memory64 = _find(results, "service", "session step", 64)
    redis64 = _find(results, REDIS_SERVER, "session step", 64)
    redis1 = _find(results, REDIS_SERVER, "session step", 1)
    r = redis64.rps / memory64.rps if redis64 and memory64 else None
    verdict = "not measured" if r is None else ("met" if r >= 0.7 else "NOT met")
    print(
        f"  {'step c64, Redis store / memory store':<44} {_shown(r):>8}  (target >= 0.7: {verdict})"
    )
    p = redis1.p50_ms if redis1 else None
    verdict = "not measured" if p is None else ("met" if p < 1 else "NOT met")
    name = "step p50 at concurrency 1, Redis store (ms)"
    print(f"  {name:<44} {_shown(p):>8}  (target < 1: {verdict})")


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
