"""gRPC load for ``lstm-serve bench``: Triton's ``GRPCInferenceService`` over ``grpc.aio``.

Two cases, each with ``--connections`` callers kept busy for ``--duration`` seconds:

- ``infer``: unary ``ModelInfer`` of the body's whole sequence (stateless), each caller
  with one call in flight;
- ``stream``: one step per request over ``ModelStreamInfer``: each caller holds one
  stream and steps its share of ``--sequences`` sequences round-robin (each started on
  its stream before the clock starts), one request in flight per stream.

Requests are built once (the client's protobuf work stays out of the loop); callers share
one channel per ``CALLERS_PER_CHANNEL``. Prints one ``BENCH {json}`` line as ``wrk``'s
script and ``ws_load.py`` do: requests, duration_us, errors (failed calls and
``error_message`` answers), non2xx (0), p50_us, p99_us.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

CALLERS_PER_CHANNEL = 16


def request(model: str, x: np.ndarray, sequence_id: int = 0, start: bool = False) -> Any:
    req = service_pb2.ModelInferRequest(model_name=model)
    tensor = req.inputs.add(name="INPUT", datatype="FP32")
    tensor.shape.extend(x.shape)
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    if sequence_id:
        req.parameters["sequence_id"].int64_param = sequence_id
        if start:
            req.parameters["sequence_start"].bool_param = True
    return req


def body_tensor(path: Path) -> np.ndarray:
    """A ``/v1`` body's ``inputs`` (time x features) as one sequence, ``[1, time, F]``."""
    rows = json.loads(path.read_text())["inputs"]
    return np.asarray([rows], dtype=np.float32)


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0


async def infer_caller(stub: Any, req: Any, deadline: float, tally: Tally) -> None:
    while (t0 := time.perf_counter()) < deadline:
        try:
            await stub.ModelInfer(req)
        except grpc.RpcError:
            tally.errors += 1
            continue
        tally.latencies.append(time.perf_counter() - t0)


async def open_stream(stub: Any, steps: list[Any], starts: list[Any]) -> Any:
    """A stream with its sequences started (not timed)."""
    call = stub.ModelStreamInfer()
    for req in starts:
        await call.write(req)
        answer = await call.read()
        if answer.error_message:
            raise RuntimeError(f"starting a sequence: {answer.error_message}")
    return call


async def stream_caller(call: Any, steps: list[Any], deadline: float, tally: Tally) -> None:
    i = 0
    while (t0 := time.perf_counter()) < deadline:
        await call.write(steps[i % len(steps)])
        answer = await call.read()
        i += 1
        if answer.error_message:
            tally.errors += 1
            continue
        tally.latencies.append(time.perf_counter() - t0)
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass


async def run(args: argparse.Namespace) -> dict[str, float]:
    n_channels = max(1, -(-args.connections // CALLERS_PER_CHANNEL))
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(n_channels)]
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(ch) for ch in channels]
    x = body_tensor(args.body)
    tally = Tally()
    try:
        if args.case == "infer":
            req = request(args.model, x)
            await stubs[0].ModelInfer(req)  # warm-up
            started = time.perf_counter()
            deadline = started + args.duration
            await asyncio.gather(
                *(
                    infer_caller(stubs[i % n_channels], req, deadline, tally)
                    for i in range(args.connections)
                )
            )
        else:
            step = x[:, :1]
            ids = [
                list(range(k + 1, args.sequences + 1, args.connections)) or [k + 1]
                for k in range(args.connections)
            ]
            steps = [[request(args.model, step, s) for s in mine] for mine in ids]
            starts = [[request(args.model, step, s, start=True) for s in mine] for mine in ids]
            calls = await asyncio.gather(
                *(
                    open_stream(stubs[k % n_channels], steps[k], starts[k])
                    for k in range(args.connections)
                )
            )
            started = time.perf_counter()
            deadline = started + args.duration
            await asyncio.gather(
                *(stream_caller(call, steps[k], deadline, tally) for k, call in enumerate(calls))
            )
        elapsed = time.perf_counter() - started
    finally:
        for ch in channels:
            await ch.close()
    lat = np.asarray(tally.latencies) * 1e6 if tally.latencies else np.zeros(1)
    return {
        "requests": len(tally.latencies),
        "duration_us": elapsed * 1e6,
        "errors": tally.errors,
        "non2xx": 0,
        "p50_us": float(np.percentile(lat, 50)),
        "p99_us": float(np.percentile(lat, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port of the gRPC door")
    parser.add_argument("--model", required=True)
    parser.add_argument("--case", choices=["infer", "stream"], required=True)
    parser.add_argument("--body", type=Path, required=True, help="a /v1 body with inputs")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--sequences", type=int, default=1000)
    args = parser.parse_args()
    print("BENCH " + json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
