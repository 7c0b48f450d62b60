"""onnxruntime in child processes: batches run outside the server's process and its GIL.

Why: on a worker thread in the server's process, a batch's numpy and onnxruntime calls
need the GIL that the event loop holds nearly all the time under load. One run of 20
sequences costs ~140 us of CPU alone and 550-600 us beside a busy Python thread, and the
loop pays for the hand-offs too. A child process has a GIL of its own.

Each worker is one child (``python -m service.inference.model_process FD THREADS``) on one end of a
Unix socket pair, private to the two processes. A frame (``_pack``) is two 4-byte
little-endian lengths, then a small pickle of the message with its arrays replaced by
their dtype and shape, then the arrays' bytes: pickling the arrays themselves costs 3-4
times more, on the event loop. A child runs one batch at a time and answers in order, so
replies carry no ids. Messages, with the arrays they carry:

- parent → child ``("models", [(key, sha256, manifest, onnx_path), ...], live_keys)``: load
  these versions, forget any key not in ``live_keys``; no arrays, no reply.
- parent → child ``("run", key, names, groups)``: per group of sequences of one length,
  the arrays ``x`` (stacked), each state in ``names`` order (stacked), and the call that
  owns each row.
- child → parent ``("ok", runs)``: per group, ``(has_wire, seconds)`` and the arrays ``y``,
  ``wire`` (when it has one) and each final state, batch first.
- child → parent ``("alone", per_call)`` when the batch failed and each call was run
  alone: a call's entry is an error, or per group ``None`` (no rows of that call) or
  ``(has_wire, seconds)``; or ``("error", error)`` for a batch of one call. An error is
  ``(is_inference, message)``.

The parent stacks and splits; the child normalises, runs and denormalises. A batch of one
call that follows another batch of one call (a quiet server) runs on a thread in the
server's process instead (``ThreadExecutor``): with the loop that idle, the GIL costs
little, and a round trip to the child costs ~300 us of wake-ups at concurrency 1. When a
child dies, the batch it was running fails with 503 (``NotReady``, no session advanced)
and the next batch starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np

from service.errors import InferenceError, ModelStoreError, NotReady
from service.inference.batcher import Done, SeqResult, ThreadExecutor, _Call, _Outcome
from service.metrics import Metrics
from service.models.registry import LoadedModel, State, load_model
from service.models.store import StoredVersion

log = logging.getLogger(__name__)

FRAME = struct.Struct("<II")
"""A frame's head: the length of the pickled message, and of the array bytes after it."""


