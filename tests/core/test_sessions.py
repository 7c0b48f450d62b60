"""The session manager without HTTP: the one primitive (``advance``), offsets, replays,
failures, locking across doors, lifecycle and expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import (
    CapacityReached,
    InferenceError,
    InvalidInput,
    OffsetConflict,
    SessionGone,
    SessionNotFound,
    StoreUnavailable,
)
from service.http.v1.session_codec import step_offset, step_parser, step_response
from service.inference.runner import Runner, SeqResult, run_sync
from service.models.encoding import denormalise
from service.models.manifest import RegressionOutput
from service.models.registry import ModelRegistry
from service.oip.sequences import KIND, SequenceParams, Sequences, store_id
from service.sessions.advance import Advance
from service.sessions.locks import SessionLocks
from service.sessions.manager import SessionManager
from service.sessions.memory import MemoryStore
from service.sessions.record import SessionRecord
from service.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def manager(
    registry: ModelRegistry, tiny_store: Path, clock: FakeClock
) -> AsyncIterator[SessionManager]:
    runner = Runner()
    store = MemoryStore(clock=clock)
    cfg = Settings(model_store=tiny_store, max_sessions=1000, session_ttl_seconds=60)
    yield SessionManager(store, registry, runner, cfg, clock=clock)
    await runner.close()


def whole_sequence(registry: ModelRegistry, name: str, seq: list[list[float]]) -> np.ndarray:
    """Outputs of one whole-sequence run, in data units, computed without the manager."""
    model = registry.get(name)
    x = np.asarray(seq, dtype=np.float32)  # data units: the runner normalises
    (res,) = run_sync(model, [x], [model.zero_state()])
    out = model.manifest.output
    assert isinstance(out, RegressionOutput)
    return denormalise(out, res.outputs)


def in_data_units(done: Advance) -> np.ndarray:
    out = done.model.manifest.output
    assert isinstance(out, RegressionOutput)
    return done.wire if done.wire is not None else denormalise(out, done.outputs)


def arr(seq: list[list[float]]) -> np.ndarray:
    return np.asarray(seq, dtype=np.float32)


async def v1_step(
    manager: SessionManager, owner: str, session_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """A ``/v1`` step body through the primitive, parsed and encoded as the step route does."""
    cfg = manager.settings
    done = await manager.advance(
        owner, session_id, step_parser(body, cfg.max_steps_per_request), offset=step_offset(body)
    )
    reply: dict[str, Any] = orjson.loads(step_response(done, cfg.top_k_default))
    return reply


SEQ = [[0.5, 1.0, -2.0], [1.5, 0.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 0.25, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("name", ["tiny_lstm", "tiny_gru"])
async def test_step_by_step_equals_whole_sequence(
    manager: SessionManager, registry: ModelRegistry, name: str
) -> None:
    rec = await manager.create("alice", name)
    outs = []
    for i, step in enumerate(SEQ):
        done = await manager.advance("alice", rec.id, arr([step]))
        assert (done.steps_before, done.steps, done.replayed) == (i, i + 1, False)
        outs.append(in_data_units(done))
    np.testing.assert_allclose(
        np.concatenate(outs), whole_sequence(registry, name, SEQ), rtol=0, atol=1e-5
    )
    after = await manager.get("alice", rec.id)
    assert after.steps == len(SEQ)
    for k in after.state:
        np.testing.assert_array_equal(after.state[k], done.state[k])


_step = st.lists(st.floats(-10, 10, width=32, allow_nan=False), min_size=3, max_size=3)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seq=st.lists(_step, min_size=1, max_size=24), cuts=st.lists(st.integers(1, 23), max_size=8))
async def test_any_chunking_equals_whole_sequence(
    manager: SessionManager, registry: ModelRegistry, seq: list[list[float]], cuts: list[int]
) -> None:
    bounds = sorted({c for c in cuts if c < len(seq)})
    chunks = [seq[a:b] for a, b in zip([0, *bounds], [*bounds, len(seq)], strict=True)]
    rec = await manager.create("alice", "tiny_lstm")
    outs: list[list[float]] = []
    offset = 0
    for chunk in chunks:
        res = await v1_step(manager, "alice", rec.id, {"inputs": chunk, "offset": offset})
        offset = res["steps"]
        outs.extend(res["outputs"])
    np.testing.assert_allclose(
        np.asarray(outs), whole_sequence(registry, "tiny_lstm", seq), rtol=0, atol=1e-5
    )
    await manager.delete("alice", rec.id)


async def assert_unchanged(manager: SessionManager, before: SessionRecord) -> None:
    after = await manager.get(before.owner, before.id, before.kind)
    assert (after.steps, after.revision) == (before.steps, before.revision)
    for k in before.state:
        np.testing.assert_array_equal(after.state[k], before.state[k])
    assert after.last is before.last


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bad=st.one_of(
        st.just({"inputs": [[1.0, 2.0]]}),
        st.just({"inputs": [[1.0, 2.0, float("nan")]]}),
        st.just({"inputs": []}),
        st.just({"inputs": "abc"}),
        st.just({"text": "abc"}),
        st.just({"inputs": [[1.0, 2.0, 3.0]], "offset": 99}),
        st.just({"inputs": [[1.0, 2.0, 3.0]], "offset": -1}),
        st.just({"inputs": [[[1.0, 2.0, 3.0]]]}),
        st.just({"inputs": [[1.0, True, 3.0]]}),
        st.just({"inputs": [[1.0, 2.0, 3.0]] * 5000}),
        st.lists(st.floats(allow_nan=True), min_size=1, max_size=4)
        .filter(lambda v: len(v) != 3 or not all(abs(x) < 1e38 for x in v))
        .map(lambda v: {"inputs": [v]}),
    )
)
async def test_failed_step_changes_nothing(manager: SessionManager, bad: dict[str, object]) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    await v1_step(manager, "alice", rec.id, {"inputs": SEQ[:2]})
    before = await manager.get("alice", rec.id)
    with pytest.raises((InvalidInput, OffsetConflict)):
        await v1_step(manager, "alice", rec.id, bad)
    await assert_unchanged(manager, before)
    await manager.delete("alice", rec.id)


async def test_a_model_or_store_failure_changes_nothing(
    manager: SessionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    await manager.advance("alice", rec.id, arr(SEQ[:2]))
    before = await manager.get("alice", rec.id)

    def failing_run(*args: object, **kwargs: object) -> object:
        raise InferenceError("the model failed")

    async def failing_save(new: SessionRecord, expected_revision: int) -> bool:
        raise StoreUnavailable("the store is down")

    failures: list[tuple[object, str, object, type[Exception]]] = [
        (manager.runner, "run", failing_run, InferenceError),
        (manager.store, "save", failing_save, StoreUnavailable),
    ]
    for target, name, failing, error in failures:
        with monkeypatch.context() as m:
            m.setattr(target, name, failing)
            with pytest.raises(error):
                await manager.advance("alice", rec.id, arr([SEQ[2]]))
        await assert_unchanged(manager, before)
    # and the lock was let go: the next step applies
    assert (await manager.advance("alice", rec.id, arr([SEQ[2]]))).steps == 3


async def test_offset_conflict_and_replay(manager: SessionManager) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    first = await v1_step(manager, "alice", rec.id, {"inputs": [SEQ[0]], "offset": 0})
    again = await v1_step(manager, "alice", rec.id, {"inputs": [SEQ[0]], "offset": 0})
    assert again == {**first, "replayed": True} and again["steps"] == 1
    with pytest.raises(OffsetConflict) as conflict:
        await v1_step(manager, "alice", rec.id, {"inputs": [SEQ[1]], "offset": 0})
    assert conflict.value.steps == 1
    assert (await manager.get("alice", rec.id)).steps == 1


@pytest.mark.parametrize("kind", ["session", KIND])
async def test_a_replay_answers_from_the_stored_outputs_for_any_door(
    manager: SessionManager, kind: str
) -> None:
    """The record keeps raw outputs, not one protocol's reply: a retry after a step of a
    /v1 session or of a /v2 sequence record gets the same outputs back, unencoded."""
    rec = await manager.create("alice", "tiny_lstm", kind=kind)
    await manager.advance("alice", rec.id, arr(SEQ[:2]), kind=kind)
    first = await manager.advance("alice", rec.id, arr(SEQ[2:4]), offset=2, kind=kind)
    stored = await manager.get("alice", rec.id, kind)
    again = await manager.advance("alice", rec.id, arr(SEQ[2:4]), offset=2, kind=kind)
    assert again.replayed and not first.replayed
    assert (again.steps_before, again.steps) == (first.steps_before, first.steps) == (2, 4)
    np.testing.assert_array_equal(again.outputs, first.outputs)
    np.testing.assert_array_equal(in_data_units(again), in_data_units(first))
    await assert_unchanged(manager, stored)  # a replay writes nothing
    # encoded by the /v1 adapter, a replay is the first reply plus "replayed"
    top_k = manager.settings.top_k_default
    assert orjson.loads(step_response(again, top_k)) == {
        **orjson.loads(step_response(first, top_k)),
        "replayed": True,
    }


async def test_joined_requests_keep_the_last_one_for_its_retry(manager: SessionManager) -> None:
    """WebSocket frames applied as one request (``keep_last``): the last frame alone is the
    last applied request, so its retry with its own offset is a replay."""
    rec = await manager.create("alice", "tiny_lstm")
    done = await manager.advance("alice", rec.id, arr(SEQ), keep_last=2)
    assert (done.steps_before, done.steps) == (0, 5)
    retry = await v1_step(manager, "alice", rec.id, {"inputs": SEQ[3:], "offset": 3})
    assert retry["replayed"] is True and retry["steps"] == 5
    np.testing.assert_allclose(retry["outputs"], in_data_units(done)[3:], rtol=0, atol=0)
    with pytest.raises(OffsetConflict):  # the joined request as a whole is not kept
        await manager.advance("alice", rec.id, arr(SEQ), offset=0)


async def test_concurrent_steps_are_serialised(
    manager: SessionManager, registry: ModelRegistry
) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    seq = [[float(i), float(-i), 0.5] for i in range(20)]
    results = await asyncio.gather(*(manager.advance("alice", rec.id, arr([s])) for s in seq))
    assert [r.steps for r in results] == list(range(1, 21))  # in arrival order
    outs = np.concatenate([in_data_units(r) for r in results])
    np.testing.assert_allclose(outs, whole_sequence(registry, "tiny_lstm", seq), atol=1e-5)


class GatedRunner:
    """The real runner, holding each run until the test lets it go; records run order."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.started: list[int] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def run(self, model: Any, seqs: Any, states: Any, key: Any = None) -> Any:
        self.started.append(int(seqs[0].shape[0]))
        self.entered.set()
        await self.gate.wait()
        return await self.runner.run(model, seqs, states, key=key)


