"""Whole-sequence predict of one model on lstm-serve and on other servers, interleaved.

The bundled ``weather_lstm`` (its highest version) runs one 24-step sequence per request
behind:

- ``lstm-serve``: ``lstm-serve serve`` as users run it (its defaults, access log on), both
  ``POST /v1/models/<model>/predict`` and ``POST /v2/models/<model>/infer`` (JSON); the
  ``/v2`` request is the one the MLServer peers get, naming the output tensor they answer
  with (``OUTPUT``), and the same request without ``outputs`` (answered with ``OUTPUT`` and
  the two final states) is a reference row;
- ``mlserver/inline``: MLServer with a custom onnxruntime runtime (``runtime.py``, an
  ``MLModel``), inference in the server process (``parallel_workers: 0``), no adaptive
  batching; ``/v2`` JSON infer;
- ``mlserver/batch``: the same runtime in one inference worker process with adaptive
  batching (``max_batch_size: 64``, ``max_batch_time: 0.0005``);
- ``litserve``: a ``LitAPI`` with dynamic batching (``max_batch_size=64``,
  ``batch_timeout=0.0005``), ``POST /predict`` with the ``/v1`` body.

Every peer does the work lstm-serve does: the manifest's normalisation of the inputs, one
onnxruntime run of the graph from the zero state with lstm-serve's session options (one
intra-op thread, sequential, arena off), the outputs back in data units. Each peer is
measured in its best configuration: MLServer without its debug access log, metrics server
and gzip middleware; LitServe with ``fast_queue`` (ZeroMQ), warnings-only logging and no
client file. Before any load, every server must answer the sequence with the outputs
lstm-serve's ``/v1`` predict gives (within 1e-4).

The peers run from their own virtual environments (``--mlserver-python``,
``--litserve-python``), never this checkout's. Every server runs at once, each in its own
process (group) on its own port; wrk drives each in turn, round by round, at each
concurrency, so that each ratio compares numbers taken seconds apart on this drifting
machine. It prints numbers; it asserts nothing beyond the answers' agreement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench import (
    HEADER,
    REPO,
    Result,
    _combine,
    _free_ports,
    _infer_body,
    _load_avg,
    _rate,
    _result,
    _server,
    wrk,
)

MAX_BATCH = 64
BATCH_WAIT_S = 0.0005
TOLERANCE = 1e-4
LSTM_SERVE = "lstm-serve"

# -- the generated peer code ----------------------------------------------------------------

CORE = '''\
import json

import numpy as np
import onnxruntime as ort


class SequenceModel:
    """The graph on onnxruntime as lstm-serve runs it (service/models/registry.py's session
    options): inputs normalised and outputs denormalised with the manifest's mean and std,
    every sequence from the zero state."""

    def __init__(self, config_path):
        with open(config_path) as f:
            c = json.load(f)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = c["threads"]
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(
            c["onnx"], sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input = c["input"]
        self.output = c["output"]
        self.states = [(s["input"], s["shape"], s["batch_axis"]) for s in c["states"]]
        self.in_mean = np.asarray(c["in_mean"], dtype=np.float32)
        self.in_std = np.asarray(c["in_std"], dtype=np.float32)
        self.out_mean = np.asarray(c["out_mean"], dtype=np.float32)
        self.out_std = np.asarray(c["out_std"], dtype=np.float32)

    def run(self, x):
        """[batch, time, features] in data units -> [batch, time, outputs] in data units."""
        n = x.shape[0]
        feeds = {self.input: ((x - self.in_mean) / self.in_std).astype(np.float32)}
        for name, shape, axis in self.states:
            full = list(shape)
            full.insert(axis, n)
            feeds[name] = np.zeros(full, dtype=np.float32)
        y = self.session.run([self.output], feeds)[0]
        return (y * self.out_std + self.out_mean).astype(np.float32)
'''

MLSERVER_RUNTIME = '''\
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxSequenceRuntime(MLModel):
    """The /v2 request's FP32 tensor [batch, time, features] through SequenceModel; with
    adaptive batching MLServer stacks requests along axis 0 and splits the answer."""

    async def load(self) -> bool:
        self._model = SequenceModel(self.settings.parameters.extra["config"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        y = self._model.run(x)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("OUTPUT", y)],
        )
'''

LITSERVE_APP = '''\
import sys

import litserve as ls


class SequenceAPI(ls.LitAPI):
    """The /v1 body {"inputs": [[f..]..]} -> {"outputs": the last step}, batched along
    axis 0 by LitServe's dynamic batching."""

    def __init__(self, config_path, **kwargs):
        super().__init__(**kwargs)
        self.config_path = config_path

    def setup(self, device):
        self.model = SequenceModel(self.config_path)

    def decode_request(self, request):
        return np.asarray(request["inputs"], dtype=np.float32)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.model.run(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"outputs": output[-1].tolist()}


