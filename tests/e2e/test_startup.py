"""What a first start tells its user: a missing model store stops it, an empty one warns,
and every line on stderr is one JSON object even where HOME is not writable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import REPO, free_port

pytestmark = [pytest.mark.e2e]

UNWRITABLE_HOME = "/proc/lstm-serve-no-home"
"""A HOME nobody can create files in, not even root (procfs refuses new entries)."""


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LSTM_SERVE_", "ORT_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@contextmanager
def started(
    env: dict[str, str], stderr_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=err,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, stderr_path.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"not live after 60 s:\n{stderr_path.read_text()}")
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def test_missing_model_store_stops_the_start_naming_the_path() -> None:
    store = "/srv/no-such-store"
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
        cwd=REPO,
        env=server_env(LSTM_SERVE_MODEL_STORE=store),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert store in stderr
    assert "does not exist" in stderr
    assert "LSTM_SERVE_MODEL_STORE" in stderr


def test_a_file_as_model_store_stops_the_start(tmp_path: Path) -> None:
    store = tmp_path / "store.txt"
    store.write_text("not a folder")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
        cwd=REPO,
        env=server_env(LSTM_SERVE_MODEL_STORE=str(store)),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{store} is not a directory" in result.stderr.decode()


@pytest.mark.slow
def test_empty_model_store_starts_with_a_warning(tmp_path: Path) -> None:
    store = tmp_path / "empty-store"
    store.mkdir()
    log = tmp_path / "stderr.log"
    with started(server_env(LSTM_SERVE_MODEL_STORE=str(store)), log) as (url, _):
        assert httpx.get(f"{url}/readyz").status_code == 503
    warnings = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.strip() and json.loads(line).get("level") == "warning"
    ]
    assert any("is empty" in w["msg"] and str(store) in w["msg"] for w in warnings), warnings


@pytest.mark.slow
def test_every_stderr_line_is_json_without_a_writable_home(tmp_path: Path) -> None:
    assert not os.access(UNWRITABLE_HOME, os.W_OK)
    log = tmp_path / "stderr.log"
    env = server_env(HOME=UNWRITABLE_HOME)
    with started(env, log) as (url, _):
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        response = httpx.post(
            f"{url}/v1/models/weather_lstm/predict",
            json={"inputs": [[0.0, 12.8, 5.0, 4.7]]},
        )
        assert response.status_code == 200
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")
        assert isinstance(doc, dict), line
