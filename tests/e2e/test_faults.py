"""Faults under load: replicas and Redis die while clients step sessions through nginx.

Eight threads, each with its own ``service.client.Client`` and session, step through the
deployed nginx in front of Redis-backed replicas. Each step carries its offset, and the
client retries transport errors and 5xx/429 with backoff. Meanwhile the test SIGKILLs a
replica (then restarts it), or SIGKILLs Redis (with an fsync-always append-only file) and
restarts it on the same port and directory.

Afterwards, for every session: the server's step count equals the steps the client saw
acknowledged (none lost, none applied twice); every acknowledged output equals one
whole-sequence predict over the same inputs; and the session's state and next output equal
those of an uninterrupted twin that took the same inputs in one request (1e-5).
"""

from __future__ import annotations

import base64
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.client import Client, OffsetConflict, RetryPolicy, Session
from tests.e2e.cluster import Cluster, running_cluster, sequence
from tests.redis_process import RedisProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

MODEL = "weather_lstm"
FEATURES = 4
TOL = 1e-5
CLIENTS = 8
MAX_STEPS = 20_000
"""Inputs prepared per session, more than the clients get through."""
MAX_PER_REQUEST = 4096
"""The server's default ``LSTM_SERVE_MAX_STEPS_PER_REQUEST``."""
PATIENT = RetryPolicy(attempts=80, backoff=0.02, max_backoff=0.25)
"""Rides out ~20 s of outage: a dead replica, or Redis down and reloading its AOF."""


