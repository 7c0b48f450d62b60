"""The one path from the service to onnxruntime.

Every inference — predict, session steps, generation, ``/v2`` infer — calls
``Runner.run``. It takes whole sequences (ragged lengths allowed) with their starting
states and gives back per-step outputs and final states, running onnxruntime in worker
threads so the event loop never blocks. Sequences of equal length share one onnxruntime
run with their states stacked on the batch axis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.metrics import Metrics
from service.registry import LoadedModel, State


@dataclass(frozen=True)
class SeqResult:
    """One sequence's outputs ``[time, out]`` (model units) and its final state."""

    outputs: np.ndarray
    state: State


def run_sync(
    model: LoadedModel, seqs: Sequence[np.ndarray], states: Sequence[State]
) -> list[SeqResult]:
    """Run sequences through ``model``, grouping equal lengths into one batch. Blocking."""
    results: list[SeqResult | None] = [None] * len(seqs)
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs):
        by_length.setdefault(int(seq.shape[0]), []).append(i)
    for indices in by_length.values():
        x = np.stack([seqs[i] for i in indices])
        y, finals = model.run_batch(x, [states[i] for i in indices])
        for j, i in enumerate(indices):
            results[i] = SeqResult(outputs=y[j], state=finals[j])
    return [r for r in results if r is not None]


class Runner:
    """Runs inference off the event loop; the batcher in ``service.batcher`` plugs in here."""

    def __init__(self, metrics: Metrics | None = None, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ort")
        self._metrics = metrics

    async def run(
        self, model: LoadedModel, seqs: Sequence[np.ndarray], states: Sequence[State] | None = None
    ) -> list[SeqResult]:
        if states is None:
            zero = model.zero_state()
            states = [zero] * len(seqs)
        loop = asyncio.get_running_loop()
        queued = time.perf_counter()

        def work() -> tuple[list[SeqResult], float, float]:
            started = time.perf_counter()
            out = run_sync(model, seqs, states)
            return out, started - queued, time.perf_counter() - started

        results, waited, ran = await loop.run_in_executor(self._pool, work)
        if self._metrics is not None:
            self._metrics.observe_run(model.key, len(seqs), waited, ran)
        return results

    async def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