async def test_a_v2_sequence_step_takes_the_session_lock(
    manager: SessionManager, registry: ModelRegistry
) -> None:
    """A /v2 sequence step goes through ``advance``: while another request on the same
    record is being applied it waits for it, and both land, in arrival order."""
    sequences = Sequences(manager)
    model = registry.get("tiny_lstm")
    params = SequenceParams(id=7, start=False, end=False)
    await sequences.step("alice", model, SequenceParams(7, True, False), arr(SEQ[:1]), None)
    sid = store_id(model.name, "alice", 7)
    gated = GatedRunner(manager.runner)
    manager.runner = gated  # type: ignore[assignment]
    first = asyncio.create_task(manager.advance("alice", sid, arr(SEQ[1:3]), kind=KIND))
    await gated.entered.wait()
    second = asyncio.create_task(sequences.step("alice", model, params, arr(SEQ[3:]), None))
    for _ in range(20):
        await asyncio.sleep(0)
    assert gated.started == [2]  # the /v2 step waits on the lock, its model has not run
    gated.gate.set()
    done, result = await first, await second
    assert gated.started == [2, 2] and done.steps == 3
    rec = await manager.get("alice", sid, KIND)
    assert rec.steps == 5 and rec.revision == 3
    out = model.manifest.output
    assert isinstance(out, RegressionOutput)
    whole = whole_sequence(registry, "tiny_lstm", SEQ)
    np.testing.assert_allclose(denormalise(out, result.outputs), whole[3:], atol=1e-5)