class _Raw(NamedTuple):
    """An array as its dtype, shape and C-order bytes: how the parent sends rows stacked
    without building the stacked array (``_stacked``)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


_Error = tuple[bool, str]
_GroupOut = tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray], float]
_Group = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]
_Sent = tuple[np.ndarray | _Raw, dict[str, np.ndarray | _Raw], np.ndarray]
"""A group as the parent sends it (``_stack``); the child gets it as a ``_Group``."""
_Owners = list[list[tuple[int, int]]]

_F32 = np.dtype(np.float32)


def _pack(message: object, arrays: Sequence[np.ndarray | _Raw] = ()) -> bytes:
    """One frame: ``message`` and ``arrays`` (in order; the message says what they are)."""
    specs: list[tuple[str, tuple[int, ...]]] = []
    body: list[bytes] = []
    for a in arrays:
        if isinstance(a, _Raw):
            specs.append((a.dtype, a.shape))
            body.append(a.data)
        else:
            specs.append((a.dtype.str, a.shape))
            body.append(a.tobytes())
    head = pickle.dumps((message, specs), protocol=5)
    return b"".join([FRAME.pack(len(head), sum(map(len, body))), head, *body])


def _stacked(rows: list[np.ndarray], dtype: np.dtype[Any] | None = None) -> np.ndarray | _Raw:
    """``np.array(rows, dtype)``, as joined bytes when every row is a C-contiguous array of
    one dtype (``dtype``, or the first row's) and one shape: one copy instead of two (the
    stack, then ``tobytes``), and no numpy array to build on the event loop."""
    first = rows[0]
    shape = first.shape
    want = first.dtype if dtype is None else dtype
    for row in rows:
        if row.dtype is not want or row.shape != shape:
            return np.array(rows, dtype=dtype)
    try:
        data = b"".join(rows)  # type: ignore[arg-type]  # arrays are bytes-like (buffers)
    except TypeError:  # a row that is not C-contiguous is no simple buffer
        return np.array(rows, dtype=dtype)
    return _Raw(want.str, (len(rows), *shape), data)


def _unpack(frame: bytes | bytearray) -> tuple[Any, list[np.ndarray]]:
    """A frame's message and arrays. The arrays are views on ``frame`` (writable when it is
    a ``bytearray``)."""
    size, _ = FRAME.unpack_from(frame)
    at = FRAME.size + size
    message, specs = pickle.loads(frame[FRAME.size : at])
    arrays = []
    for dtype, shape in specs:
        arr = np.frombuffer(frame, dtype, math.prod(shape), at).reshape(shape)
        at += arr.nbytes
        arrays.append(arr)
    return message, arrays


def _put_outs(
    outs: Sequence[_GroupOut | None], names: Sequence[str], arrays: list[np.ndarray]
) -> list[Any]:
    """Group outputs as message parts, their arrays appended to ``arrays`` (final states
    in ``names`` order)."""
    parts: list[Any] = []
    for out in outs:
        if out is None:
            parts.append(None)
            continue
        y, wire, finals, seconds = out
        arrays.append(y)
        if wire is not None:
            arrays.append(wire)
        arrays.extend(finals[name] for name in names)
        parts.append((wire is not None, seconds))
    return parts


def _take_outs(
    parts: Sequence[Any], names: Sequence[str], arrays: Iterator[np.ndarray]
) -> list[_GroupOut | None]:
    """``_put_outs`` undone: ``arrays`` is consumed in order."""
    outs: list[_GroupOut | None] = []
    for part in parts:
        if part is None:
            outs.append(None)
            continue
        has_wire, seconds = part
        y = next(arrays)
        wire = next(arrays) if has_wire else None
        outs.append((y, wire, {name: next(arrays) for name in names}, seconds))
    return outs


# -- the child ---------------------------------------------------------------------------


def _run_group(model: LoadedModel, x: np.ndarray, states: dict[str, np.ndarray]) -> _GroupOut:
    started = time.perf_counter()
    y, finals = model.run_stacked(model.model_inputs(x), states)
    # batch-first and contiguous, so the parent's row copies are plain memory copies
    finals = {name: np.ascontiguousarray(arr) for name, arr in finals.items()}
    return y, model.wire_outputs(y), finals, time.perf_counter() - started


def _error(exc: Exception) -> _Error:
    return isinstance(exc, InferenceError), str(exc) or type(exc).__name__


def run_groups(model: LoadedModel, groups: Sequence[_Group]) -> tuple[str, Any]:
    """The child's answer to one ``run`` message (see the module docstring)."""
    try:
        return "ok", [_run_group(model, x, states) for x, states, _ in groups]
    except Exception as exc:
        owners = sorted({int(c) for _, _, calls in groups for c in calls})
        if len(owners) == 1:
            return "error", _error(exc)
    per_call: list[list[_GroupOut | None] | _Error] = []
    for call in range(owners[-1] + 1):
        outs: list[_GroupOut | None] = []
        try:
            for x, states, calls in groups:
                rows = calls == call
                if not rows.any():
                    outs.append(None)
                    continue
                mine = {name: arr[rows] for name, arr in states.items()}
                outs.append(_run_group(model, x[rows], mine))
        except Exception as exc:
            per_call.append(_error(exc))
        else:
            per_call.append(outs)
    return "alone", per_call


def _reply(model: LoadedModel, names: list[str], groups: Sequence[_Group]) -> bytes:
    """``run_groups`` as a frame (final states in ``names`` order)."""
    kind, body = run_groups(model, groups)
    arrays: list[np.ndarray] = []
    if kind == "ok":
        return _pack(("ok", names, _put_outs(body, names, arrays)), arrays)
    if kind == "alone":
        per_call = [e if isinstance(e, tuple) else _put_outs(e, names, arrays) for e in body]
        return _pack(("alone", names, per_call), arrays)
    return _pack(("error", body))


def child_main(fd: int, threads: int) -> None:
    """Serve ``models`` and ``run`` messages on socket ``fd`` until the parent closes it."""
    sock = socket.socket(fileno=fd)
    reader = sock.makefile("rb")
    models: dict[str, LoadedModel] = {}
    failed: dict[str, str] = {}
    while True:
        head = reader.read(FRAME.size)
        if len(head) < FRAME.size:
            return
        size, body = FRAME.unpack(head)
        message, arrays = _unpack(head + reader.read(size + body))
        if message[0] == "models":
            _, versions, live = message
            for key in [k for k in models if k not in live]:
                del models[key]
            for key, _sha, manifest, path in versions:
                try:
                    models[key] = load_model(StoredVersion(manifest, Path(path)), threads)
                    failed.pop(key, None)
                except ModelStoreError as exc:
                    failed[key] = str(exc)
            continue
        _, key, names, count = message
        width = len(names) + 2
        groups = [
            (
                arrays[i],
                dict(zip(names, arrays[i + 1 : i + width - 1], strict=True)),
                arrays[i + width - 1],
            )
            for i in range(0, count * width, width)
        ]
        model = models.get(key)
        if model is None:
            error = (True, failed.get(key, f"model {key} is not loaded in the model process"))
            sock.sendall(_pack(("error", error)))
        else:
            sock.sendall(_reply(model, names, groups))


