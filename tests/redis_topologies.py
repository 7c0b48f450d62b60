"""Redis Cluster and Sentinel for the tests: real servers of the run's own.

``ClusterProcesses`` is a Redis Cluster of three primaries and three replicas
(``redis-server --cluster-enabled yes``, joined by ``redis-cli --cluster create
--cluster-replicas 1``); ``SentinelProcesses`` is one primary, one replica and three
sentinels watching them as ``mymaster``. Every server runs on free ports (its cluster bus
too), in a directory of its own under the test's temporary directory, and can be killed
(SIGKILL) and started again on the same port and directory: a killed cluster primary comes
back as a replica of the one that replaced it, a killed Sentinel primary is made a replica
of the promoted one by the sentinels.

Failover is fast on purpose: ``cluster-node-timeout`` 1 s, sentinels' ``down-after`` 1 s.
A cluster shard without a primary leaves the other shards serving
(``cluster-require-full-coverage no``, as the deployment docs advise).

The fixtures (registered in ``tests/conftest.py``): ``redis_cluster`` and
``redis_sentinel``, one of each per pytest run, started on first use; tests share them
under key prefixes of their own.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.server import free_port

SERVICE = "mymaster"


def _wait(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _command(client: redis.Redis, *args: str) -> Any:
    """A raw command's reply (``CLUSTER``, ``SENTINEL``)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _replica_online(repl: dict[str, object]) -> bool:
    """Whether a primary's ``INFO replication`` shows a replica done with its first sync."""
    replica = repl.get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


