"""The sequence batcher: concurrent runs of one model version share onnxruntime runs.

Every ``Runner.run`` call becomes one *call* here: its sequences, their starting states
and a future. Calls for one model version wait in that version's queue and go to an
``Executor`` together, as one batch, with the states stacked on the batch axis: worker
threads here (``ThreadExecutor``) or child processes (``service.inference.worker``).

When to run:
- nothing in flight for the model: the queue is dispatched at the end of the event-loop
  iteration in which the call arrived, so a lone request never waits for company, and
  every request read off the sockets in that iteration shares its run;
- a run is in flight: calls gather until ``max_size`` sequences are queued, or the
  oldest has waited ``max_wait`` seconds and a worker is free, or the in-flight runs end.

Correctness rules:
- sequences of different lengths in one batch run as one onnxruntime run per length, so
  each final state is exactly that sequence's own (no padding);
- one onnxruntime run takes at most ``max_run_steps`` sequence-steps (sequences times
  their length), since its working memory grows with them: a batch never merges calls
  beyond that, and a call's sequences beyond it run as several runs (``runs_of``); one
  sequence longer than that runs alone (its length is bounded by the request limits);
- calls with the same ``key`` (a session id) never share a batch and never run
  concurrently; they run in submission order;
- when a batch of several calls fails, each call is retried alone, so only the call
  whose input breaks the model sees the error;
- a caller cancelled while queued leaves the queue; one cancelled mid-run is dropped from
  the delivery, and the rest of its batch is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

import numpy as np

from service.inference.memory import release_memory
from service.metrics import Metrics
from service.models.registry import LoadedModel, State


class SeqResult(NamedTuple):
    """One sequence's outputs ``[time, out]`` (model units) and its final state.

    ``wire`` is ``outputs`` in the data's own units for regression models (None for
    others), denormalised once per onnxruntime run rather than once per request.
    """

    outputs: np.ndarray
    state: State
    wire: np.ndarray | None = None


@dataclass(eq=False, slots=True)
class Call:
    """One ``ModelBatcher.submit``: its sequences, their starting states, its ordering key
    and the future its results go to. Executors get a batch as a list of these."""

    seqs: Sequence[np.ndarray]
    states: Sequence[State]
    key: Hashable | None
    future: asyncio.Future[list[SeqResult]]
    steps: int = 0
    """Its sequences' steps, all together."""
    queued: float = field(default_factory=time.perf_counter)


Outcome = list[SeqResult] | BaseException
"""A call's results, one per sequence, or the error that failed it."""


T = TypeVar("T")


