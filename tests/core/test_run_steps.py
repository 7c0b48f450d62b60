"""The cap on sequence-steps per onnxruntime run (``max_run_steps``): a request's
sequences beyond it run as several runs with the same results, and the batcher merges no
calls beyond it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from service.inference.batcher import Call, Done, ModelBatcher, Outcome, SeqResult, runs_of
from service.inference.runner import Runner
from service.inference.worker.pool import stack
from service.models.registry import LoadedModel, ModelRegistry, State
from tests.core.test_batcher import assert_same, random_input, random_state

CAP = 7


def test_runs_of_bounds_each_run() -> None:
    rows = list(range(10))
    assert runs_of(rows, 3, None) == [rows]
    assert runs_of(rows, 3, 30) == [rows]
    assert runs_of(rows, 3, 7) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert runs_of(rows, 50, 7) == [[i] for i in rows]  # one sequence longer than the cap


def _ragged(model: LoadedModel, rng: np.random.Generator) -> tuple[list[np.ndarray], list[State]]:
    lengths = [1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 5, 7, 8, 12, 12, 1, 2, 3]
    seqs = [random_input(model, rng, n) for n in lengths]
    return seqs, [random_state(model, rng) for _ in seqs]


def _calls(seqs: list[np.ndarray], states: list[State], per_call: int) -> list[Call]:
    loop = asyncio.new_event_loop()
    try:
        return [
            Call(seqs[i : i + per_call], states[i : i + per_call], None, loop.create_future())
            for i in range(0, len(seqs), per_call)
        ]
    finally:
        loop.close()


@pytest.mark.parametrize("per_call", [1, 4, 100])
def test_stack_caps_every_group(registry: ModelRegistry, per_call: int) -> None:
    model = registry.get("tiny_lstm")
    seqs, states = _ragged(model, np.random.default_rng(1))
    groups, owners, _ = stack(model, _calls(seqs, states, per_call), CAP)
    for g in groups:
        rows, length = g.x.shape[0], g.x.shape[1]
        assert rows * length <= CAP or rows == 1, (rows, length)
    assert sorted(r for rows in owners for r in rows) == sorted(
        (i // per_call, i % per_call) for i in range(len(seqs))
    )
    unsplit, _, _ = stack(model, _calls(seqs, states, per_call))
    assert len(groups) > len(unsplit)


async def _run(
    runner: Runner, model: LoadedModel, seqs: list[np.ndarray], states: list[State]
) -> list[SeqResult]:
    # several calls at once (one batch, sent to a child process when there is one), and
    # one call with every sequence
    parts = await asyncio.gather(
        *(runner.run(model, seqs[i : i + 5], states[i : i + 5]) for i in range(0, len(seqs), 5))
    )
    whole = await runner.run(model, seqs, states)
    return [r for part in parts for r in part] + whole


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
@pytest.mark.parametrize("name", ["tiny_lstm", "tiny_gru", "tiny_char"])
async def test_split_runs_equal_one_run(registry: ModelRegistry, name: str, process: bool) -> None:
    model = registry.get(name)
    seqs, states = _ragged(model, np.random.default_rng(2))
    results: list[list[SeqResult]] = []
    for cap in (None, CAP):
        runner = Runner(workers=1, max_batch_size=64, process=process, max_run_steps=cap)
        await runner.start([model])
        try:
            results.append(await _run(runner, model, seqs, states))
        finally:
            await runner.close()
    whole, split = results
    assert len(whole) == len(split) == 2 * len(seqs)
    for a, b in zip(whole, split, strict=True):
        assert_same(a.outputs, b.outputs)
        assert a.state.keys() == b.state.keys()
        for k in a.state:
            assert_same(a.state[k], b.state[k])
        if a.wire is not None:
            assert b.wire is not None
            assert_same(a.wire, b.wire)


class RecordingExecutor:
    """Answers each batch at once with empty results, recording its calls' steps."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def submit(
        self, loop: asyncio.AbstractEventLoop, model: LoadedModel, calls: list[Call], done: Done
    ) -> None:
        self.batches.append([c.steps for c in calls])
        outcomes: list[Outcome] = [[] for _ in calls]
        loop.call_soon(done, outcomes)

    async def close(self) -> None:
        return None


async def test_batcher_merges_no_calls_beyond_the_cap(registry: ModelRegistry) -> None:
    model = registry.get("tiny_lstm")
    rng = np.random.default_rng(3)
    executor = RecordingExecutor()
    batcher = ModelBatcher(model, executor, max_size=64, max_wait=0.0, max_run_steps=12)
    zero = model.zero_state()
    lengths: Sequence[int] = [5, 5, 5, 3, 4, 40, 1, 12, 2]
    futures = [batcher.submit([random_input(model, rng, n)], [zero]) for n in lengths]
    await asyncio.gather(*futures)
    print(executor.batches)
    assert sorted(s for b in executor.batches for s in b) == sorted(lengths)
    for batch in executor.batches:
        assert sum(batch) <= 12 or len(batch) == 1, executor.batches
    assert [40] in executor.batches  # a call over the cap runs, alone
    assert any(len(b) > 1 for b in executor.batches)  # calls under it still share runs
