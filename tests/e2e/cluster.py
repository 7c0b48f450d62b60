"""Redis-backed ``lstm-serve`` replicas behind ``deploy/nginx.conf``, for the e2e tests.

``running_cluster`` starts N real server processes sharing one Redis database and a real
nginx with the deployed configuration (rewritten only where it must be, see
``tests/deploy/nginx.py``). Replicas can be killed and brought back on the same port.
With ``grpc=True`` every replica also serves gRPC on a port of its own and nginx proxies
gRPC to them (``Cluster.grpc``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import redis

from tests.deploy.nginx import Nginx, running_nginx
from tests.e2e.server import REPO, Server, free_port, start_server


@dataclass
class Cluster:
    replicas: list[Server]
    nginx: Nginx
    log_dir: Path
    redis_url: str
    grpc_ports: list[int] | None = None
    """Each replica's gRPC port, where they serve gRPC."""
    env: Mapping[str, str] | None = None
    """Settings every replica gets besides the store's URL."""

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def grpc(self) -> str:
        """nginx's gRPC listener, ``host:port``."""
        assert self.nginx.grpc is not None, "started without grpc=True"
        return self.nginx.grpc

    def upstreams(self, path_pattern: str, count: int = 0, timeout: float = 5.0) -> list[str]:
        """Per logged request matching the path, the replicas nginx tried (``a:1, b:2``).

        nginx writes a request's log line once it has finalised the request, which can be
        just after the client has its answer: with ``count``, wait (up to ``timeout``) until
        that many matching lines are there, so the list holds every request already answered.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = []
            for line in self.nginx.access_log().splitlines():
                m = re.search(r'"\w+ (\S+) HTTP[^"]*" .* upstream=(.+?) upstream_status=', line)
                if m and re.fullmatch(path_pattern, m.group(1)):
                    found.append(m.group(2))
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def restart(self, index: int) -> Server:
        """Bring replica ``index`` back on its port (after it was stopped or killed)."""
        old = self.replicas[index]
        grpc_port = self.grpc_ports[index] if self.grpc_ports else None
        self.replicas[index] = start_replica(
            self.log_dir, self.redis_url, old.port, grpc_port, self.env
        )
        return self.replicas[index]

    def wait_in_rotation(self, index: int, timeout: float = 30.0) -> None:
        """Send requests through nginx until replica ``index`` answers one.

        nginx keeps a replica that failed out of its rotation for the deployed
        ``fail_timeout``, also after it came back; a test that killed one waits here, so
        that the tests after it (in any order) find every replica in rotation again.
        """
        mark = len(self.nginx.access_log().splitlines())
        wanted = f"upstream=127.0.0.1:{self.replicas[index].port} "
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                client.get("/v1/models")
                if any(wanted in line for line in self.nginx.access_log().splitlines()[mark:]):
                    return
                time.sleep(0.1)
        raise AssertionError(f"nginx did not route to replica {index} again in {timeout}s")


def clean_redis(url: str) -> None:
    """Delete the service's keys (default prefix ``lstm:``) from the database in ``url``
    (one Redis; a cluster or sentinel set is the test's own, started for it)."""
    if url.startswith("redis+"):
        return
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="lstm:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def start_replica(
    log_dir: Path,
    redis_url: str,
    port: int | None = None,
    grpc_port: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> Server:
    env = {"LSTM_SERVE_SESSION_STORE": redis_url, "LSTM_SERVE_REQUEST_LOG": "false"}
    env.update(extra or {})
    if grpc_port is not None:
        env["LSTM_SERVE_GRPC_PORT"] = str(grpc_port)
    return start_server(env, log_dir, port=port, ready_timeout=60)


@contextmanager
def running_cluster(
    redis_url: str,
    workdir: Path,
    n_replicas: int = 3,
    grpc: bool = False,
    env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """``n_replicas`` servers on ``redis_url`` behind nginx (``env``: settings of each);
    Redis keys cleaned on both ends."""
    clean_redis(redis_url)
    log_dir = workdir / "replicas"
    nginx_dir = workdir / "nginx"
    log_dir.mkdir(parents=True, exist_ok=True)
    nginx_dir.mkdir(parents=True, exist_ok=True)
    grpc_ports = [free_port() for _ in range(n_replicas)] if grpc else None
    with ThreadPoolExecutor(n_replicas) as pool:
        replicas = list(
            pool.map(
                lambda i: start_replica(
                    log_dir, redis_url, grpc_port=grpc_ports[i] if grpc_ports else None, extra=env
                ),
                range(n_replicas),
            )
        )
    cluster: Cluster | None = None
    try:
        with running_nginx(
            REPO / "deploy" / "nginx.conf",
            nginx_dir,
            free_port(),
            [r.port for r in replicas],
            grpc_port=free_port() if grpc else None,
            grpc_upstream_ports=grpc_ports,
        ) as nginx:
            cluster = Cluster(replicas, nginx, log_dir, redis_url, grpc_ports, env)
            yield cluster
    finally:
        for r in cluster.replicas if cluster is not None else replicas:
            r.stop()
        with suppress(redis.RedisError):
            clean_redis(redis_url)


def sequence(n: int, size: int, seed: int) -> list[list[float]]:
    """``n`` weather-like rows of ``size`` features, exactly representable as float32."""
    rng = np.random.default_rng(seed)
    base = np.array([3.0, 16.0, 8.0, 3.3])[:size] if size == 4 else np.zeros(size)
    x = base + rng.standard_normal((n, size)) * 2.0
    return [[float(np.float32(v)) for v in row] for row in x]