def runs_of(rows: list[T], length: int, max_run_steps: int | None) -> list[list[T]]:
    """``rows`` (sequences of one ``length``) in runs of at most ``max_run_steps``
    sequence-steps each, one sequence at least."""
    if max_run_steps is None or len(rows) * length <= max_run_steps:
        return [rows]
    per = max(1, max_run_steps // max(1, length))
    return [rows[i : i + per] for i in range(0, len(rows), per)]


def run_grouped(
    model: LoadedModel,
    seqs: Sequence[np.ndarray],
    states: Sequence[State],
    queued: Sequence[float] | None = None,
    metrics: Metrics | None = None,
    max_run_steps: int | None = None,
) -> list[SeqResult]:
    """Run sequences (data units) through ``model``, one onnxruntime run per distinct
    length (several when they are more than ``max_run_steps`` sequence-steps). Blocking.

    ``queued`` (submission time per sequence) feeds the queue-wait metric when given.
    """
    n = len(seqs)
    if n == 1:
        groups: list[list[int]] = [[0]]
    else:
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(seqs):
            by_length.setdefault(int(seq.shape[0]), []).append(i)
        groups = [
            run
            for length, rows in by_length.items()
            for run in runs_of(rows, length, max_run_steps)
        ]
    results: list[SeqResult | None] = [None] * n
    for indices in groups:
        started = time.perf_counter()
        if len(indices) == 1:
            x = seqs[indices[0]][np.newaxis]
        else:  # one C call (np.stack is Python-level per array)
            x = np.array([seqs[i] for i in indices])
        # Unit conversions happen here, once per run on the worker, not once per request
        # on the event loop: numpy calls there cost several times their own time.
        x = model.model_inputs(x)
        y, finals = model.run_batch(x, [states[i] for i in indices])
        wire = model.wire_outputs(y)
        if metrics is not None:
            oldest = min(queued[i] for i in indices) if queued is not None else started
            metrics.observe_run(
                model.key, len(indices), started - oldest, time.perf_counter() - started
            )
        for j, i in enumerate(indices):
            results[i] = SeqResult(y[j], finals[j], None if wire is None else wire[j])
    if len(groups) > 1 and max_run_steps is not None and sum(len(s) for s in seqs) > max_run_steps:
        release_memory()
    return [r for r in results if r is not None]


def _run_calls(
    model: LoadedModel, calls: list[Call], metrics: Metrics | None, max_run_steps: int | None
) -> list[Outcome]:
    """The worker-thread side: one batch for all calls, or each call alone if that fails."""
    seqs: list[np.ndarray] = []
    states: list[State] = []
    queued: list[float] = []
    for call in calls:
        seqs.extend(call.seqs)
        states.extend(call.states)
        queued.extend([call.queued] * len(call.seqs))
    try:
        flat = run_grouped(model, seqs, states, queued, metrics, max_run_steps)
    except Exception as exc:
        if len(calls) == 1:
            return [exc]
    else:
        outcomes: list[Outcome] = []
        at = 0
        for call in calls:
            outcomes.append(flat[at : at + len(call.seqs)])
            at += len(call.seqs)
        return outcomes
    alone: list[Outcome] = []
    for call in calls:
        try:
            queued_alone = [call.queued] * len(call.seqs)
            alone.append(
                run_grouped(model, call.seqs, call.states, queued_alone, metrics, max_run_steps)
            )
        except Exception as exc:
            alone.append(exc)
    return alone


_Job = tuple[
    asyncio.AbstractEventLoop,
    Callable[[], list[Outcome]],
    Callable[[list[Outcome] | BaseException], None],
]


class Workers:
    """Threads that run batches, fed through one ``SimpleQueue``.

    Cheaper per batch than ``run_in_executor``: no ``concurrent.futures`` future, no
    Python-level condition variable; each result goes back to its loop with one
    ``call_soon_threadsafe``.
    """

    def __init__(self, count: int, name: str = "ort") -> None:
        self.count = count
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[], list[Outcome]],
        done: Callable[[list[Outcome] | BaseException], None],
    ) -> None:
        self._queue.put((loop, fn, done))

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            loop, fn, done = job
            result: list[Outcome] | BaseException
            try:
                result = fn()
            except BaseException as exc:
                result = exc
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting
                loop.call_soon_threadsafe(done, result)

    def shutdown(self) -> None:
        """Finish queued batches, then stop the threads. Blocking."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


Done = Callable[[list[Outcome] | BaseException], None]
"""Called on the event loop with each call's outcome (in order), or one error for all."""


class Executor(Protocol):
    """Where batches run: worker threads here, or a child process
    (``service.inference.worker``)."""

    def submit(
        self, loop: asyncio.AbstractEventLoop, model: LoadedModel, calls: list[Call], done: Done
    ) -> None:
        """Run ``calls`` as one batch and call ``done`` on ``loop`` with the outcomes."""

    async def close(self) -> None:
        """Finish the batches already submitted, then stop."""


class ThreadExecutor:
    """Batches run on ``Workers`` threads, in this process."""

    def __init__(
        self, count: int, metrics: Metrics | None = None, max_run_steps: int | None = None
    ) -> None:
        self._workers = Workers(count)
        self._metrics = metrics
        self._max_run_steps = max_run_steps

    def submit(
        self, loop: asyncio.AbstractEventLoop, model: LoadedModel, calls: list[Call], done: Done
    ) -> None:
        metrics, cap = self._metrics, self._max_run_steps
        self._workers.submit(loop, lambda: _run_calls(model, calls, metrics, cap), done)

    async def close(self) -> None:
        await asyncio.to_thread(self._workers.shutdown)


