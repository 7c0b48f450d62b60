"""A ``redis-server`` of a test's own, on a free port: to kill, freeze and bring back.

Without ``workdir`` it keeps nothing on disk. With ``workdir`` it writes an fsync-always
append-only file there, so every acknowledged write survives ``kill()`` (SIGKILL) and
``start()``, which reopens the same port and directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from tests.e2e.server import free_port


class RedisProcess:
    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
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
