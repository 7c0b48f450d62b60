"""The server's side of the model worker processes: ``ProcessExecutor``.

Why child processes: on a worker thread in the server's process, a batch's numpy and
onnxruntime calls need the GIL that the event loop holds nearly all the time under load.
One run of 20 sequences costs ~140 us of CPU alone and 550-600 us beside a busy Python
thread, and the loop pays for the hand-offs too. A child process has a GIL of its own.

Each worker is one child (``service.inference.worker.child``) on one end of a Unix socket
pair; messages are ``service.inference.worker.protocol``'s. The server stacks the calls'
sequences by length (``stack``) and splits the answers per call and sequence (``split``);
the child runs them. A batch of one call that follows another batch of one call (a quiet
server) runs on a thread in the server's process instead (``ThreadExecutor``): with the
loop that idle, the GIL costs little, and a round trip to the child costs ~300 us of
wake-ups at concurrency 1. When a child dies, the batch it was running fails with 503
(``NotReady``, no session advanced) and the next batch starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import cast

import numpy as np

from service.errors import InferenceError, NotReady
from service.inference.batcher import Call, Done, Outcome, SeqResult, ThreadExecutor, runs_of
from service.inference.worker.protocol import (
    HEAD,
    Failure,
    Group,
    GroupOut,
    Load,
    Ran,
    RanAlone,
    Run,
    Version,
    decode,
    encode,
    frame_size,
    stacked,
)
from service.metrics import Metrics
from service.models.registry import LoadedModel, State

log = logging.getLogger(__name__)

_F32 = np.dtype(np.float32)
_Owners = list[list[tuple[int, int]]]


@dataclass(eq=False)
class _Job:
    loop: asyncio.AbstractEventLoop
    model: LoadedModel
    calls: list[Call]
    done: Done
    owners: list[list[tuple[int, int]]] = field(default_factory=list)
    """Per group, the (call, sequence) of each row."""
    simple: bool = False
    """One group, row i the only sequence of call i (``stack``'s common case)."""
    sent: float = 0.0


def stack(
    model: LoadedModel, calls: Sequence[Call], max_run_steps: int | None = None
) -> tuple[list[Group], _Owners, bool]:
    """Group the calls' sequences by length (in runs of at most ``max_run_steps``
    sequence-steps, ``batcher.runs_of``) and stack each group (inputs and states), with
    the (call, sequence) of each row.

    Also says whether the batch is the simple case: every call one sequence, all of one
    length. C-level array calls only: this runs on the event loop for every batch.
    """
    names = model.state_names
    seqs = [call.seqs[0] for call in calls if len(call.seqs) == 1]
    lengths = {int(x.shape[0]) for x in seqs}
    simple = len(seqs) == len(calls) and len(lengths) == 1
    if simple and (max_run_steps is None or len(calls) * lengths.pop() <= max_run_steps):
        # the common case, a batch of single steps: one group, one row per call
        owners = [list(zip(range(len(calls)), repeat(0), strict=False))]
        states = [call.states[0] for call in calls]
        by_name = {n: stacked(list(map(itemgetter(n), states)), _F32) for n in names}
        calls_of_rows = np.arange(len(calls), dtype=np.int32)
        return [Group(stacked(seqs), by_name, calls_of_rows)], owners, True
    by_length: dict[int, list[tuple[int, int]]] = {}
    for ci, call in enumerate(calls):
        for si, seq in enumerate(call.seqs):
            by_length.setdefault(int(seq.shape[0]), []).append((ci, si))
    groups: list[Group] = []
    owners = [
        run for length, rows in by_length.items() for run in runs_of(rows, length, max_run_steps)
    ]
    for rows in owners:
        x = stacked([calls[ci].seqs[si] for ci, si in rows])
        by_name = {n: stacked([calls[ci].states[si][n] for ci, si in rows], _F32) for n in names}
        groups.append(Group(x, by_name, np.array([ci for ci, _ in rows], dtype=np.int32)))
    return groups, owners, False


def split(out: GroupOut) -> list[SeqResult]:
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
    job: _Job, outs: Sequence[GroupOut | None], call: int | None, metrics: Metrics | None
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
            metrics.observe_run(job.model.key, len(rows), job.sent - oldest, out.seconds)
        for (ci, si), result in zip(rows, split(out), strict=True):
            results[ci][si] = result
    return results


def _exception(error: Failure) -> BaseException:
    return InferenceError(error.message) if error.inference else RuntimeError(error.message)


def outcomes(job: _Job, reply: object, metrics: Metrics | None) -> list[Outcome] | BaseException:
    """A reply as the job's outcomes, one per call."""
    if isinstance(reply, Failure):
        return _exception(reply)
    if isinstance(reply, Ran):
        if job.simple:
            (out,) = reply.outs
            if metrics is not None:
                oldest = min(call.queued for call in job.calls)
                metrics.observe_run(job.model.key, len(job.calls), job.sent - oldest, out.seconds)
            return [[r] for r in split(out)]
        results = _results(job, reply.outs, None, metrics)
        return [[r for r in rs if r is not None] for rs in results]
    if not isinstance(reply, RanAlone):
        raise TypeError(f"not a reply: {type(reply).__name__}")
    per_call: list[Outcome] = []
    for ci, entry in enumerate(reply.per_call):
        if isinstance(entry, Failure):
            per_call.append(_exception(entry))
        else:
            own = _results(job, entry, ci, metrics)[ci]
            per_call.append([r for r in own if r is not None])
    return per_call


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
                "service.inference.worker.child",
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
        while len(buf) >= HEAD.size:
            end = frame_size(buf)
            if len(buf) < end:
                return
            if len(buf) == end:  # the usual case: the buffer is the reply, no copy
                reply, buf = buf, bytearray()
                self._buffer = buf
            else:  # its own bytearray: the arrays taken from it are writable
                reply = buf[:end]
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

    def __init__(
        self,
        count: int,
        threads: int = 1,
        metrics: Metrics | None = None,
        max_run_steps: int | None = None,
    ) -> None:
        self._local = ThreadExecutor(count, metrics, max_run_steps)
        self._max_run_steps = max_run_steps
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
            Version(m.key, m.manifest.sha256, m.manifest, str(m.onnx_path))
            for m in wanted.values()
            if child.loaded.get(m.key) != m.manifest.sha256
        ]
        stale = [k for k in child.loaded if k not in wanted]
        if not missing and not stale:
            return
        child.send(encode(Load(missing, list(wanted))))
        child.loaded = {m.key: m.manifest.sha256 for m in wanted.values()}

    def submit(
        self, loop: asyncio.AbstractEventLoop, model: LoadedModel, calls: list[Call], done: Done
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
            groups, job.owners, job.simple = stack(job.model, job.calls, self._max_run_steps)
        except ValueError:
            if len(job.calls) == 1:
                error = InferenceError("the sequences do not fit the model's input shape")
                job.loop.call_soon(job.done, error)
            else:  # some call is malformed: run each alone so only that one fails
                self._queue.extendleft(reversed(self._one_by_one(job)))
            return
        if not groups:  # calls without sequences: nothing to run
            nothing: list[Outcome] = [[] for _ in job.calls]
            job.loop.call_soon(job.done, nothing)
            return
        if child.loaded.get(job.model.key) != job.model.manifest.sha256:
            self._sync(child, job.model)
        job.sent = time.perf_counter()
        child.job = job
        self.child_batches += 1
        child.send(encode(Run(job.model.key, groups)))

    @staticmethod
    def _one_by_one(job: _Job) -> list[_Job]:
        """One job per call; ``job.done`` gets all their outcomes once the last is in."""
        outcomes: list[Outcome] = [[] for _ in job.calls]
        left = [len(job.calls)]

        def one(i: int) -> Done:
            def done(result: list[Outcome] | BaseException) -> None:
                outcomes[i] = result if isinstance(result, BaseException) else result[0]
                left[0] -= 1
                if not left[0]:
                    job.done(outcomes)

            return done

        return [_Job(job.loop, job.model, [call], one(i)) for i, call in enumerate(job.calls)]

    def finished(self, child: _Child, job: _Job, reply: bytearray) -> None:
        try:
            result = outcomes(job, decode(reply), self._metrics)
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
