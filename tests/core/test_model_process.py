"""onnxruntime in child processes (``service.inference.worker``): the same answers as in
process, failures confined to their call, a dead child costing one batch and no state."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import InferenceError, NotReady
from service.inference.batcher import SeqResult
from service.inference.runner import Runner, run_sync
from service.inference.worker.pool import ProcessExecutor
from service.inference.worker.protocol import (
    Failure,
    Group,
    GroupOut,
    Ran,
    RanAlone,
    Reply,
    Run,
    decode,
    encode,
    frame_size,
    stacked,
)
from service.metrics import Metrics
from service.models.registry import LoadedModel, ModelRegistry
from service.sessions.manager import SessionManager
from service.sessions.memory import MemoryStore
from service.settings import Settings
from tests.core.test_batcher import (
    assert_same,
    batch_count,
    ragged_predicts,
    random_input,
    random_state,
)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def runner(registry: ModelRegistry, metrics: Metrics) -> AsyncIterator[Runner]:
    r = Runner(metrics, workers=1, max_batch_size=64, max_wait_us=500, process=True)
    await r.start(registry.all())
    yield r
    await r.close()


def processes(runner: Runner) -> ProcessExecutor:
    executor = runner._processes
    assert executor is not None
    return executor


def assert_result(got: SeqResult, want: SeqResult) -> None:
    assert_same(got.outputs, want.outputs)
    assert got.state.keys() == want.state.keys()
    for k in want.state:
        assert_same(got.state[k], want.state[k])
        assert got.state[k].flags.writeable and got.state[k].base is None, "a row of a batch"
    if want.wire is None:
        assert got.wire is None
    else:
        assert got.wire is not None
        assert_same(got.wire, want.wire)


async def until(condition: object, seconds: float = 10.0) -> None:
    assert callable(condition)
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def test_frames_carry_arrays_of_any_dtype_and_shape() -> None:
    arrays: list[np.ndarray] = [
        np.arange(12, dtype=np.float32).reshape(3, 1, 4),
        np.arange(5, dtype=np.int64),
        np.zeros((0, 2), dtype=np.float32),
        np.arange(6, dtype=np.float32).reshape(2, 3).T,  # not C-contiguous (F: out of band)
        np.arange(9, dtype=np.float32)[::2],  # not contiguous at all: inside the pickle
        np.arange(3, dtype=np.int8),  # 3 bytes: the next buffer is padded
    ]
    run = Run(
        "m:1",
        [
            Group(a, {"h": b, "c": a}, np.zeros(1, np.int32))
            for a, b in zip(arrays, arrays[1:] + arrays[:1], strict=True)
        ],
    )
    frame = bytearray(encode(run))
    assert frame_size(frame) == len(frame)
    back = decode(frame)
    assert isinstance(back, Run) and back.key == "m:1"
    for sent, got in zip(run.groups, back.groups, strict=True):
        for a, b in [(sent.x, got.x), (sent.states["h"], got.states["h"])]:
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
            assert b.flags.writeable and b.flags.aligned
        assert got.states["c"] is got.x, "an array sent twice arrives once"


def test_every_reply_survives_the_trip() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    out = GroupOut(y, None, {"h": np.ones((2, 4), np.float32)}, 0.5)
    replies: list[Reply] = [
        Ran([out, out._replace(wire=y * 2)]),
        RanAlone([Failure(True, "bad token"), [None, out]]),
        Failure(False, "boom"),
    ]
    for reply in replies:
        assert repr(decode(bytearray(encode(reply)))) == repr(reply)


def test_rows_are_stacked_from_joined_bytes_only_when_that_is_exact() -> None:
    """``stacked`` joins the rows' bytes when they are C-contiguous arrays of one dtype
    and shape; anything else is stacked by numpy (and fails as numpy does)."""
    rng = np.random.default_rng(0)
    f32 = np.dtype(np.float32)
    plain = [rng.normal(size=(2, 1, 4)).astype(np.float32) for _ in range(5)]
    odd: list[list[np.ndarray]] = [
        [rng.normal(size=(2, 1, 8)).astype(np.float32)[..., ::2]] * 3,  # strided: no buffer
        [plain[0], plain[1].astype(np.float64)],  # mixed dtypes
        [rng.normal(size=(2, 1, 4)), rng.normal(size=(2, 1, 4))],  # float64: cast
    ]
    cases: list[tuple[list[np.ndarray], np.dtype[Any] | None, bool]]
    cases = [(plain, f32, True), (plain[:1], f32, True), (plain, None, True)]
    cases += [(rows, f32, False) for rows in odd] + [(odd[1], None, False)]
    for rows, dtype, joined in cases:
        want = np.array(rows, dtype=dtype)
        got = stacked(rows, dtype)
        assert (got.base is not None) == joined  # a view on the joined bytes
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        (back,) = decode(bytearray(encode(Ran([GroupOut(got, None, {}, 0.0)])))).outs
        np.testing.assert_array_equal(back.y, want)
    with pytest.raises(ValueError):  # rows of two shapes: the batch's calls go one by one
        stacked([plain[0], plain[0][:1]], f32)


@pytest.mark.parametrize("name", ["tiny_lstm", "tiny_gru", "tiny_char"])
async def test_batches_in_the_child_equal_runs_in_process(
    registry: ModelRegistry, runner: Runner, metrics: Metrics, name: str
) -> None:
    """40 sessions step 3 rounds at once with lengths 1..4 mixed: every result equals the
    sequence run alone in this process, and the runs were shared."""
    model = registry.get(name)
    rng = np.random.default_rng(5)
    rounds = [[random_input(model, rng, int(rng.integers(1, 5))) for _ in range(40)] for _ in "abc"]
    starts = [random_state(model, rng) for _ in range(40)]

    async def session(i: int) -> list[SeqResult]:
        state, got = starts[i], []
        for r in rounds:
            (res,) = await runner.run(model, [r[i]], [state], key=f"s{i}")
            state = res.state
            got.append(res)
        return got

    batched = await asyncio.gather(*(session(i) for i in range(40)))
    for i in range(40):
        state = starts[i]
        for r, got in zip(rounds, batched[i], strict=True):
            (alone,) = run_sync(model, [r[i]], [state])
            assert_result(got, alone)
            state = alone.state
    count, total = batch_count(metrics, model.key)
    assert total > count, "no run had more than one sequence"


async def test_a_predict_of_ragged_sequences_equals_one_by_one(
    registry: ModelRegistry, runner: Runner
) -> None:
    for a, b, alone in await ragged_predicts(runner, registry.get("tiny_lstm")):
        assert_result(a, alone)
        assert_result(b, alone)


async def test_calls_without_sequences_get_no_results(
    registry: ModelRegistry, runner: Runner
) -> None:
    model = registry.get("tiny_lstm")
    seq = random_input(model, np.random.default_rng(6), 2)
    assert list(await asyncio.gather(runner.run(model, []), runner.run(model, []))) == [[], []]
    empty, (got,) = await asyncio.gather(runner.run(model, []), runner.run(model, [seq]))
    assert empty == []
    assert_result(got, run_sync(model, [seq])[0])
    # as many rows as calls, but not one each
    other = random_input(model, np.random.default_rng(7), 2)
    both, none = await asyncio.gather(runner.run(model, [seq, other]), runner.run(model, []))
    assert none == [] and len(both) == 2
    for got, want in zip(both, run_sync(model, [seq, other]), strict=True):
        assert_result(got, want)
    assert processes(runner).pids, "the child is alive"


async def test_a_call_onnxruntime_refuses_fails_alone(
    registry: ModelRegistry, runner: Runner
) -> None:
    """A token id past the vocabulary fails in onnxruntime, in the child: only its call."""
    model = registry.get("tiny_char")
    rng = np.random.default_rng(2)
    good = [random_input(model, rng, n) for n in (2, 1, 2)]
    bad = np.array([1, 10_000], dtype=np.int64)
    outcomes = await asyncio.gather(
        runner.run(model, [good[0]]),
        runner.run(model, [bad]),
        runner.run(model, [good[1], good[2]]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], InferenceError)
    first, third = outcomes[0], outcomes[2]
    assert isinstance(first, list) and isinstance(third, list)
    assert_result(first[0], run_sync(model, [good[0]])[0])
    for got, seq in zip(third, good[1:], strict=True):
        assert_result(got, run_sync(model, [seq])[0])


async def test_a_call_of_the_wrong_shape_fails_alone(
    registry: ModelRegistry, runner: Runner
) -> None:
    model = registry.get("tiny_lstm")
    rng = np.random.default_rng(4)
    good = random_input(model, rng, 2)
    wrong = np.zeros((2, 5), dtype=np.float32)  # the model takes 3 features
    outcomes = await asyncio.gather(
        runner.run(model, [good]), runner.run(model, [wrong]), return_exceptions=True
    )
    assert isinstance(outcomes[1], InferenceError | RuntimeError)
    assert isinstance(outcomes[0], list)
    assert_result(outcomes[0][0], run_sync(model, [good])[0])


async def test_a_quiet_server_runs_lone_calls_in_process(
    registry: ModelRegistry, runner: Runner
) -> None:
    """Lone calls one after another skip the child (a round trip costs more than the GIL
    then); calls made together go to it."""
    model = registry.get("tiny_lstm")
    rng = np.random.default_rng(1)
    executor = processes(runner)
    seqs = [random_input(model, rng, 1) for _ in range(6)]
    await runner.run(model, [seqs[0]])
    sent = executor.child_batches
    for seq in seqs[1:]:
        (got,) = await runner.run(model, [seq])
        assert_result(got, run_sync(model, [seq])[0])
    assert executor.child_batches == sent
    await asyncio.gather(*(runner.run(model, [s]) for s in seqs))
    assert executor.child_batches == sent + 1


async def test_a_killed_child_fails_its_batch_and_no_session_advances(
    registry: ModelRegistry, tiny_store: Path, runner: Runner, metrics: Metrics
) -> None:
    executor = processes(runner)
    settings = Settings(model_store=tiny_store, max_sessions=100, request_log=False)
    manager = SessionManager(MemoryStore(), registry, runner, settings)
    recs = [await manager.create("bob", "tiny_lstm") for _ in range(4)]
    long = np.full((4000, 3), 0.25, dtype=np.float32)
    (pid,) = executor.pids

    steps = [asyncio.ensure_future(manager.advance("bob", r.id, long)) for r in recs]
    await until(lambda: any(c.job is not None for c in executor._children))
    os.kill(pid, signal.SIGKILL)
    outcomes = await asyncio.gather(*steps, return_exceptions=True)

    assert all(isinstance(o, NotReady) for o in outcomes), outcomes
    exits = metrics.registry.get_sample_value("lstm_serve_model_process_exits_total")
    assert exits == 1
    for rec in recs:
        after = await manager.get("bob", rec.id)
        assert after.steps == 0 and after.revision == rec.revision
        for k, v in rec.state.items():
            np.testing.assert_array_equal(after.state[k], v)
    # the next batch starts a new child, and the steps apply
    short = np.asarray([[0.1, 0.2, 0.3]], dtype=np.float32)
    again = await asyncio.gather(*(manager.advance("bob", r.id, short) for r in recs))
    assert [a.steps for a in again] == [1, 1, 1, 1]
    assert executor.pids and executor.pids != [pid]


async def test_sessions_stepped_in_a_batch_keep_no_part_of_it(
    registry: ModelRegistry, tiny_store: Path, runner: Runner
) -> None:
    """After a shared run, each session's state and last output own their memory: a view
    would keep the batch's whole reply frame alive for as long as the session idles."""
    settings = Settings(model_store=tiny_store, max_sessions=100, request_log=False)
    manager = SessionManager(MemoryStore(), registry, runner, settings)
    recs = [await manager.create("bob", "tiny_lstm") for _ in range(8)]
    sent = processes(runner).child_batches
    body = np.asarray([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=np.float32)
    await asyncio.gather(*(manager.advance("bob", r.id, body) for r in recs))
    assert processes(runner).child_batches == sent + 1  # one run for all eight
    for rec in recs:
        after = await manager.get("bob", rec.id)
        assert after.last_output is not None and after.last_output.base is None
        assert all(arr.base is None for arr in after.state.values())


async def test_a_replaced_version_is_reloaded_in_the_child(
    registry: ModelRegistry, runner: Runner, tiny_store: Path
) -> None:
    """Same name and version, new file (a different sha256): the child runs the new one."""
    old = registry.get("tiny_lstm")
    new = registry.get("tiny_gru")
    # a stand-in for a rebuilt version: tiny_gru's graph under tiny_lstm's key
    swapped = LoadedModel(
        manifest=new.manifest.model_copy(update={"name": old.name, "version": old.version}),
        session=new.session,
        onnx_path=new.onnx_path,
    )
    rng = np.random.default_rng(8)
    seqs = [random_input(old, rng, 2) for _ in range(3)]
    before = await asyncio.gather(*(runner.run(old, [s]) for s in seqs))
    runner.prepare([swapped])
    after = await asyncio.gather(*(runner.run(swapped, [s]) for s in seqs))
    for s, b, a in zip(seqs, before, after, strict=True):
        assert_result(b[0], run_sync(old, [s])[0])
        assert_result(a[0], run_sync(new, [s])[0])


async def test_close_lets_the_running_batch_finish_then_refuses(
    registry: ModelRegistry,
) -> None:
    model = registry.get("tiny_lstm")
    runner = Runner(workers=1, process=True)
    await runner.start(registry.all())
    executor = processes(runner)
    (pid,) = executor.pids
    seqs = [np.full((3000, 3), 0.5, dtype=np.float32) for _ in range(3)]
    running = asyncio.gather(*(runner.run(model, [s]) for s in seqs))
    await until(lambda: any(c.job is not None for c in executor._children))
    await runner.close()
    results = await running
    assert_result(results[0][0], run_sync(model, [seqs[0]])[0])
    with pytest.raises(NotReady):
        await asyncio.gather(runner.run(model, [seqs[0][:1]]), runner.run(model, [seqs[1][:1]]))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
