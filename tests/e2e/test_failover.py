"""A Redis primary killed under load, on Redis Cluster and behind Sentinel, with and
without ``LSTM_SERVE_REDIS_WAIT_REPLICAS``.

The harness of ``tests/e2e/test_faults.py``: eight client threads step their own sessions
with offsets through the deployed nginx in front of two replicas, retrying 5xx. The
store is a Redis Cluster (3 primaries, 3 replicas) or one primary with one replica and
three sentinels, started for the test (``tests/redis_topologies.py``). The test SIGKILLs
the primary holding the first client's session; once its replica was promoted, it starts
the killed server again (it comes back as a replica: a primary restarted before the
failover, or while a sentinel still names it, would come back empty and keep its role).

A step acknowledged by a primary that died before its replica had it is lost in the
failover. It must never be lost silently: the session's step count is then below the
client's offset, the next step answers 409 with the true count, and the client sends the
lost steps again (``Stepper.resend_lost``; counted as ``lost``). Afterwards every session
is checked as in the fault tests: step counts equal the acknowledgements, outputs and
state equal an uninterrupted twin. With ``WAIT 1`` no step may be lost.

Each case prints one row: topology, WAIT, steps checked, lost, duplicated, and the seconds
from the kill to the last request that failed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.e2e.cluster import running_cluster
from tests.e2e.test_faults import PATIENT, Load, assert_exactly_once, stepping, verify
from tests.redis_topologies import ClusterProcesses, Node, SentinelProcesses

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]


def _victim_cluster(servers: ClusterProcesses, session_id: str) -> Node:
    """The primary that holds ``session_id``'s record."""
    from service.sessions.redis_cluster import bucket

    key = f"lstm:{{{bucket(session_id)}}}s:{session_id}"
    client = redis.RedisCluster(host="127.0.0.1", port=servers.primary_nodes()[0].port)
    try:
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        assert node is not None
        port = int(node.port)
    finally:
        client.close()
    return next(n for n in servers.nodes if n.port == port)


def _progress_everywhere(load: Load, more: int, timeout: float) -> None:
    """Block until every client has ``more`` further steps acknowledged."""
    targets = [s.acked + more for s in load.steppers]
    deadline = time.monotonic() + timeout
    while any(s.acked < t for s, t in zip(load.steppers, targets, strict=True)):
        load.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"not every session progressed by {more} in {timeout}s")
        time.sleep(0.02)


@pytest.mark.parametrize("wait", [0, 1], ids=["no-wait", "wait-1"])
@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_primary_killed_under_load(
    topology: str, wait: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers: ClusterProcesses | SentinelProcesses
    servers = (
        ClusterProcesses(tmp_path / "redis")
        if topology == "cluster"
        else SentinelProcesses(tmp_path / "redis")
    )
    assert PATIENT.attempts * PATIENT.max_backoff >= 15, "clients must ride out a failover"
    try:
        servers.start()  # in the try: a start that fails is stopped and its logs shown
        with (
            running_cluster(
                servers.url,
                tmp_path / "cluster",
                n_replicas=2,
                env={"LSTM_SERVE_REDIS_WAIT_REPLICAS": str(wait)},
            ) as cluster,
            stepping(cluster.url, resend_lost=True) as load,
        ):
            load.wait_steps(300)
            if isinstance(servers, ClusterProcesses):
                victim = _victim_cluster(servers, load.steppers[0].session.id)
            else:
                victim = servers.primary()
            killed_at = time.monotonic()
            victim.kill()
            deadline = killed_at + 30
            while True:  # the replica takes over
                if isinstance(servers, ClusterProcesses):
                    promoted = len(servers.primary_nodes()) == servers.primaries
                else:
                    # every sentinel names the other server: the victim comes back empty
                    # (no persistence), and a sentinel still naming it would send clients
                    # to an empty primary
                    ports = servers.primary_ports()
                    promoted = len(ports) == 1 and victim.port not in ports
                if promoted:
                    break
                assert time.monotonic() < deadline, "no failover in 30 s"
                load.check_alive()
                time.sleep(0.05)
            # back as a replica of the promoted one: a cluster node by its nodes.conf, a
            # sentinel-watched server by --replicaof
            if isinstance(servers, ClusterProcesses):
                victim.start(None)
            else:
                servers.restart_as_replica(victim)
            servers.wait_healthy()
            _progress_everywhere(load, 50, 60)
            recovered_at = time.monotonic()
            load.finish()
            v = verify(cluster.url, load)
    except BaseException:
        with capsys.disabled():  # what the servers said, for a failure that is hard to repeat
            print(f"\n[failover] {topology} wait={wait} failed; the servers' logs:")
            print(servers.log_tails())
        raise
    finally:
        servers.stop()
    failed = [t for t in load.failed_at if killed_at <= t <= recovered_at]
    outage = (max(failed) - killed_at) if failed else 0.0
    lost = sum(s.lost for s in load.steppers)
    with capsys.disabled():
        print(
            f"\n[failover] topology={topology} wait={wait} steps_checked={v.steps_checked} "
            f"lost={lost} duplicated={v.duplicated} seconds_of_503={outage:.1f} "
            f"failed_requests={len(failed)} replayed={v.replayed}"
        )
    assert_exactly_once(v)  # nothing lost silently, nothing applied twice
    assert failed, "no request failed: the kill did not hit the load"
    if wait:
        assert lost == 0, f"{lost} acknowledged steps lost with WAIT {wait}"
