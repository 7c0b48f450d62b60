"""The image, built without Docker: its own instructions, re-enacted in a fresh virtualenv.

The build context is assembled through ``.dockerignore``; the build stage's ``COPY`` and
``pip install`` run as written (only ``/opt/venv`` points into a temporary directory and
pip may use its download cache); the runtime stage's ``COPY``, ``ENV``, ``WORKDIR`` and
``CMD`` start the server from that virtualenv, outside the source tree. Then: torch is not
importable, the bundled models are served, the ``HEALTHCHECK`` command passes, and the
``STOPSIGNAL`` stops the server cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import Stage, apply_copy, build_context, parse_dockerfile
from tests.e2e.server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


def _workdir(stage: Stage, before: int) -> str:
    workdir = "/"
    for ins in stage.instructions[:before]:
        if ins.keyword == "WORKDIR":
            workdir = ins.args
    return workdir


def _bundled_models(store: Path) -> set[str]:
    return {
        d.name
        for d in store.iterdir()
        if d.is_dir() and any(v.is_dir() and v.name.isdigit() for v in d.iterdir())
    }


def test_what_the_dockerfile_installs_serves_the_bundled_models(tmp_path: Path) -> None:
    _, stages = parse_dockerfile(REPO / "deploy" / "Dockerfile")
    build, runtime = stages[0], stages[-1]
    context = build_context(REPO, tmp_path / "context")
    root = tmp_path / "root"  # stands for the image's /
    venv = tmp_path / "venv"  # stands for /opt/venv

    # -- build stage
    for i, ins in enumerate(build.instructions):
        if ins.keyword == "COPY":
            apply_copy(ins, context, root, _workdir(build, i))
        elif ins.keyword == "RUN":
            command = ins.args.replace("/opt/venv", str(venv)).replace(" --no-cache-dir", "")
            command = command.replace("python -m venv", f"{sys.executable} -m venv", 1)
            workdir = root / _workdir(build, i).lstrip("/")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL"))}
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=workdir,
                env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
                capture_output=True,
                text=True,
                timeout=540,
                check=False,
            )
            assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}{result.stderr}"

    python = venv / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import torch"], capture_output=True, text=True, check=False
    )
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    subprocess.run(
        [str(python), "-c", "import hiredis, onnxruntime, redis, service.sessions.redis_store"],
        cwd=tmp_path,
        check=True,
    )

    # -- runtime stage
    for i, ins in enumerate(runtime.instructions):
        if ins.keyword == "COPY" and not ins.args.startswith("--from"):
            apply_copy(ins, context, root, _workdir(runtime, i))
    env = dict(os.environ)
    for key in [k for k in env if k.startswith(("LSTM_SERVE_", "PYTHON", "VIRTUAL"))]:
        del env[key]
    for key, value in runtime.env().items():
        value = value.replace("$PATH", env.get("PATH", ""))
        env[key] = value.replace("/opt/venv", str(venv)).replace("/app", str(root / "app"))
    store = Path(env["LSTM_SERVE_MODEL_STORE"])
    expected = _bundled_models(store)
    assert expected, f"no bundled models in {store}"

    port = free_port()
    cmd = runtime.last("CMD").words()
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    cwd = root / _workdir(runtime, len(runtime.instructions)).lstrip("/")
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.2)

        models = httpx.get(f"{url}/v1/models", timeout=5).json()["models"]
        assert {m["name"] for m in models} == expected
        for m in models:
            assert httpx.get(f"{url}/v1/models/{m['name']}", timeout=5).status_code == 200

        _, _, exec_form = runtime.last("HEALTHCHECK").args.partition("CMD ")
        health = [w.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for w in json.loads(exec_form)]
        assert subprocess.run(health, env=env, cwd=cwd, timeout=10, check=False).returncode == 0

        stop = getattr(signal, runtime.last("STOPSIGNAL").args)
        server.send_signal(stop)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server.wait(timeout=30) in (0, -stop)
        log.flush()
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()