class CountingTransport(httpx.BaseTransport):
    """Counts what the client had to retry: transport errors and 429/5xx answers."""

    def __init__(
        self, counts: Counter[str], lock: threading.Lock, failed_at: list[float] | None = None
    ) -> None:
        self.inner = httpx.HTTPTransport()
        self.counts = counts
        self.lock = lock
        self.failed_at = failed_at if failed_at is not None else []
        """When each retried request failed (``time.monotonic()``)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            resp = self.inner.handle_request(request)
        except httpx.TransportError as exc:
            with self.lock:
                self.counts[type(exc).__name__] += 1
                self.failed_at.append(time.monotonic())
            raise
        if resp.status_code == 429 or resp.status_code >= 500:
            with self.lock:
                self.counts[f"http_{resp.status_code}"] += 1
                self.failed_at.append(time.monotonic())
        return resp

    def close(self) -> None:
        self.inner.close()


@dataclass
class Stepper:
    """One client thread: steps its own session in chunks of 1, 2, 3, 1, ... steps."""

    client: Client
    session: Session
    inputs: list[list[float]]
    acked: int = 0
    outputs: list[list[float]] = field(default_factory=list)
    replayed: int = 0
    error: BaseException | None = None
    resend_lost: bool = False
    """On a 409 whose true step count is below the steps acknowledged (steps lost in a
    Redis failover), count them in ``lost`` and send them again; else such a 409 fails."""
    lost: int = 0

    def run(self, stop: threading.Event) -> None:
        size = 1
        try:
            while not stop.is_set() and self.acked < len(self.inputs):
                a = self.acked
                b = min(len(self.inputs), a + size)
                try:
                    result = self.session.step(self.inputs[a:b])
                except OffsetConflict as exc:
                    if not self.resend_lost or exc.steps is None or exc.steps >= a:
                        raise
                    self.lost += a - exc.steps
                    self.acked = self.session.steps = exc.steps
                    del self.outputs[exc.steps :]
                    continue
                if result.steps != b or len(result.outputs) != b - a:
                    raise AssertionError(f"step at offset {a} answered {result.raw}")
                self.outputs += result.outputs
                self.replayed += result.replayed
                self.acked = b
                size = size % 3 + 1
        except BaseException as exc:
            self.error = exc


@dataclass
class Load:
    steppers: list[Stepper]
    counts: Counter[str]
    stop: threading.Event
    threads: list[threading.Thread]
    failed_at: list[float] = field(default_factory=list)
    """When each request the clients retried failed (``time.monotonic()``)."""

    def acked(self) -> int:
        return sum(s.acked for s in self.steppers)

    def check_alive(self) -> None:
        for s in self.steppers:
            if s.error is not None:
                raise AssertionError(f"client of session {s.session.id} failed") from s.error

    def wait_steps(self, more: int, timeout: float = 30.0) -> None:
        """Block until the clients have ``more`` further steps acknowledged."""
        target = self.acked() + more
        deadline = time.monotonic() + timeout
        while self.acked() < target:
            self.check_alive()
            if all(s.acked == len(s.inputs) for s in self.steppers):
                raise AssertionError("the clients ran out of inputs; raise MAX_STEPS")
            if time.monotonic() > deadline:
                raise AssertionError(f"no progress: {self.acked()} of {target} steps in {timeout}s")
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), "a client thread hung"
        self.check_alive()


@contextmanager
def stepping(url: str, clients: int = CLIENTS, resend_lost: bool = False) -> Iterator[Load]:
    """``clients`` threads stepping their own sessions through ``url`` until ``finish()``."""
    counts: Counter[str] = Counter()
    failed_at: list[float] = []
    lock = threading.Lock()
    steppers: list[Stepper] = []
    try:
        for i in range(clients):
            transport = CountingTransport(counts, lock, failed_at)
            client = Client(url, timeout=10.0, retry=PATIENT, transport=transport)
            inputs = sequence(MAX_STEPS, FEATURES, 1000 + i)
            steppers.append(Stepper(client, client.session(MODEL), inputs, resend_lost=resend_lost))
        stop = threading.Event()
        threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in steppers]
        for t in threads:
            t.start()
        load = Load(steppers, counts, stop, threads, failed_at)
        try:
            yield load
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    finally:
        for s in steppers:
            s.client.close()


def _state(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(base64.b64decode(t["data_b64"]), dtype="<f4").reshape(t["shape"])
        for name, t in doc["state"].items()
    }


@dataclass
class Verdict:
    sessions: int = 0
    steps_checked: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0
    replayed: int = 0
    details: list[str] = field(default_factory=list)


def verify(url: str, load: Load) -> Verdict:
    """Compare every session with the client's acknowledgements and an uninterrupted twin."""
    v = Verdict()
    with Client(url, timeout=30.0, retry=PATIENT) as client:
        for s in load.steppers:
            v.sessions += 1
            v.replayed += s.replayed
            done = s.inputs[: s.acked]
            server_steps = int(client.get_session(s.session.id).refresh()["steps"])
            v.lost += max(0, s.acked - server_steps)
            v.duplicated += max(0, server_steps - s.acked)
            if server_steps != s.acked:
                v.details.append(f"{s.session.id}: server {server_steps}, acked {s.acked}")

            assert done, f"session {s.session.id} never stepped"
            head = min(len(done), MAX_PER_REQUEST)
            whole = np.asarray(client.predict(MODEL, done[:head], return_="all"))
            if not np.allclose(s.outputs[:head], whole, rtol=TOL, atol=TOL):
                v.mismatched += 1
                v.details.append(f"{s.session.id}: acknowledged outputs differ from predict")

            with client.session(MODEL) as twin:
                twin_outputs: list[list[float]] = []
                for a in range(0, len(done), MAX_PER_REQUEST):
                    twin_outputs += twin.step(done[a : a + MAX_PER_REQUEST]).outputs
                got, want = np.asarray(s.outputs), np.asarray(twin_outputs)
                if got.shape != want.shape or not np.allclose(got, want, rtol=TOL, atol=TOL):
                    v.mismatched += 1
                    v.details.append(f"{s.session.id}: acknowledged outputs differ from the twin")
                ours, theirs = _state(s.session.state()), _state(twin.state())
                for name in theirs:
                    if not np.allclose(ours[name], theirs[name], rtol=TOL, atol=TOL):
                        v.mismatched += 1
                        v.details.append(f"{s.session.id}: state {name} differs from the twin")
                x_next = sequence(1, FEATURES, 9999)
                mine, twins = s.session.step(x_next), twin.step(x_next)
                if mine.steps != twins.steps or not np.allclose(
                    mine.output, twins.output, rtol=TOL, atol=TOL
                ):
                    v.mismatched += 1
                    v.details.append(f"{s.session.id}: next output differs from the twin")
            v.steps_checked += s.acked + 1
    return v