async def test_v1_and_v2_steps_contend_through_one_loop(
    manager: SessionManager, registry: ModelRegistry
) -> None:
    """Many /v1-style and /v2 requests on one record at once: none lost, none interleaved."""
    model = registry.get("tiny_lstm")
    sequences = Sequences(manager)
    await sequences.step("alice", model, SequenceParams(3, True, False), arr(SEQ[:1]), None)
    sid = store_id(model.name, "alice", 3)
    rows = [[float(i) / 4, 1.0 - i / 8, 0.25] for i in range(24)]
    calls: list[Awaitable[Advance | SeqResult]] = [
        manager.advance("alice", sid, arr([r]), kind=KIND)
        if i % 2
        else sequences.step("alice", model, SequenceParams(3, False, False), arr([r]), None)
        for i, r in enumerate(rows)
    ]
    results = await asyncio.gather(*calls)
    rec = await manager.get("alice", sid, KIND)
    assert rec.steps == 25 and rec.revision == 25
    out = model.manifest.output
    assert isinstance(out, RegressionOutput)
    got = np.concatenate([denormalise(out, r.outputs) for r in results])
    np.testing.assert_allclose(
        got, whole_sequence(registry, "tiny_lstm", SEQ[:1] + rows)[1:], atol=1e-5
    )


