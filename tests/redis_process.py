"""Redis for the tests: every test gets a server or a database nobody else uses.

``RedisProcess`` is a ``redis-server`` of a test's own, on a free port: to kill, freeze and
bring back. Without ``workdir`` it keeps nothing on disk. With ``workdir`` it writes an
fsync-always append-only file there, so every acknowledged write survives ``kill()``
(SIGKILL) and ``start()``, which reopens the same port and directory.

The fixtures (registered in ``tests/conftest.py``): ``redis_server`` is one private server
per pytest run, started on first use; ``redis_url`` is a database of its own on it for one
test, emptied afterwards; ``redis_databases`` hands out such databases to fixtures of a
wider scope. Nothing uses a Redis the run did not start, so two runs at once on one machine
(or a developer's Redis on 6379) never meet.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from tests.e2e.server import free_port


class RedisProcess:
    def __init__(
        self, workdir: Path | None = None, port: int | None = None, databases: int = 16
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.workdir = workdir
        self.port = port or free_port()
        self.databases = databases
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--databases", str(self.databases)]
        if self.workdir is None:
            args += ["--appendonly", "no"]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        else:
            self.workdir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "always"]
            with (self.workdir / "redis.log").open("ab") as log:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                client = redis.Redis(port=self.port, socket_timeout=0.5)
                try:
                    if client.ping():  # answers only once an append-only file is loaded
                        return
                finally:
                    client.close()
            except redis.RedisError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0


def start_private_redis(databases: int = 16, attempts: int = 5) -> RedisProcess:
    """A started ``RedisProcess`` on a free port (another free one if that one was taken)."""
    for attempt in range(attempts):
        server = RedisProcess(databases=databases)
        try:
            server.start()
            return server
        except RuntimeError:  # the port was taken between choosing and binding it
            server.kill()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class RedisDatabases:
    """Hands out the databases of one private server, each to one user at a time.

    A database is emptied when it is given back (``FLUSHDB`` on a database of our own
    server, which only this run uses)."""

    def __init__(self, server: RedisProcess) -> None:
        self.server = server
        self._free = list(range(server.databases))
        self._lock = threading.Lock()

    @contextmanager
    def database(self) -> Iterator[str]:
        """The URL of a database nobody else is using, until the block ends."""
        with self._lock:
            if not self._free:
                raise RuntimeError(f"all {self.server.databases} test databases are in use")
            db = self._free.pop(0)
        url = f"redis://127.0.0.1:{self.server.port}/{db}"
        try:
            yield url
        finally:
            client = redis.Redis.from_url(url)
            try:
                client.flushdb()
            finally:
                client.close()
            with self._lock:
                self._free.append(db)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One ``redis-server`` of this pytest run's own, on a free port, for the whole run."""
    server = start_private_redis(databases=64)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_databases(redis_server: RedisProcess) -> RedisDatabases:
    return RedisDatabases(redis_server)


@pytest.fixture
def redis_url(redis_databases: RedisDatabases) -> Iterator[str]:
    """A Redis database of this test's own (on the run's private server), emptied after."""
    with redis_databases.database() as url:
        yield url


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test's own database (``redis_url``), to read or damage what
    a store wrote."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