def report(
    capsys: pytest.CaptureFixture[str],
    title: str,
    faults: list[str],
    load: Load,
    v: Verdict,
    seconds: float,
) -> None:
    retried = ", ".join(f"{k} {n}" for k, n in sorted(load.counts.items())) or "none"
    with capsys.disabled():
        print(
            f"\n[{title}] faults injected: {len(faults)} ({'; '.join(faults)}); "
            f"sessions: {v.sessions}; steps checked: {v.steps_checked}; "
            f"client retries: {retried}; replayed answers: {v.replayed}; "
            f"lost: {v.lost}; duplicated: {v.duplicated}; mismatched: {v.mismatched}; "
            f"{seconds:.1f}s"
        )


def assert_exactly_once(v: Verdict) -> None:
    assert (v.lost, v.duplicated, v.mismatched) == (0, 0, 0), v.details


def _served_since(cluster: Cluster, port: int, since: int) -> int:
    """Requests answered by the replica on ``port`` in nginx's log after line ``since``."""
    lines = cluster.nginx.access_log().splitlines()[since:]
    return sum(1 for line in lines if f"upstream=127.0.0.1:{port} " in line)


def _poll(condition: Callable[[], bool], timeout: float, what: str, load: Load) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        load.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_replica_sigkill_under_load_loses_and_duplicates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    started = time.monotonic()
    faults: list[str] = []
    with running_cluster(redis_url, tmp_path) as cluster, stepping(cluster.url) as load:
        load.wait_steps(200)
        for victim in (0, 1):
            port = cluster.replicas[victim].port
            assert cluster.replicas[victim].stop(signal.SIGKILL) == -signal.SIGKILL
            faults.append(f"SIGKILL replica :{port}")
            load.wait_steps(150)  # the other replicas carry the load meanwhile
            mark = len(cluster.nginx.access_log().splitlines())
            cluster.restart(victim)
            _poll(
                lambda: _served_since(cluster, port, mark) > 0,  # noqa: B023
                30,
                f"nginx to use the restarted replica :{port} again",
                load,
            )
            load.wait_steps(150)
        load.finish()
        assert load.counts, "no request ever failed: the faults did not hit the load"
        v = verify(cluster.url, load)
    report(capsys, "replica kill", faults, load, v, time.monotonic() - started)
    assert_exactly_once(v)


def test_redis_sigkill_and_restart_under_load_loses_and_duplicates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    faults: list[str] = []
    store = RedisProcess(tmp_path / "redis")
    store.start()
    try:
        with (
            running_cluster(store.url, tmp_path / "cluster", n_replicas=2) as cluster,
            stepping(cluster.url) as load,
        ):
            load.wait_steps(200)
            for _ in range(2):
                before = load.counts["http_503"]
                store.kill()
                faults.append(f"SIGKILL redis :{store.port}")
                _poll(
                    lambda: load.counts["http_503"] > before,  # noqa: B023
                    10,
                    "503s while Redis is down",
                    load,
                )
                time.sleep(1.0)  # a real outage: every client keeps retrying meanwhile
                store.start()
                load.wait_steps(200)
            load.finish()
            v = verify(cluster.url, load)
    finally:
        store.kill()
    report(capsys, "redis kill", faults, load, v, time.monotonic() - started)
    assert_exactly_once(v)