class Node:
    """One ``redis-server`` with extra arguments, in ``workdir``, restartable in place."""

    def __init__(self, workdir: Path, extra: list[str], port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, config: str | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server"]
        if config is not None:
            conf = self.workdir / "node.conf"
            if not conf.exists():  # a sentinel rewrites its file: keep it across restarts
                conf.write_text(config)
            args.append(str(conf))
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        args += self.extra
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _wait(self.ping, 15, f"redis-server on {self.port}")

    def ping(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"redis-server on {self.port} exited")
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of this server's log (for a failed test's report)."""
        log = self.workdir / "redis.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return f"--- {self.workdir.name} :{self.port}\n" + "\n".join(text.splitlines()[-lines:])


class ClusterProcesses:
    """Three primaries, three replicas: a Redis Cluster on free ports."""

    def __init__(self, workdir: Path, primaries: int = 3) -> None:
        self.nodes = []
        for i in range(primaries * 2):
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
                "--cluster-port", str(free_port()),
                "--cluster-require-full-coverage", "no",
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
            self.nodes.append(Node(workdir / f"node{i}", extra))
        self.primaries = primaries

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addrs,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_healthy()

    def roles(self) -> dict[int, tuple[str, str]]:
        """Port -> (role, the primary's node id or its own id), from a live node's view."""
        live = next(n for n in self.nodes if n.alive())
        client = live.client()
        try:
            lines = _command(client, "CLUSTER", "NODES")
        finally:
            client.close()
        text = lines.decode() if isinstance(lines, bytes) else str(lines)
        out: dict[int, tuple[str, str]] = {}
        for line in text.splitlines():
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            flags = parts[2]
            role = "primary" if "master" in flags else "replica"
            if "fail" in flags and "fail?" not in flags:
                role = "failed"
            out[port] = (role, parts[0] if role != "replica" else parts[3])
        return out

    def primary_nodes(self) -> list[Node]:
        roles = self.roles()
        return [n for n in self.nodes if n.alive() and roles.get(n.port, ("",))[0] == "primary"]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Every node up, the cluster ``ok`` on each, and every primary with a replica in
        sync."""

        def healthy() -> bool:
            for node in self.nodes:
                if not node.alive():
                    return False
                client = node.client()
                try:
                    info = _command(client, "CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
                    repl = client.info("replication")
                finally:
                    client.close()
                if repl["role"] == "master" and not _replica_online(repl):
                    return False
                if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                    return False
            return len(self.primary_nodes()) == self.primaries

        _wait(healthy, timeout, "a healthy cluster")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def log_tails(self) -> str:
        return "\n".join(node.log_tail() for node in self.nodes)


class SentinelProcesses:
    """One primary, one replica, three sentinels watching them as ``mymaster``."""

    def __init__(self, workdir: Path) -> None:
        self.data = [Node(workdir / "data0", []), Node(workdir / "data1", [])]
        self.data[1].extra = ["--replicaof", "127.0.0.1", str(self.data[0].port)]
        self.sentinels = [Node(workdir / f"sentinel{i}", ["--sentinel"]) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        for node in self.data:
            node.start()
        conf = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.data[0].port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        for s in self.sentinels:
            s.start(conf)
        self.wait_healthy()

    def primary_port(self) -> int:
        client = self.sentinels[0].client()
        try:
            _, port = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        finally:
            client.close()
        return int(port)

    def primary_ports(self) -> set[int]:
        """The primary each sentinel names (one port once they all agree)."""
        ports = set()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                _, port = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            finally:
                client.close()
            ports.add(int(port))
        return ports

    def primary(self) -> Node:
        port = self.primary_port()
        return next(n for n in self.data if n.port == port)

    def restart_as_replica(self, node: Node) -> None:
        """Start ``node`` again as a replica of the primary every sentinel names.

        Started as it was (a primary, empty without persistence), it would stay a primary
        until the sentinels turn it into a replica on a later look, seconds on: a second
        failover in that window could promote it and lose every session.
        """
        ports = self.primary_ports()
        if len(ports) != 1 or node.port in ports:
            raise RuntimeError(f"the sentinels name {sorted(ports)}, not one other primary")
        node.extra = ["--replicaof", "127.0.0.1", str(ports.pop())]
        node.start()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Both data nodes up, the sentinels agreeing on a primary that has its replica in
        sync, and each sentinel knowing the others."""

        def healthy() -> bool:
            if not all(n.alive() for n in self.data):
                return False
            ports = set()
            for s in self.sentinels:
                client = s.client()
                try:
                    _, port = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                    master = _command(client, "SENTINEL", "MASTER", SERVICE)
                finally:
                    client.close()
                if isinstance(master, list):
                    master = dict(zip(master[::2], master[1::2], strict=True))
                flags = master[b"flags"].decode()
                if int(master[b"num-other-sentinels"]) < 2 or "down" in flags:
                    return False
                ports.add(int(port))
            if len(ports) != 1:
                return False
            primary = next(n for n in self.data if n.port in ports).client()
            try:
                repl = primary.info("replication")
            finally:
                primary.close()
            return repl["role"] == "master" and _replica_online(repl)

        _wait(healthy, timeout, "a healthy sentinel set")

    def stop(self) -> None:
        for node in self.sentinels + self.data:
            node.kill()

    def log_tails(self) -> str:
        return "\n".join(node.log_tail() for node in self.sentinels + self.data)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    """A Redis Cluster of this run's own (3 primaries, 3 replicas), for the whole run."""
    cluster = ClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelProcesses]:
    """One primary, one replica and three sentinels of this run's own, for the whole run."""
    sentinels = SentinelProcesses(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        sentinels.start()
        yield sentinels
    finally:
        sentinels.stop()


REDIS_KINDS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis),
    pytest.param("sentinel", marks=pytest.mark.redis),
]
"""The Redis topologies a store suite runs on: one Redis, Redis Cluster, Sentinel."""


def redis_target(request: pytest.FixtureRequest, kind: str) -> tuple[str, str]:
    """A session-store URL of ``kind`` and a key prefix for one test: a database of its own
    on one Redis, a prefix of its own on the shared cluster or sentinel set."""
    prefix = f"test:{uuid.uuid4().hex}:"
    if kind == "redis":
        return request.getfixturevalue("redis_url"), prefix
    if kind == "cluster":
        return request.getfixturevalue("redis_cluster").url, prefix
    if kind == "sentinel":
        return request.getfixturevalue("redis_sentinel").url, prefix
    raise ValueError(kind)
