"""The sequence batcher: batched results equal unbatched ones, order per key, no idle wait."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from service.errors import InferenceError
from service.inference.runner import Runner, SeqResult, run_sync
from service.metrics import Metrics
from service.models.manifest import FeaturesInput
from service.models.registry import LoadedModel, ModelRegistry, State
from service.sessions.manager import SessionManager
from service.sessions.memory import MemoryStore
from service.settings import Settings

ATOL = 1e-5


@pytest.fixture
async def runner() -> AsyncIterator[Runner]:
    r = Runner(Metrics(), workers=1, max_batch_size=64, max_wait_us=500)
    yield r
    await r.close()


def random_input(model: LoadedModel, rng: np.random.Generator, length: int) -> np.ndarray:
    if model.manifest.graph.input_dtype == "int64":
        return rng.integers(0, model.manifest.output.size, size=length).astype(np.int64)
    spec = model.manifest.input
    assert isinstance(spec, FeaturesInput)
    return rng.standard_normal((length, spec.size)).astype(np.float32)


def random_state(model: LoadedModel, rng: np.random.Generator) -> State:
    return {
        s.name: rng.standard_normal(s.shape).astype(np.float32) * 0.5 for s in model.manifest.state
    }


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


class Recorder:
    """Wraps a model's ``run_batch`` to record each onnxruntime batch, optionally gated.

    Records the batch in data units (before the runner normalises it), so tagged rows read
    back as their tags.
    """

    def __init__(self, model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[np.ndarray] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail_if: Callable[[np.ndarray], bool] | None = None
        real = model.run_batch

        current = threading.local()  # this worker's batch, between the two calls

        def model_inputs(x: np.ndarray) -> np.ndarray:
            current.x = x.copy()
            self.batches.append(current.x)
            return real_inputs(x)

        def run_batch(x: np.ndarray, states: list[State]) -> tuple[np.ndarray, list[State]]:
            self.started.set()
            if self.gate is not None:
                self.gate.wait(10)
            if self.fail_if is not None and self.fail_if(current.x):
                raise InferenceError("poisoned input")
            return real(x, states)

        real_inputs = model.model_inputs
        monkeypatch.setattr(model, "model_inputs", model_inputs)
        monkeypatch.setattr(model, "run_batch", run_batch)


@pytest.fixture
def tagged(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """tiny_lstm with recorded batches; inputs tagged so each batch row is identifiable."""
    rec = Recorder(registry.get("tiny_lstm"), monkeypatch)
    yield rec
    if rec.gate is not None:
        rec.gate.set()


def tag(value: float, length: int = 1) -> np.ndarray:
    return np.full((length, 3), value, dtype=np.float32)


def batch_count(metrics: Metrics, key: str) -> tuple[float, float]:
    count = metrics.registry.get_sample_value(
        "lstm_serve_inference_batch_size_count", {"model": key}
    )
    total = metrics.registry.get_sample_value("lstm_serve_inference_batch_size_sum", {"model": key})
    return count or 0.0, total or 0.0


# -- batched == unbatched ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_lstm", "tiny_gru", "tiny_char"])
async def test_many_sessions_mixed_lengths_equal_unbatched(
    registry: ModelRegistry, name: str
) -> None:
    """60 sessions step 4 rounds concurrently, with lengths 1..5 mixed within each round."""
    model = registry.get(name)
    rng = np.random.default_rng(7)
    sessions = 60
    rounds = [
        [random_input(model, rng, int(rng.integers(1, 6))) for _ in range(sessions)]
        for _ in range(4)
    ]
    starts = [random_state(model, rng) for _ in range(sessions)]

    metrics = Metrics()
    runner = Runner(metrics, workers=2, max_batch_size=16, max_wait_us=2000)
    try:

        async def session(i: int) -> list[tuple[np.ndarray, State]]:
            state = starts[i]
            got = []
            for r in rounds:
                (res,) = await runner.run(model, [r[i]], [state], key=f"s{i}")
                state = res.state
                got.append((res.outputs, res.state))
            return got

        batched = await asyncio.gather(*(session(i) for i in range(sessions)))
    finally:
        await runner.close()

    count, total = batch_count(metrics, model.key)
    assert total > count, "no onnxruntime run had more than one sequence"
    for i in range(sessions):
        state = starts[i]
        for r, (outputs, final) in zip(rounds, batched[i], strict=True):
            (alone,) = run_sync(model, [r[i]], [state])
            assert outputs.shape == alone.outputs.shape
            assert_same(outputs, alone.outputs)
            for k in alone.state:
                assert_same(final[k], alone.state[k])
            state = alone.state


async def ragged_predicts(
    runner: Runner, model: LoadedModel
) -> list[tuple[SeqResult, SeqResult, SeqResult]]:
    """Seven sequences of mixed lengths predicted forward and backward at once: per
    sequence, its two batched results and its run alone."""
    rng = np.random.default_rng(3)
    seqs = [random_input(model, rng, n) for n in (3, 1, 7, 3, 2, 7, 1)]
    forward, backward = await asyncio.gather(runner.run(model, seqs), runner.run(model, seqs[::-1]))
    return [
        (a, b, run_sync(model, [seq])[0])
        for seq, a, b in zip(seqs, forward, backward[::-1], strict=True)
    ]


async def test_predict_batch_of_ragged_sequences_equals_one_by_one(
    registry: ModelRegistry, runner: Runner
) -> None:
    for a, b, alone in await ragged_predicts(runner, registry.get("tiny_lstm")):
        assert_same(a.outputs, alone.outputs)
        assert_same(b.outputs, alone.outputs)
        for k in alone.state:
            assert_same(a.state[k], alone.state[k])


# -- order and keys --------------------------------------------------------------------------


async def test_one_key_never_shares_a_batch_and_keeps_its_order(
    registry: ModelRegistry, tagged: Recorder
) -> None:
    model = registry.get("tiny_lstm")
    tagged.gate = threading.Event()
    runner = Runner(workers=2, max_batch_size=64, max_wait_us=100)
    keys, per_key = 8, 6
    done_order: dict[int, list[int]] = {k: [] for k in range(keys)}

    async def call(k: int, j: int) -> None:
        await runner.run(model, [tag(k * 100 + j)], key=k)
        done_order[k].append(j)

    try:
        # the first call blocks the worker so that everything else queues up behind it
        first = asyncio.ensure_future(runner.run(model, [tag(-1.0)]))
        await asyncio.to_thread(tagged.started.wait, 10)
        tasks = [asyncio.ensure_future(call(k, j)) for j in range(per_key) for k in range(keys)]
        await asyncio.sleep(0.05)
        tagged.gate.set()
        await asyncio.gather(first, *tasks)
    finally:
        await runner.close()

    seen: dict[int, list[int]] = {k: [] for k in range(keys)}
    for x in tagged.batches:
        tags = [int(v) for v in x[:, 0, 0] if v >= 0]
        in_batch = [t // 100 for t in tags]
        assert len(in_batch) == len(set(in_batch)), f"one key twice in a batch: {tags}"
        for t in tags:
            seen[t // 100].append(t % 100)
    for k in range(keys):
        assert seen[k] == list(range(per_key))
        assert done_order[k] == list(range(per_key))
    assert max(len(x) for x in tagged.batches) > 1


async def test_session_order_kept_under_concurrency(
    registry: ModelRegistry, tiny_store: Path
) -> None:
    """Concurrent steps on a few sessions apply in arrival order, as if run one by one."""
    runner = Runner(workers=2, max_batch_size=8, max_wait_us=200)
    store = MemoryStore()
    cfg = Settings(model_store=tiny_store, max_sessions=100, request_log=False)
    manager = SessionManager(store, registry, runner, cfg)
    model = registry.get("tiny_lstm")
    rng = np.random.default_rng(11)
    try:
        recs = [await manager.create("bob", "tiny_lstm") for _ in range(5)]
        inputs = {
            r.id: [rng.uniform(-3, 3, (2, 3)).round(3).tolist() for _ in range(12)] for r in recs
        }
        tasks = [
            asyncio.ensure_future(
                manager.advance("bob", r.id, np.asarray(inputs[r.id][j], dtype=np.float32))
            )
            for j in range(12)
            for r in recs
        ]
        results = await asyncio.gather(*tasks)
        finals = {r.id: (await manager.get("bob", r.id)) for r in recs}
    finally:
        await runner.close()

    steps_by_session: dict[str, list[int]] = {}
    for res in results:
        steps_by_session.setdefault(res.session_id, []).append(res.steps)
    for rec in recs:
        assert steps_by_session[rec.id] == [2 * (j + 1) for j in range(12)]
        seq = np.asarray([s for chunk in inputs[rec.id] for s in chunk], dtype=np.float32)
        (whole,) = run_sync(model, [seq])
        for k in whole.state:
            np.testing.assert_allclose(finals[rec.id].state[k], whole.state[k], atol=1e-4)


# -- waiting -----------------------------------------------------------------------------


async def test_lone_call_does_not_wait_for_company(registry: ModelRegistry) -> None:
    model = registry.get("tiny_lstm")
    runner = Runner(workers=2, max_batch_size=64, max_wait_us=5_000_000)
    try:
        await runner.run(model, [tag(0.0)])  # warm-up
        started = time.perf_counter()
        for _ in range(3):
            await runner.run(model, [tag(1.0)])
        elapsed = time.perf_counter() - started
    finally:
        await runner.close()
    assert elapsed < 1.0, f"three lone calls took {elapsed:.3f}s with a 5 s batch wait"


async def test_calls_made_in_one_loop_iteration_share_one_run(
    registry: ModelRegistry, tagged: Recorder
) -> None:
    model = registry.get("tiny_lstm")
    runner = Runner(workers=1, max_batch_size=64, max_wait_us=0)
    try:
        # nothing in flight: the first call does not go alone, the iteration's calls join it
        calls = [runner.run(model, [tag(float(i))]) for i in range(5)]
        await asyncio.gather(*calls)
    finally:
        await runner.close()
    assert [len(x) for x in tagged.batches] == [5]


async def test_gathers_while_a_run_is_in_flight_for_at_most_the_wait(
    registry: ModelRegistry, tagged: Recorder
) -> None:
    """With two workers and one blocked, later calls gather, then run on the other worker."""
    model = registry.get("tiny_lstm")
    gate = tagged.gate = threading.Event()
    runner = Runner(workers=2, max_batch_size=64, max_wait_us=20_000)
    try:
        first = asyncio.ensure_future(runner.run(model, [tag(-1.0)]))
        await asyncio.to_thread(tagged.started.wait, 10)
        tagged.gate = None  # only the first run stays blocked
        later = [asyncio.ensure_future(runner.run(model, [tag(float(i))])) for i in range(5)]
        done, _ = await asyncio.wait(later, timeout=5)
        assert len(done) == 5
        assert not first.done()
        assert [len(x) for x in tagged.batches[1:]] == [5]
    finally:
        gate.set()
        await asyncio.gather(first, return_exceptions=True)
        await runner.close()


# -- failures and cancellation ----------------------------------------------------------------


async def test_a_failing_call_does_not_fail_its_batch(
    registry: ModelRegistry, tagged: Recorder
) -> None:
    model = registry.get("tiny_lstm")
    tagged.gate = threading.Event()
    tagged.fail_if = lambda x: bool((x == 13.0).any())
    runner = Runner(workers=1, max_batch_size=64, max_wait_us=100)
    try:
        first = asyncio.ensure_future(runner.run(model, [tag(-1.0)]))
        await asyncio.to_thread(tagged.started.wait, 10)
        calls = [asyncio.ensure_future(runner.run(model, [tag(float(i))])) for i in range(10, 16)]
        await asyncio.sleep(0.01)
        tagged.gate.set()
        outcomes = await asyncio.gather(first, *calls, return_exceptions=True)
    finally:
        await runner.close()
    assert isinstance(outcomes[4], InferenceError)
    for i, outcome in zip(range(10, 16), outcomes[1:], strict=True):
        if i == 13:
            continue
        assert isinstance(outcome, list)
        (alone,) = run_sync(model, [tag(float(i))])
        assert_same(outcome[0].outputs, alone.outputs)
    assert any(len(x) == 6 for x in tagged.batches), "the calls were never batched together"


async def test_cancelled_callers_do_not_break_the_batch(
    registry: ModelRegistry, tagged: Recorder
) -> None:
    model = registry.get("tiny_lstm")
    tagged.gate = threading.Event()
    runner = Runner(workers=1, max_batch_size=64, max_wait_us=100)
    try:
        first = asyncio.ensure_future(runner.run(model, [tag(-1.0)]))
        await asyncio.to_thread(tagged.started.wait, 10)
        calls = [asyncio.ensure_future(runner.run(model, [tag(float(i))])) for i in range(6)]
        await asyncio.sleep(0.01)
        calls[2].cancel()  # waiting in the queue
        first.cancel()  # already running
        await asyncio.sleep(0.01)
        tagged.gate.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        again = await runner.run(model, [tag(7.0)])
    finally:
        await runner.close()
    assert first.cancelled()
    assert isinstance(outcomes[2], asyncio.CancelledError)
    for i, outcome in enumerate(outcomes):
        if i == 2:
            continue
        assert isinstance(outcome, list)
        (alone,) = run_sync(model, [tag(float(i))])
        assert_same(outcome[0].outputs, alone.outputs)
    assert sorted(int(v) for v in tagged.batches[1][:, 0, 0]) == [0, 1, 3, 4, 5]
    (alone,) = run_sync(model, [tag(7.0)])
    assert_same(again[0].outputs, alone.outputs)


async def test_batches_never_exceed_the_maximum(registry: ModelRegistry, tagged: Recorder) -> None:
    model = registry.get("tiny_lstm")
    tagged.gate = threading.Event()
    runner = Runner(workers=1, max_batch_size=16, max_wait_us=100)
    try:
        first = asyncio.ensure_future(runner.run(model, [tag(-1.0)]))
        await asyncio.to_thread(tagged.started.wait, 10)
        calls = [asyncio.ensure_future(runner.run(model, [tag(float(i))])) for i in range(50)]
        await asyncio.sleep(0.01)
        tagged.gate.set()
        await asyncio.gather(first, *calls)
    finally:
        await runner.close()
    sizes = [len(x) for x in tagged.batches[1:]]
    assert sum(sizes) == 50
    assert max(sizes) == 16