# -- the parent --------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    loop: asyncio.AbstractEventLoop
    model: LoadedModel
    calls: list[_Call]
    done: Done
    owners: list[list[tuple[int, int]]] = field(default_factory=list)
    """Per group, the (call, sequence) of each row."""
    simple: bool = False
    """One group, row i the only sequence of call i (``_stack``'s common case)."""
    sent: float = 0.0


def _stack(model: LoadedModel, calls: Sequence[_Call]) -> tuple[list[_Sent], _Owners, bool]:
    """Group the calls' sequences by length and stack each group (inputs and states).

    Also says whether the batch is the simple case: every call one sequence, all of one
    length. C-level array calls only: this runs on the event loop for every batch.
    """
    names = model.state_names
    seqs = [call.seqs[0] for call in calls if len(call.seqs) == 1]
    if len(seqs) == len(calls) and len({int(x.shape[0]) for x in seqs}) == 1:
        # the common case, a batch of single steps: one group, one row per call
        owners = [list(zip(range(len(calls)), repeat(0), strict=False))]
        states = [call.states[0] for call in calls]
        stacked = {n: _stacked(list(map(itemgetter(n), states)), _F32) for n in names}
        calls_of_rows = np.arange(len(calls), dtype=np.int32)
        return [(_stacked(seqs), stacked, calls_of_rows)], owners, True
    by_length: dict[int, list[tuple[int, int]]] = {}
    for ci, call in enumerate(calls):
        for si, seq in enumerate(call.seqs):
            by_length.setdefault(int(seq.shape[0]), []).append((ci, si))
    groups: list[_Sent] = []
    owners = list(by_length.values())
    for rows in owners:
        x = _stacked([calls[ci].seqs[si] for ci, si in rows])
        stacked = {n: _stacked([calls[ci].states[si][n] for ci, si in rows], _F32) for n in names}
        groups.append((x, stacked, np.array([ci for ci, _ in rows], dtype=np.int32)))
    return groups, owners, False


def _split(out: _GroupOut) -> list[SeqResult]:
    """One group's outputs as per-row results. Each row's state is its own copy: an idle
    session must not keep the whole batch's array alive."""
    y, wire, finals, _ = out
    names = list(finals)
    copies = [list(map(np.ndarray.copy, finals[n])) for n in names]
    states: list[State]
    if len(names) == 2:  # an LSTM's h and c: a dict display is 3x cheaper than dict(zip())
        first, second = names
        states = [{first: a, second: b} for a, b in zip(*copies, strict=True)]
    elif len(names) == 1:  # a GRU's h
        (only,) = names
        states = [{only: a} for a in copies[0]]
    else:
        states = [dict(zip(names, row, strict=True)) for row in zip(*copies, strict=True)]
    wires = repeat(None) if wire is None else list(wire)
    # tuple.__new__ builds the named tuples in C (SeqResult(...) is a Python-level call)
    return list(map(tuple.__new__, repeat(SeqResult), zip(y, states, wires, strict=False)))


def _results(
    job: _Job, outs: Sequence[_GroupOut | None], call: int | None, metrics: Metrics | None
) -> list[list[SeqResult | None]]:
    """Split group outputs into per-call, per-sequence results (``call``: only that one's rows)."""
    results: list[list[SeqResult | None]] = [[None] * len(c.seqs) for c in job.calls]
    for rows, out in zip(job.owners, outs, strict=True):
        if out is None:
            continue
        if call is not None:
            rows = [r for r in rows if r[0] == call]
        if metrics is not None:
            oldest = min(job.calls[ci].queued for ci, _ in rows)
            metrics.observe_run(job.model.key, len(rows), job.sent - oldest, out[3])
        for (ci, si), result in zip(rows, _split(out), strict=True):
            results[ci][si] = result
    return results


def _exception(error: _Error) -> BaseException:
    is_inference, message = error
    return InferenceError(message) if is_inference else RuntimeError(message)