async def test_sequence_start_version_and_end(
    manager: SessionManager, registry: ModelRegistry
) -> None:
    model = registry.get("tiny_lstm")
    sid = store_id(model.name, "alice", "s")
    with pytest.raises(SessionNotFound):  # not started: /v2 answers Triton's 400 for it
        await manager.advance("alice", sid, arr(SEQ[:1]), kind=KIND)
    await manager.create("alice", "tiny_lstm", kind=KIND, session_id=sid)
    await manager.advance("alice", sid, arr(SEQ[:2]), kind=KIND)
    # a start runs from the given state and step 0, whatever the record held
    restarted = await manager.advance(
        "alice", sid, arr(SEQ[:1]), kind=KIND, start=model.zero_state(), offset=0
    )
    assert (restarted.steps_before, restarted.steps) == (0, 1)
    np.testing.assert_allclose(
        in_data_units(restarted), whole_sequence(registry, "tiny_lstm", SEQ[:1]), atol=1e-5
    )
    with pytest.raises(InvalidInput, match="runs on version"):
        await manager.advance("alice", sid, arr(SEQ[1:2]), kind=KIND, version=model.version + 1)
    ended = await manager.advance("alice", sid, arr(SEQ[1:2]), kind=KIND, end=True)
    assert ended.steps == 2
    with pytest.raises(SessionNotFound):
        await manager.get("alice", sid, KIND)


async def test_owner_and_kind_isolation(manager: SessionManager) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    with pytest.raises(SessionNotFound):
        await manager.get("bob", rec.id)
    with pytest.raises(SessionNotFound):
        await manager.advance("bob", rec.id, arr([SEQ[0]]))
    with pytest.raises(SessionNotFound):  # a /v1 session is no /v2 sequence
        await manager.advance("alice", rec.id, arr([SEQ[0]]), kind=KIND)
    assert [r.id for r in await manager.list("alice")] == [rec.id]
    assert await manager.list("bob") == []
    assert (await manager.get("alice", rec.id)).steps == 0


async def test_reset_fork_and_state_roundtrip(manager: SessionManager) -> None:
    rec = await manager.create("alice", "tiny_lstm", version=1)
    await v1_step(manager, "alice", rec.id, {"inputs": SEQ[:3]})
    fork = await manager.fork("alice", rec.id)
    assert fork.steps == 3 and fork.version == 1 and fork.id != rec.id
    a = await v1_step(manager, "alice", rec.id, {"inputs": [SEQ[3]]})
    b = await v1_step(manager, "alice", fork.id, {"inputs": [SEQ[3]]})
    assert a["outputs"] == b["outputs"]

    exported = SessionManager.encode_state(await manager.get("alice", rec.id))
    restored = await manager.create("alice", "tiny_lstm", version=1, state=exported, steps=4)
    c = await v1_step(manager, "alice", rec.id, {"inputs": [SEQ[4]]})
    d = await v1_step(manager, "alice", restored.id, {"inputs": [SEQ[4]]})
    assert c["outputs"] == d["outputs"] and d["steps"] == 5

    before = await manager.get("alice", rec.id)
    reset = await manager.reset("alice", rec.id)
    assert reset.steps == 0 and reset.last is None and reset.revision == before.revision + 1
    fresh = await manager.create("alice", "tiny_lstm", version=1)
    e = await v1_step(manager, "alice", rec.id, {"inputs": [SEQ[0]]})
    f = await v1_step(manager, "alice", fresh.id, {"inputs": [SEQ[0]]})
    assert e["outputs"] == f["outputs"]


async def test_restoring_a_wrong_state_is_invalid(manager: SessionManager) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    good = SessionManager.encode_state(rec)
    wrong_shape = {**good, "h": {**good["h"], "shape": [2, 8]}}
    wrong_dtype = {**good, "h": {**good["h"], "dtype": "float64"}}
    missing = {"h": good["h"]}
    for state in (wrong_shape, wrong_dtype, missing, {"h": 1, "c": 2}, [1]):
        with pytest.raises(InvalidInput):
            await manager.create("alice", "tiny_lstm", state=state)  # type: ignore[arg-type]
    gru_state = SessionManager.encode_state(await manager.create("alice", "tiny_gru"))
    with pytest.raises(InvalidInput):
        await manager.create("alice", "tiny_lstm", state=gru_state)


