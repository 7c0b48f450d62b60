"""The one path from the service to onnxruntime.

Every inference — predict, session steps, generation, ``/v2`` infer — calls
``Runner.run``. It takes whole sequences (ragged lengths allowed) with their starting
states and gives back per-step outputs and final states. Concurrent calls for one model
version are gathered by the sequence batcher (``service.inference.batcher``) into shared
onnxruntime runs, on worker threads or in child processes (``service.inference.worker``),
so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from service.inference.batcher import Batcher, Executor, SeqResult, ThreadExecutor, run_grouped
from service.inference.worker.pool import ProcessExecutor
from service.metrics import Metrics
from service.models.registry import LoadedModel, State

__all__ = ["Runner", "SeqResult", "run_sync"]


def run_sync(
    model: LoadedModel, seqs: Sequence[np.ndarray], states: Sequence[State] | None = None
) -> list[SeqResult]:
    """Run sequences through ``model`` in the calling thread, equal lengths batched. Blocking."""
    if states is None:
        zero = model.zero_state()
        states = [zero] * len(seqs)
    return run_grouped(model, seqs, states)


class Runner:
    """Runs inference off the event loop, batching concurrent calls per model version.

    ``max_batch_size`` and ``max_wait_us`` are the settings ``batch_max_size`` and
    ``batch_max_wait_us``; ``workers`` is the number of onnxruntime runs that may be in
    flight at once (per model version and in all). With ``process`` (the setting
    ``model_process``) each worker is a child process that loads the models itself with
    ``ort_threads`` threads; without, a thread running the models given to ``run``.
    ``max_run_steps`` (the setting) bounds the sequence-steps of one onnxruntime run.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        workers: int = 1,
        max_batch_size: int = 64,
        max_wait_us: int = 500,
        process: bool = False,
        ort_threads: int = 1,
        max_run_steps: int | None = None,
    ) -> None:
        self._executor: Executor
        self._processes: ProcessExecutor | None
        if process:
            self._processes = ProcessExecutor(workers, ort_threads, metrics, max_run_steps)
            self._executor = self._processes
        else:
            self._executor = ThreadExecutor(workers, metrics, max_run_steps)
            self._processes = None
        self._batcher = Batcher(
            self._executor,
            max_size=max_batch_size,
            max_wait_us=max_wait_us,
            max_inflight=workers,
            max_run_steps=max_run_steps,
        )

    async def start(self, models: Iterable[LoadedModel] = ()) -> None:
        """Start the worker processes (if any) with ``models`` loaded, before the first run."""
        if self._processes is not None:
            self._processes.prepare(models)
            await self._processes.start()

    def prepare(self, models: Iterable[LoadedModel]) -> None:
        """The model versions the worker processes keep loaded (after a model store reload)."""
        if self._processes is not None:
            self._processes.prepare(models)

    def run(
        self,
        model: LoadedModel,
        seqs: Sequence[np.ndarray],
        states: Sequence[State] | None = None,
        key: Hashable | None = None,
    ) -> asyncio.Future[list[SeqResult]]:
        """Outputs and final states for ``seqs`` from ``states`` (zero state when omitted).

        ``seqs`` are ``[time, features]`` float32 in the data's own units (the runner
        normalises them per onnxruntime run) or ``[time]`` int64 token ids. Each result's
        ``outputs`` are in model units, and ``wire`` holds regression outputs in data units.

        ``key`` (a session id) orders calls: two calls with one key never share a batch and
        run in the order they were made.

        Called in the running loop; await the future it returns (a plain function, not a
        coroutine: the step's hot path enters and resumes one coroutine less).
        """
        if states is None:
            zero = model.zero_state()
            states = [zero] * len(seqs)
        elif len(states) != len(seqs):
            raise ValueError(f"{len(seqs)} sequences but {len(states)} states")
        return self._batcher.for_model(model).submit(seqs, states, key)

    async def close(self) -> None:
        await self._executor.close()
