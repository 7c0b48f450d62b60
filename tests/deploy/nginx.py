"""Run ``deploy/nginx.conf`` itself on this machine, in front of local replicas.

Only what must differ outside Docker is rewritten: the upstream servers (local ports
instead of Docker's DNS name), the listening addresses, and the pid, log and temp paths
(into a temporary directory, so nginx runs as the current user). Everything that decides
how requests are routed, retried and upgraded is the deployed configuration. The gRPC
listener is a Unix socket in the temporary directory unless a test asks for a gRPC port;
an nginx older than 1.25.1 (Debian 12 has 1.22) gets ``listen ... http2`` for the
``http2 on`` it does not know, which means the same.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _sub(pattern: str, repl: str, text: str, expect: int | None = 1) -> str:
    out, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if expect is not None and n != expect:
        raise AssertionError(f"deploy/nginx.conf: expected {expect} match(es) of {pattern!r}")
    return out


def _servers(ports: Sequence[int]) -> str:
    return "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in ports)


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=True).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert m, out
    return tuple(int(g) for g in m.groups())


def local_nginx_conf(
    src: Path,
    workdir: Path,
    port: int,
    upstream_ports: Sequence[int],
    grpc_port: int | None = None,
    grpc_upstream_ports: Sequence[int] | None = None,
) -> Path:
    """Write the rewritten configuration into ``workdir`` and return its path.

    gRPC is proxied from ``grpc_port`` (a Unix socket in ``workdir`` without one) to
    ``grpc_upstream_ports`` (without them, the HTTP ports stand in: the configuration is
    valid, and nobody calls it)."""
    text = src.read_text()
    text = _sub(r"^\s*server api:8000\b.*;$", _servers(upstream_ports), text)
    text = _sub(r"^\s*server api:8001\b.*;$", _servers(grpc_upstream_ports or upstream_ports), text)
    text = _sub(r"^\s*resolver .*;$", "", text)
    text = _sub(r"^(\s*)listen 8000;$", rf"\1listen 127.0.0.1:{port};", text)
    grpc_at = f"127.0.0.1:{grpc_port}" if grpc_port else f"unix:{workdir}/grpc.sock"
    binary = nginx_binary()
    if binary is not None and nginx_version(binary) < (1, 25, 1):
        text = _sub(r"^(\s*)listen 8001;\n\s*http2 on;$", rf"\1listen {grpc_at} http2;", text)
    else:
        text = _sub(r"^(\s*)listen 8001;$", rf"\1listen {grpc_at};", text)
    text = _sub(r"^pid .*;$", f"pid {workdir}/nginx.pid;", text)
    text = _sub(r"^error_log .*;$", f"error_log {workdir}/error.log warn;", text)
    text = _sub(r"^(\s*access_log) \S+", rf"\1 {workdir}/access.log", text)
    text = _sub(r"^(\s*\w+_temp_path) /tmp/", rf"\1 {workdir}/", text, expect=None)
    if os.geteuid() == 0:  # workers would drop to nobody, who cannot use workdir
        text = "user root;\n" + text
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


@dataclass
class Nginx:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    grpc: str | None = None
    """``host:port`` of the gRPC listener, where one was asked for."""

    def access_log(self) -> str:
        path = self.workdir / "access.log"
        return path.read_text() if path.exists() else ""

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text() if path.exists() else ""


@contextmanager
def running_nginx(
    src: Path,
    workdir: Path,
    port: int,
    upstream_ports: Sequence[int],
    grpc_port: int | None = None,
    grpc_upstream_ports: Sequence[int] | None = None,
) -> Iterator[Nginx]:
    """nginx in the foreground (``daemon off``) on ``port`` (and gRPC on ``grpc_port``);
    stopped on exit."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (Debian package nginx; .ci/run installs it)")
    conf = local_nginx_conf(src, workdir, port, upstream_ports, grpc_port, grpc_upstream_ports)
    process = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    grpc_at = f"127.0.0.1:{grpc_port}" if grpc_port else None
    nginx = Nginx(f"http://127.0.0.1:{port}", port, process, workdir, grpc_at)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited with {process.returncode}:\n{nginx.error_log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not listen on {port}:\n{nginx.error_log()}")
            time.sleep(0.05)
        yield nginx
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