if __name__ == "__main__":
    port, config_path = int(sys.argv[1]), sys.argv[2]
    api = SequenceAPI(config_path, max_batch_size=MAX_BATCH, batch_timeout=BATCH_WAIT_S)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
'''


@dataclass
class Target:
    """One server and case under load: where wrk sends which body."""

    server: str
    case: str
    port: int
    path: str
    body: Path


def _model_files(store: Path, name: str) -> tuple[Path, dict[str, Any]]:
    """The highest version's directory and manifest."""
    versions = [
        d for d in (store / name).iterdir() if d.name.isdigit() and (d / "manifest.json").is_file()
    ]
    if not versions:
        raise SystemExit(f"no versions of {name!r} in {store}")
    top = max(versions, key=lambda d: int(d.name))
    manifest: dict[str, Any] = json.loads((top / "manifest.json").read_text())
    return top, manifest


def _peer_config(version_dir: Path, m: dict[str, Any], threads: int) -> dict[str, Any]:
    """What the generated SequenceModel needs, from the manifest; refuses graphs it does
    not run the way lstm-serve does."""
    graph = m["graph"]
    plain = (
        m["input"]["kind"] == "features"
        and m["output"]["kind"] == "regression"
        and not graph.get("time_major")
        and graph.get("sequence_lens") is None
        and m.get("distribution") is None
        and graph.get("input_dtype", "float32") == "float32"
    )
    if not plain:
        raise SystemExit("the peers run a features-in, regression-out, batch-major graph only")
    return {
        "onnx": str(version_dir / m["onnx_file"]),
        "threads": threads,
        "input": graph["input"],
        "output": graph["output"],
        "states": [
            {"input": s["input"], "shape": s["shape"], "batch_axis": s["batch_axis"]}
            for s in m["state"]
        ],
        "in_mean": m["input"]["mean"],
        "in_std": m["input"]["std"],
        "out_mean": m["output"]["mean"],
        "out_std": m["output"]["std"],
    }


def _write_mlserver(root: Path, name: str, config: Path, ports: list[int], batched: bool) -> Path:
    """A model repository with ``settings.json`` and ``<name>/model-settings.json`` +
    ``runtime.py``: inline (``parallel_workers: 0``, no batching) or one inference worker
    with adaptive batching."""
    model_dir = root / name
    model_dir.mkdir(parents=True)
    (model_dir / "runtime.py").write_text(CORE + "\n\n" + MLSERVER_RUNTIME)
    http, grpc, metrics = ports
    settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "debug": False,  # no uvicorn access log
        "metrics_endpoint": None,  # no metrics server or REST metrics middleware
        "gzip_enabled": False,
        "parallel_workers": 1 if batched else 0,
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model: dict[str, Any] = {
        "name": name,
        "implementation": "runtime.OnnxSequenceRuntime",
        "parameters": {"extra": {"config": str(config)}},
    }
    if batched:
        model |= {"max_batch_size": MAX_BATCH, "max_batch_time": BATCH_WAIT_S}
    (model_dir / "model-settings.json").write_text(json.dumps(model, indent=2))
    return root


def _write_litserve(tmp: Path) -> Path:
    path = tmp / "litserve_app.py"
    consts = f"MAX_BATCH = {MAX_BATCH}\nBATCH_WAIT_S = {BATCH_WAIT_S}\n"
    path.write_text(CORE + "\n" + consts + "\n\n" + LITSERVE_APP)
    return path


# -- processes ------------------------------------------------------------------------------


@contextlib.contextmanager
def _process_group(cmd: list[str], log: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` in a new session (its own process group, which holds the workers it forks);
    the whole group is stopped on the way out: SIGTERM, then SIGKILL."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        time.sleep(0.5)  # workers leave after their parent
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _last_step_v1(doc: Any) -> list[float]:
    outputs: list[float] = doc["outputs"]
    return outputs


def _last_step_v2(doc: Any) -> list[float]:
    out = doc["outputs"][0]
    size = int(out["shape"][-1])
    data: list[float] = out["data"][-size:]
    return data


def _answer(
    target: Target,
    pick: Callable[[Any], list[float]],
    proc: subprocess.Popen[bytes] | None,
    log: Path,
    timeout: float = 120,
) -> list[float]:
    """Poll ``target`` with its body until it answers 200; the last step's outputs."""
    import httpx

    body = target.body.read_bytes()
    url = f"http://127.0.0.1:{target.port}{target.path}"
    headers = {"Content-Type": "application/json"}
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{target.server} exited: {log.read_text()[-3000:]}")
        try:
            r = httpx.post(url, content=body, headers=headers, timeout=10)
            if r.status_code == 200:
                return pick(r.json())
            last = f"{r.status_code} {r.text[:500]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{target.server} gave no answer on {target.path}: {last}\n"
                f"{log.read_text()[-3000:]}"
            )
        time.sleep(0.25)


def _check(name: str, got: list[float], want: list[float]) -> float:
    if len(got) != len(want):
        raise RuntimeError(f"{name}: {len(got)} outputs, lstm-serve /v1 gives {len(want)}")
    diff = max(abs(a - b) for a, b in zip(got, want, strict=True))
    if diff > TOLERANCE:
        raise RuntimeError(f"{name}: answers {got}, lstm-serve /v1 {want} (|diff| {diff:.2e})")
    return diff


def _versions(python: str, packages: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    out = subprocess.run([python, "-c", code, *packages], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{python}: {out.stderr.strip()[-500:]}")
    got: dict[str, str] = json.loads(out.stdout)
    return got


# -- the run --------------------------------------------------------------------------------


def _round_ratios(
    docs: dict[str, list[dict[str, float]]], ours: str, peers: list[str], conc: int, what: str
) -> None:
    """``ours`` ÷ the best peer, each round against that round's best, and overall."""
    present = [p for p in peers if p in docs]
    if ours not in docs or not present:
        return
    per_round = []
    for i, doc in enumerate(docs[ours]):
        best = max(present, key=lambda p: _rate(docs[p][i]))
        per_round.append(f"{_rate(doc) / _rate(docs[best][i]):.2f} ({best})")
    overall = {p: _rate(_combine(docs[p])) for p in present}
    best = max(overall, key=lambda p: overall[p])
    total = _rate(_combine(docs[ours])) / overall[best]
    print(f"  c{conc:<3} {what} ÷ best peer: {total:.2f} (best {best}); rounds: ", end="")
    print(", ".join(per_round))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mlserver-python", required=True, help="python of an mlserver venv")
    parser.add_argument("--litserve-python", required=True, help="python of a litserve venv")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per case and server, all rounds"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="every server is driven in turn, this many times"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--model", default="weather_lstm")
    parser.add_argument("--store", type=Path, default=REPO / "model_store")
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated files and the servers' logs"
    )
    args = parser.parse_args(argv)
    args.store = args.store.resolve()

    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    import onnxruntime as ort

    from service.settings import Settings

    version_dir, manifest = _model_files(args.store, args.model)
    threads = Settings().ort_threads
    config = _peer_config(version_dir, manifest, threads)
    ml_versions = _versions(args.mlserver_python, ["mlserver", "onnxruntime", "numpy", "uvloop"])
    if tuple(int(p) for p in ml_versions["uvloop"].split(".")[:2]) >= (0, 22):
        print(
            f"note: uvloop {ml_versions['uvloop']} in the mlserver venv: MLServer 1.7.1's "
            "inference workers fail to start with uvloop 0.22 or later (pip install "
            "uvloop==0.21.0 there)",
            file=sys.stderr,
        )
    lit_versions = _versions(args.litserve_python, ["litserve", "onnxruntime", "numpy"])
    cpus = len(os.sched_getaffinity(0))
    print(
        f"peers: model {manifest['name']}:{manifest['version']} ({manifest['cell']}, "
        f"{manifest['layers']}x{manifest['hidden_size']}), one 24-step sequence per request; "
        f"{cpus} CPUs (nproc); load average at start {_load_avg()}"
    )
    print(
        f"Python {platform.python_version()}; onnxruntime {ort.__version__} (lstm-serve), "
        f"{ml_versions['onnxruntime']} (mlserver venv), {lit_versions['onnxruntime']} "
        f"(litserve venv); mlserver {ml_versions['mlserver']}; "
        f"litserve {lit_versions['litserve']}; onnxruntime intra-op threads {threads}"
    )
    seconds = args.duration
    rounds = max(1, min(args.rounds, round(seconds)))

    tmp = Path(tempfile.mkdtemp(prefix="lstm-serve-peers-"))
    try:
        return _run(args, tmp, config, seconds, rounds)
    finally:
        if args.keep:
            print(f"generated files and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(
    args: argparse.Namespace, tmp: Path, config: dict[str, Any], seconds: float, rounds: int
) -> int:
    name = args.model
    config_path = tmp / "peer_config.json"
    config_path.write_text(json.dumps(config, indent=2))
    mean: list[float] = config["in_mean"]
    predict_body = tmp / "predict.json"  # the sequence benchmarks/bench.py predicts
    predict_body.write_text(
        json.dumps({"inputs": [[round(v + 0.1 * t, 3) for v in mean] for t in range(24)]})
    )
    infer_body = tmp / "infer.json"
    infer_all_body = tmp / "infer-all.json"
    port, grpc_port, ml_inline, ml_batched, lit_port, *ml_others = _free_ports(9)

    with contextlib.ExitStack() as running:
        # lstm-serve as benchmarks/bench.py starts it: its defaults, the access log on
        env = {"LSTM_SERVE_MODEL_STORE": str(args.store), "LSTM_SERVE_GRPC_PORT": str(grpc_port)}
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        running.enter_context(_server(cmd, port, env, tmp / "lstm-serve.log"))
        all_outputs = _infer_body(port, name, predict_body)
        infer_all_body.write_text(json.dumps(all_outputs))
        # what every /v2 server is sent: the same request, naming the one output the
        # peers' runtimes answer with
        infer_body.write_text(json.dumps({**all_outputs, "outputs": [{"name": "OUTPUT"}]}))

        v2_path = f"/v2/models/{name}/infer"
        v1 = Target(LSTM_SERVE, "/v1 predict", port, f"/v1/models/{name}/predict", predict_body)
        v2 = Target(LSTM_SERVE, "/v2 infer JSON", port, v2_path, infer_body)
        v2_all = Target(LSTM_SERVE, "/v2 JSON, all outputs", port, v2_path, infer_all_body)
        log = tmp / "lstm-serve.log"
        want = _answer(v1, _last_step_v1, None, log)
        for t in (v2, v2_all):
            _check(f"lstm-serve {t.case}", _answer(t, _last_step_v2, None, log), want)
        targets = [v1, v2, v2_all]

        mlserver = str(Path(args.mlserver_python).parent / "mlserver")
        peers: list[tuple[Target, list[str], Callable[[Any], list[float]]]] = []
        for label, http, batched, others in (
            ("mlserver/inline", ml_inline, False, ml_others[0:2]),
            ("mlserver/batch", ml_batched, True, ml_others[2:4]),
        ):
            repo = _write_mlserver(
                tmp / label.replace("/", "-"), name, config_path, [http, *others], batched
            )
            target = Target(label, "/v2 infer JSON", http, f"/v2/models/{name}/infer", infer_body)
            peers.append((target, [mlserver, "start", str(repo)], _last_step_v2))
        app = _write_litserve(tmp)
        lit_cmd = [args.litserve_python, str(app), str(lit_port), str(config_path)]
        peers.append(
            (
                Target("litserve", "/predict (v1 body)", lit_port, "/predict", predict_body),
                lit_cmd,
                _last_step_v1,
            )
        )
        for target, peer_cmd, pick in peers:
            log = tmp / f"{target.server.replace('/', '-')}.log"
            proc = running.enter_context(_process_group(peer_cmd, log, tmp))
            started = time.monotonic()
            diff = _check(target.server, _answer(target, pick, proc, log), want)
            print(
                f"{target.server}: up in {time.monotonic() - started:.1f}s, answers as "
                f"lstm-serve /v1 (max |diff| {diff:.1e})"
            )
            targets.append(target)

        for t in targets:  # warm-up
            wrk(t.port, 16, 1, "post.lua", [str(t.body)], t.path)
        each = max(1, round(seconds / rounds))  # wrk runs whole seconds
        print(f"every case and server: {rounds} rounds of {each}s, in turn")
        print(HEADER)
        results: list[Result] = []
        peer_names = [t.server for t, _, _ in peers]
        for c in args.concurrency:
            docs: dict[str, list[dict[str, float]]] = {_key(t): [] for t in targets}
            for _ in range(rounds):
                for t in targets:
                    docs[_key(t)].append(
                        wrk(t.port, c, seconds / rounds, "post.lua", [str(t.body)], t.path)
                    )
            for t in targets:
                r = _result(t.server, t.case, c, _combine(docs[_key(t)]))
                results.append(r)
                print(r.row(), flush=True)
            _round_ratios(docs, _key(v1), peer_names, c, "lstm-serve /v1")
            _round_ratios(docs, _key(v2), peer_names, c, "lstm-serve /v2")
            _round_ratios(docs, _key(v2_all), peer_names, c, "lstm-serve /v2 (all outputs)")
    print(f"load average at end {_load_avg()}")
    return 0


def _key(t: Target) -> str:
    return t.server if t.server != LSTM_SERVE else f"{t.server} {t.case}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Ctrl-C and SIGTERM unwind the servers' context managers, which stop every process
    # (even when this was started with SIGINT ignored, as a background job is)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        raise SystemExit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
