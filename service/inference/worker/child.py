"""A model worker process: loads model versions and runs batches for the server.

Started by the server (``service.inference.worker.pool``) as
``python -m service.inference.worker.child FD THREADS``: ``FD`` is its end of a Unix socket
pair private to the two processes, ``THREADS`` onnxruntime's intra-op threads. It reads
``Load`` and ``Run`` messages (``service.inference.worker.protocol``), answers each ``Run``
in order, and exits when the server closes the socket (also when the server dies).

The worker normalises, runs and denormalises; the server stacks and splits.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.errors import ModelStoreError
from service.inference.memory import release_memory
from service.inference.worker.protocol import (
    HEAD,
    Failure,
    Group,
    GroupOut,
    Load,
    Ran,
    RanAlone,
    Reply,
    Run,
    Version,
    decode,
    encode,
    failure,
    frame_size,
)
from service.models.registry import LoadedModel, load_model
from service.models.store import StoredVersion

TRIM_AFTER_STEPS = 4096
"""After a batch of this many sequence-steps or more, free heap pages go back to the system
(a long run's buffers would stay in the heap); smaller batches, the common case, skip it."""


def run_group(model: LoadedModel, x: np.ndarray, states: dict[str, np.ndarray]) -> GroupOut:
    """One onnxruntime run of stacked sequences (data units in, model and data units out)."""
    started = time.perf_counter()
    y, finals = model.run_stacked(model.model_inputs(x), states)
    # batch-first and contiguous, so the server's row copies are plain memory copies
    finals = {name: np.ascontiguousarray(arr) for name, arr in finals.items()}
    return GroupOut(y, model.wire_outputs(y), finals, time.perf_counter() - started)


def run_groups(model: LoadedModel, groups: Sequence[Group]) -> Reply:
    """The answer to one ``Run``: every group at once, or, when that fails and the batch
    holds several calls, each call alone, so only a call whose input breaks the model
    fails."""
    try:
        return Ran([run_group(model, g.x, g.states) for g in groups])
    except Exception as exc:
        owners = sorted({int(c) for g in groups for c in g.calls})
        if len(owners) == 1:
            return failure(exc)
    per_call: list[list[GroupOut | None] | Failure] = []
    for call in range(owners[-1] + 1):
        outs: list[GroupOut | None] = []
        try:
            for g in groups:
                rows = g.calls == call
                if not rows.any():
                    outs.append(None)
                    continue
                mine = {name: arr[rows] for name, arr in g.states.items()}
                outs.append(run_group(model, g.x[rows], mine))
        except Exception as exc:
            per_call.append(failure(exc))
        else:
            per_call.append(outs)
    return RanAlone(per_call)


class Worker:
    """The loaded versions, and what failed to load (a ``Run`` for it gets the reason)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.models: dict[str, LoadedModel] = {}
        self.failed: dict[str, str] = {}

    def load(self, message: Load) -> None:
        for key in [k for k in self.models if k not in message.live]:
            del self.models[key]
        for version in message.versions:
            self._load(version)

    def _load(self, version: Version) -> None:
        stored = StoredVersion(version.manifest, Path(version.onnx_path))
        try:
            self.models[version.key] = load_model(stored, self.threads)
        except ModelStoreError as exc:
            self.failed[version.key] = str(exc)
        else:
            self.failed.pop(version.key, None)

    def run(self, message: Run) -> Reply:
        model = self.models.get(message.key)
        if model is None:
            reason = self.failed.get(message.key)
            return Failure(True, reason or f"model {message.key} is not loaded in the worker")
        return run_groups(model, message.groups)


def serve(fd: int, threads: int) -> None:
    """Answer messages on socket ``fd`` until the server closes it."""
    sock = socket.socket(fileno=fd)
    reader = sock.makefile("rb")
    worker = Worker(threads)
    while True:
        head = reader.read(HEAD.size)
        if len(head) < HEAD.size:
            return
        frame = bytearray(frame_size(head))
        frame[: HEAD.size] = head
        if reader.readinto(memoryview(frame)[HEAD.size :]) < len(frame) - HEAD.size:
            return
        message = decode(frame)
        if isinstance(message, Load):
            worker.load(message)
        else:
            sock.sendall(encode(worker.run(message)))
            if sum(g.x.shape[0] * g.x.shape[1] for g in message.groups) >= TRIM_AFTER_STEPS:
                release_memory()


if __name__ == "__main__":
    # Ctrl-C at a terminal reaches the whole process group: the server shuts down and
    # closes the socket, and that is what ends the worker (not a KeyboardInterrupt here)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    serve(int(sys.argv[1]), int(sys.argv[2]))