class ModelBatcher:
    """The queue and dispatch policy for one model version, on one event loop."""

    def __init__(
        self,
        model: LoadedModel,
        executor: Executor,
        max_size: int,
        max_wait: float,
        max_inflight: int = 1,
        max_run_steps: int | None = None,
    ) -> None:
        self.model = model
        self._executor = executor
        self._max_size = max_size
        self._max_steps = max_run_steps if max_run_steps is not None else 2**63
        self._max_wait = max_wait
        self._max_inflight = max_inflight
        self._pending: deque[Call] = deque()
        self._pending_seqs = 0
        self._inflight = 0
        self._inflight_keys: set[Hashable] = set()
        """Keys with a call in a running batch (at most one each: a key's calls never run
        concurrently)."""
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_soon = False

    @property
    def pending(self) -> int:
        """Calls waiting for a batch."""
        return len(self._pending)

    @property
    def inflight(self) -> int:
        """Batches running now."""
        return self._inflight

    def submit(
        self, seqs: Sequence[np.ndarray], states: Sequence[State], key: Hashable | None = None
    ) -> asyncio.Future[list[SeqResult]]:
        """Queue one call; its future resolves with its results.

        A plain function returning the future, not a coroutine around it: one layer less
        for every step to enter and, when the batch answers, to resume. A caller cancelled
        while waiting cancels the future; a queued call whose future is done is dropped
        when the next batch is taken (``_start_batch``), and a running one is ignored when
        its batch answers (``_finish``).
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        steps = int(seqs[0].shape[0]) if len(seqs) == 1 else sum(int(s.shape[0]) for s in seqs)
        call = Call(seqs, states, key, loop.create_future(), steps)
        self._pending.append(call)
        self._pending_seqs += len(seqs)
        if not self._flush_soon:
            # Dispatch at the end of this loop iteration, not now: every request that this
            # iteration reads off its socket joins the batch, and nothing waits for a timer.
            self._flush_soon = True
            loop.call_soon(self._flush)
        return call.future

    def _flush(self) -> None:
        self._flush_soon = False
        self._dispatch()

    def _dispatch(self) -> None:
        while self._pending and self._inflight < self._max_inflight:
            if self._inflight and self._pending_seqs < self._max_size:
                oldest = self._pending[0].queued
                due = oldest + self._max_wait - time.perf_counter()
                if due > 0:
                    self._arm(due)
                    return
            if not self._start_batch():
                return
        if not self._pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, due: float) -> None:
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _start_batch(self) -> bool:
        """Take queued calls (FIFO, one per key, no key already running) into one batch of
        at most ``max_size`` sequences and ``max_run_steps`` steps (or one call)."""
        batch: list[Call] = []
        keys: set[Hashable] = set()
        skipped: set[Hashable] = set()
        size = 0
        steps = 0
        max_steps = self._max_steps
        kept: deque[Call] = deque()
        pending = self._pending
        while pending:
            call = pending.popleft()
            if call.future.done():  # cancelled after it was queued
                self._pending_seqs -= len(call.seqs)
                continue
            key = call.key
            n = len(call.seqs)
            blocked = key is not None and (
                key in keys or key in skipped or key in self._inflight_keys
            )
            if blocked or (batch and (size + n > self._max_size or steps + call.steps > max_steps)):
                kept.append(call)
                if key is not None:
                    skipped.add(key)
                if size >= self._max_size or steps >= max_steps:
                    break
                continue
            batch.append(call)
            size += n
            steps += call.steps
            if key is not None:
                keys.add(key)
        kept.extend(pending)
        self._pending = kept
        if not batch:
            return False
        self._pending_seqs -= size
        self._inflight += 1
        self._inflight_keys |= keys
        assert self._loop is not None
        self._executor.submit(
            self._loop, self.model, batch, lambda result: self._finish(batch, keys, result)
        )
        return True

    def _finish(
        self, batch: list[Call], keys: set[Hashable], result: list[Outcome] | BaseException
    ) -> None:
        self._inflight -= 1
        self._inflight_keys -= keys
        outcomes = [result] * len(batch) if isinstance(result, BaseException) else result
        for call, outcome in zip(batch, outcomes, strict=True):
            if call.future.done():
                continue
            if isinstance(outcome, BaseException):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)
        self._dispatch()


class Batcher:
    """One ``ModelBatcher`` per model version (by object, so a reloaded version is new)."""

    def __init__(
        self,
        executor: Executor,
        max_size: int = 64,
        max_wait_us: int = 500,
        max_inflight: int = 1,
        max_run_steps: int | None = None,
    ) -> None:
        self._executor = executor
        self._max_size = max_size
        self._max_wait = max_wait_us / 1e6
        self._max_inflight = max_inflight
        self._max_run_steps = max_run_steps
        self._models: dict[str, ModelBatcher] = {}

    def for_model(self, model: LoadedModel) -> ModelBatcher:
        mb = self._models.get(model.key)
        if mb is None or mb.model is not model:
            mb = ModelBatcher(
                model,
                self._executor,
                self._max_size,
                self._max_wait,
                self._max_inflight,
                self._max_run_steps,
            )
            self._models[model.key] = mb
        return mb