async def test_expiry_answers_gone_for_a_ttl_then_not_found(
    manager: SessionManager, clock: FakeClock
) -> None:
    rec = await manager.create("alice", "tiny_lstm", ttl=10)
    clock.now += 9
    await manager.advance("alice", rec.id, arr([SEQ[0]]))
    clock.now += 9  # idle time restarts at every step
    assert (await manager.get("alice", rec.id)).steps == 1
    clock.now += 2
    with pytest.raises(SessionGone) as gone:
        await manager.advance("alice", rec.id, arr([SEQ[0]]))
    assert gone.value.code == "session_expired"
    clock.now += 8  # expired at +19: gone until +29
    with pytest.raises(SessionGone):
        await manager.get("alice", rec.id)
    clock.now += 1.5
    with pytest.raises(SessionNotFound):
        await manager.get("alice", rec.id)


async def test_eviction_answers_gone(manager: SessionManager) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    assert await manager.store.evict(rec.id)
    with pytest.raises(SessionGone) as gone:
        await manager.advance("alice", rec.id, arr([SEQ[0]]))
    assert gone.value.code == "session_evicted"


async def test_capacity(manager: SessionManager, clock: FakeClock) -> None:
    manager.settings = manager.settings.model_copy(update={"max_sessions": 5})
    for _ in range(5):
        await manager.create("alice", "tiny_lstm", ttl=5)
    with pytest.raises(CapacityReached):
        await manager.create("alice", "tiny_lstm")
    clock.now += 6  # expired sessions free their places
    await manager.create("alice", "tiny_lstm")


async def test_text_session_equals_predict(
    manager: SessionManager, registry: ModelRegistry
) -> None:
    rec = await manager.create("alice", "tiny_char")
    a = await v1_step(manager, "alice", rec.id, {"text": "hello wor"})
    b = await v1_step(manager, "alice", rec.id, {"text": "ld"})
    model = registry.get("tiny_char")
    ids = np.asarray([model.manifest.input.vocab.index(c) for c in "hello world"])  # type: ignore[union-attr]
    (whole,) = run_sync(model, [ids], [model.zero_state()])
    probs = np.exp(whole.outputs[-1] - whole.outputs[-1].max())
    probs /= probs.sum()
    top = b["outputs"][-1]["top"][0]
    assert top["token"] == model.manifest.input.vocab[int(np.argmax(probs))]  # type: ignore[union-attr]
    assert abs(top["p"] - float(probs.max())) < 1e-5
    assert b["steps"] == 11 and len(a["outputs"]) == 9


async def test_session_locks_hand_over_in_order_and_survive_cancellation() -> None:
    locks = SessionLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def worker(name: str, hold: asyncio.Event | None = None) -> None:
        async with locks("s"):
            order.append(name)
            if hold is not None:
                first_in.set()
                await hold.wait()

    first = asyncio.create_task(worker("a", release_first))
    await first_in.wait()
    waiting = [asyncio.create_task(worker(n)) for n in "bcd"]
    await asyncio.sleep(0)
    waiting[0].cancel()  # "b" leaves the queue before its turn
    await asyncio.sleep(0)
    release_first.set()
    await asyncio.gather(first, *waiting[1:])
    assert order == ["a", "c", "d"]
    assert not locks.held("s")  # nobody holds or waits: the entry is gone

    # a waiter cancelled just as the lock is handed to it passes the lock on
    async with locks("t"):
        handed = asyncio.create_task(locks.acquire("t"))
        after = asyncio.create_task(worker("e"))
        await asyncio.sleep(0)
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    await after
    assert order[-1] == "e" and not locks.held("t")


async def test_a_waiter_cancelled_after_a_release_skipped_it_leaves_quietly() -> None:
    locks = SessionLocks()
    await locks.acquire("s")
    waiter = asyncio.create_task(locks.acquire("s"))
    await asyncio.sleep(0)
    waiter.cancel()  # its future is cancelled now; the task has not run its handler yet
    locks.release("s")  # skips the cancelled future and frees the key
    assert not locks.held("s")
    results = await asyncio.gather(waiter, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    await locks.acquire("s")  # still usable
    locks.release("s")
    assert not locks.held("s")