def _outcomes(
    job: _Job, frame: bytearray, metrics: Metrics | None
) -> list[_Outcome] | BaseException:
    """A reply frame as the job's outcomes."""
    (kind, *rest), arrays = _unpack(frame)
    if kind == "error":
        return _exception(rest[0])
    names, parts = rest
    taken = iter(arrays)
    if kind == "ok":
        body = _take_outs(parts, names, taken)
        if job.simple:
            (out,) = body
            assert out is not None
            if metrics is not None:
                oldest = min(call.queued for call in job.calls)
                metrics.observe_run(job.model.key, len(job.calls), job.sent - oldest, out[3])
            return [[r] for r in _split(out)]
        return [[r for r in rs if r is not None] for rs in _results(job, body, None, metrics)]
    outcomes: list[_Outcome] = []
    for ci, entry in enumerate(parts):
        if isinstance(entry, tuple):
            outcomes.append(_exception(entry))
        else:
            own = _results(job, _take_outs(entry, names, taken), ci, metrics)[ci]
            outcomes.append([r for r in own if r is not None])
    return outcomes


class _Child(asyncio.Protocol):
    """One child process and its end of the socket pair."""

    def __init__(self, pool: ProcessExecutor) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.job: _Job | None = None
        self.loaded: dict[str, str] = {}
        self.alive = False
        self._buffer = bytearray()

    async def start(self, threads: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.inference.model_process",
                str(theirs.fileno()),
                str(threads),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self, sock=ours)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.alive = True

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while len(buf) >= FRAME.size:
            size, body = FRAME.unpack_from(buf)
            end = FRAME.size + size + body
            if len(buf) < end:
                return
            reply = buf[:end]  # its own bytearray: the arrays taken from it are writable
            del buf[:end]
            job, self.job = self.job, None
            if job is not None:
                self._pool.finished(self, job, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.transport = None
        job, self.job = self.job, None
        self._pool.lost(self, job)

    async def stop(self, grace: float) -> None:
        """Close the socket and end the child (SIGTERM: a child still importing its
        libraries would only read the end of its socket once done); SIGKILL after
        ``grace`` seconds."""
        if self.transport is not None:
            self.transport.close()
        if self.process is not None:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


class ProcessExecutor:
    """``count`` child processes, each running one batch at a time (``batcher.Executor``)."""

    def __init__(self, count: int, threads: int = 1, metrics: Metrics | None = None) -> None:
        self._local = ThreadExecutor(count, metrics)
        self._lone_before = False
        self.child_batches = 0
        """Batches sent to a child so far."""
        self._count = count
        self._threads = threads
        self._metrics = metrics
        self._children: list[_Child] = []
        self._starting: asyncio.Task[None] | None = None
        self._queue: deque[_Job] = deque()
        self._versions: dict[str, LoadedModel] = {}
        self._closed = False
        self._drained: asyncio.Event | None = None

    def _busy(self) -> bool:
        return any(c.job is not None for c in self._children)

    @property
    def pids(self) -> list[int]:
        """The live children's process ids."""
        return [c.process.pid for c in self._children if c.alive and c.process is not None]

    async def start(self) -> None:
        """Start the children now rather than on the first batch. Raises if one cannot."""
        await self._spawn()

    def prepare(self, models: Iterable[LoadedModel]) -> None:
        """The versions to keep loaded in every child (after a store load or reload)."""
        self._versions = {m.key: m for m in models}
        for child in self._children:
            if child.alive:
                self._sync(child)

    def _sync(self, child: _Child, extra: LoadedModel | None = None) -> None:
        """Send ``child`` the versions it lacks; drop the ones no longer wanted."""
        wanted = dict(self._versions)
        if extra is not None:
            wanted[extra.key] = extra
        missing = [
            (m.key, m.manifest.sha256, m.manifest, str(m.onnx_path))
            for m in wanted.values()
            if child.loaded.get(m.key) != m.manifest.sha256
        ]
        stale = [k for k in child.loaded if k not in wanted]
        if not missing and not stale:
            return
        child.send(_pack(("models", missing, list(wanted))))
        child.loaded = {m.key: m.manifest.sha256 for m in wanted.values()}

    def submit(
        self, loop: asyncio.AbstractEventLoop, model: LoadedModel, calls: list[_Call], done: Done
    ) -> None:
        if self._closed:
            loop.call_soon(done, NotReady("the server is shutting down"))
            return
        # A lone call after a lone call: the server is quiet, and a thread here answers
        # sooner than the child. Under load a lone call follows a batch (the first request
        # back after the batch's answers) and goes to the child with the rest.
        quiet = len(calls) == 1 and self._lone_before
        self._lone_before = len(calls) == 1
        if quiet:
            self._local.submit(loop, model, calls, done)
            return
        self._queue.append(_Job(loop, model, calls, done))
        self._pump()

    def _pump(self) -> None:
        for child in self._children:
            while child.alive and child.job is None and self._queue:
                self._send(child, self._queue.popleft())
        if self._queue and len(self._children) < self._count and self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())

    def _send(self, child: _Child, job: _Job) -> None:
        """Send ``job`` to ``child``, or settle it without the child."""
        try:
            groups, job.owners, job.simple = _stack(job.model, job.calls)
        except ValueError:
            if len(job.calls) == 1:
                error = InferenceError("the sequences do not fit the model's input shape")
                job.loop.call_soon(job.done, error)
            else:  # some call is malformed: run each alone so only that one fails
                self._queue.extendleft(reversed(self._one_by_one(job)))
            return
        if not groups:  # calls without sequences: nothing to run
            nothing: list[_Outcome] = [[] for _ in job.calls]
            job.loop.call_soon(job.done, nothing)
            return
        if child.loaded.get(job.model.key) != job.model.manifest.sha256:
            self._sync(child, job.model)
        names = job.model.state_names
        arrays: list[np.ndarray | _Raw] = []
        for x, states, calls in groups:
            arrays.append(x)
            arrays.extend(states[name] for name in names)
            arrays.append(calls)
        job.sent = time.perf_counter()
        child.job = job
        self.child_batches += 1
        child.send(_pack(("run", job.model.key, names, len(groups)), arrays))

    @staticmethod
    def _one_by_one(job: _Job) -> list[_Job]:
        """One job per call; ``job.done`` gets all their outcomes once the last is in."""
        outcomes: list[_Outcome] = [[] for _ in job.calls]
        left = [len(job.calls)]

        def one(i: int) -> Done:
            def done(result: list[_Outcome] | BaseException) -> None:
                outcomes[i] = result if isinstance(result, BaseException) else result[0]
                left[0] -= 1
                if not left[0]:
                    job.done(outcomes)

            return done

        return [_Job(job.loop, job.model, [call], one(i)) for i, call in enumerate(job.calls)]

    def finished(self, child: _Child, job: _Job, reply: bytearray) -> None:
        try:
            result = _outcomes(job, reply, self._metrics)
        except Exception as exc:  # a reply that does not fit the batch: a bug, not the input
            log.exception("model process reply")
            result = exc
        job.done(result)
        self._pump()
        if self._drained is not None and not self._busy():
            self._drained.set()

    def lost(self, child: _Child, job: _Job | None) -> None:
        if child in self._children:
            self._children.remove(child)
        if not self._closed:
            pid = child.process.pid if child.process is not None else None
            log.warning("model process %s exited%s", pid, " during a batch" if job else "")
            if self._metrics is not None:
                self._metrics.model_process_exits.inc()
        if job is not None and not self._closed:
            job.done(NotReady("the model worker process exited; retry"))
        if not self._closed:
            self._pump()
        elif self._drained is not None and not self._busy():
            self._drained.set()

    async def _spawn(self) -> None:
        """Start children until there are ``count``. Raises if one cannot start."""
        while len(self._children) < self._count and not self._closed:
            child = _Child(self)
            try:
                await child.start(self._threads)
            except BaseException:
                await child.stop(1.0)
                raise
            self._children.append(child)
            self._sync(child)

    async def _start(self) -> None:
        """``_spawn`` for the batches waiting: if it fails, they fail with 503."""
        try:
            await self._spawn()
        except Exception as exc:
            log.exception("cannot start a model process")
            jobs, self._queue = list(self._queue), deque()
            for job in jobs:
                job.done(NotReady(f"cannot start a model process: {exc}"))
        finally:
            self._starting = None
        self._pump()

    async def close(self) -> None:
        """Let the running batches finish, then stop the children."""
        self._closed = True
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        if self._busy():
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 10)
        for job in self._queue:
            job.done(NotReady("the server is shutting down"))
        self._queue.clear()
        await asyncio.gather(*(c.stop(5.0) for c in list(self._children)))
        self._children.clear()
        await self._local.close()


if __name__ == "__main__":
    # Ctrl-C at a terminal reaches the whole process group: the server shuts down and
    # closes the socket, and that is what ends the child (not a KeyboardInterrupt here)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    child_main(int(sys.argv[1]), int(sys.argv[2]))
