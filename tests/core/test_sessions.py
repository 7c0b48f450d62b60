"""The session manager without HTTP: stepping, offsets, failures, lifecycle, expiry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import (
    CapacityReached,
    InvalidInput,
    OffsetConflict,
    SessionGone,
    SessionNotFound,
)
from service.inference.runner import Runner, run_sync
from service.models.encoding import denormalise
from service.models.manifest import RegressionOutput
from service.models.registry import ModelRegistry
from service.sessions.manager import SessionManager
from service.sessions.store import MemoryStore
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


SEQ = [[0.5, 1.0, -2.0], [1.5, 0.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 0.25, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("name", ["tiny_lstm", "tiny_gru"])
async def test_step_by_step_equals_whole_sequence(
    manager: SessionManager, registry: ModelRegistry, name: str
) -> None:
    rec = await manager.create("alice", name)
    outs = []
    for step in SEQ:
        res = await manager.step("alice", rec.id, {"inputs": [step]})
        outs.extend(res.body["outputs"])
    np.testing.assert_allclose(np.asarray(outs), whole_sequence(registry, name, SEQ), atol=1e-5)
    assert (await manager.get("alice", rec.id)).steps == len(SEQ)


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
        res = await manager.step("alice", rec.id, {"inputs": chunk, "offset": offset})
        offset = res.body["steps"]
        outs.extend(res.body["outputs"])
    np.testing.assert_allclose(
        np.asarray(outs), whole_sequence(registry, "tiny_lstm", seq), atol=1e-5
    )
    await manager.delete("alice", rec.id)


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
    await manager.step("alice", rec.id, {"inputs": SEQ[:2]})
    before = await manager.get("alice", rec.id)
    with pytest.raises((InvalidInput, OffsetConflict)):
        await manager.step("alice", rec.id, bad)
    after = await manager.get("alice", rec.id)
    assert after.steps == before.steps and after.revision == before.revision
    for k in before.state:
        np.testing.assert_array_equal(after.state[k], before.state[k])
    await manager.delete("alice", rec.id)


async def test_offset_conflict_and_replay(manager: SessionManager) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    first = await manager.step("alice", rec.id, {"inputs": [SEQ[0]], "offset": 0})
    again = await manager.step("alice", rec.id, {"inputs": [SEQ[0]], "offset": 0})
    assert again.replayed and again.body["replayed"] is True
    assert again.body["outputs"] == first.body["outputs"] and again.body["steps"] == 1
    with pytest.raises(OffsetConflict) as conflict:
        await manager.step("alice", rec.id, {"inputs": [SEQ[1]], "offset": 0})
    assert conflict.value.steps == 1
    assert (await manager.get("alice", rec.id)).steps == 1


async def test_concurrent_steps_are_serialised(
    manager: SessionManager, registry: ModelRegistry
) -> None:
    import asyncio

    rec = await manager.create("alice", "tiny_lstm")
    seq = [[float(i), float(-i), 0.5] for i in range(20)]
    results = await asyncio.gather(*(manager.step("alice", rec.id, {"inputs": [s]}) for s in seq))
    assert sorted(r.body["steps"] for r in results) == list(range(1, 21))
    outs = [r.body["outputs"][0] for r in sorted(results, key=lambda r: r.body["steps"])]
    np.testing.assert_allclose(
        np.asarray(outs), whole_sequence(registry, "tiny_lstm", seq), atol=1e-5
    )


async def test_owner_isolation(manager: SessionManager) -> None:
    rec = await manager.create("alice", "tiny_lstm")
    with pytest.raises(SessionNotFound):
        await manager.get("bob", rec.id)
    with pytest.raises(SessionNotFound):
        await manager.step("bob", rec.id, {"inputs": [SEQ[0]]})
    assert [r.id for r in await manager.list("alice")] == [rec.id]
    assert await manager.list("bob") == []


async def test_reset_fork_and_state_roundtrip(manager: SessionManager) -> None:
    rec = await manager.create("alice", "tiny_lstm", version=1)
    await manager.step("alice", rec.id, {"inputs": SEQ[:3]})
    fork = await manager.fork("alice", rec.id)
    assert fork.steps == 3 and fork.version == 1 and fork.id != rec.id
    a = await manager.step("alice", rec.id, {"inputs": [SEQ[3]]})
    b = await manager.step("alice", fork.id, {"inputs": [SEQ[3]]})
    assert a.body["outputs"] == b.body["outputs"]

    exported = SessionManager.encode_state(await manager.get("alice", rec.id))
    restored = await manager.create("alice", "tiny_lstm", version=1, state=exported, steps=4)
    c = await manager.step("alice", rec.id, {"inputs": [SEQ[4]]})
    d = await manager.step("alice", restored.id, {"inputs": [SEQ[4]]})
    assert c.body["outputs"] == d.body["outputs"] and d.body["steps"] == 5

    reset = await manager.reset("alice", rec.id)
    assert reset.steps == 0
    fresh = await manager.create("alice", "tiny_lstm", version=1)
    e = await manager.step("alice", rec.id, {"inputs": [SEQ[0]]})
    f = await manager.step("alice", fresh.id, {"inputs": [SEQ[0]]})
    assert e.body["outputs"] == f.body["outputs"]


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
    await manager.step("alice", rec.id, {"inputs": [SEQ[0]]})
    clock.now += 9  # idle time restarts at every step
    assert (await manager.get("alice", rec.id)).steps == 1
    clock.now += 2
    with pytest.raises(SessionGone) as gone:
        await manager.step("alice", rec.id, {"inputs": [SEQ[0]]})
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
        await manager.step("alice", rec.id, {"inputs": [SEQ[0]]})
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
    a = await manager.step("alice", rec.id, {"text": "hello wor"})
    b = await manager.step("alice", rec.id, {"text": "ld"})
    model = registry.get("tiny_char")
    ids = np.asarray([model.manifest.input.vocab.index(c) for c in "hello world"])  # type: ignore[union-attr]
    (whole,) = run_sync(model, [ids], [model.zero_state()])
    probs = np.exp(whole.outputs[-1] - whole.outputs[-1].max())
    probs /= probs.sum()
    top = b.body["outputs"][-1]["top"][0]
    assert top["token"] == model.manifest.input.vocab[int(np.argmax(probs))]  # type: ignore[union-attr]
    assert abs(top["p"] - float(probs.max())) < 1e-5
    assert b.body["steps"] == 11 and len(a.body["outputs"]) == 9


async def test_steps_on_one_session_apply_in_arrival_order(manager: SessionManager) -> None:
    import asyncio

    rec = await manager.create("alice", "tiny_lstm")
    results = await asyncio.gather(
        *(manager.step("alice", rec.id, {"inputs": [[float(i), 0.0, 0.0]]}) for i in range(12))
    )
    assert [r.body["steps"] for r in results] == list(range(1, 13))


async def test_session_locks_hand_over_in_order_and_survive_cancellation() -> None:
    import asyncio

    from service.sessions.manager import _Locks

    locks = _Locks()
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
    import asyncio

    from service.sessions.manager import _Locks

    locks = _Locks()
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
