"""``lstm-serve generate`` and ``lstm-serve forecast`` against a real server."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.client import Client
from tests.e2e.server import REPO, Server

pytestmark = pytest.mark.e2e


def test_generate_prints_the_prime_and_the_streamed_characters(
    tiny_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "tiny_char", "--prime", "hello ", "--steps", "20", "--seed", "3"]
    assert main([*argv, "--url", tiny_server.url]) == 0
    out = capsys.readouterr().out
    with Client(tiny_server.url) as client:
        expected = client.generate("tiny_char", "hello ", 20, seed=3)
    assert out == "hello " + "".join(o["token"] for o in expected) + "\n"
    assert main([*argv, "--url", tiny_server.url, "--temperature", "0", "--no-prime"]) == 0
    greedy = capsys.readouterr().out
    assert len(greedy) == 21 and not greedy.startswith("hello")


def test_generate_streams_to_a_pipe(tiny_server: Server) -> None:
    args = ["generate", "tiny_char", "--url", tiny_server.url, "--prime", "ab", "--steps", "50"]
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", *args, "--seed", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ab") and len(proc.stdout) == 2 + 50 + 1


def test_generate_errors_are_reported(
    tiny_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", "nope", "--prime", "a", "--steps", "3", "--url", tiny_server.url])
    assert code == 1
    assert "model_not_found" in capsys.readouterr().err
    code = main(["generate", "tiny_lstm", "--prime", "a", "--steps", "3", "--url", tiny_server.url])
    assert code == 1  # the regression model refuses a text context (422)


def test_forecast_reads_columns_by_name_and_prints_csv(
    tiny_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(12, 3)).round(3)
    path = tmp_path / "obs.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "f2", "f0", "f1"])  # other order, extra column
        for i, r in enumerate(rows):
            w.writerow([f"2024-01-{i + 1:02d}", r[2], r[0], r[1]])
    argv = ["forecast", "tiny_lstm", "--csv", str(path), "--horizon", "5"]
    assert main([*argv, "--url", tiny_server.url]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == ["step", "f0", "f1", "f2"]
    assert [int(r[0]) for r in table[1:]] == [1, 2, 3, 4, 5]
    with Client(tiny_server.url) as client:
        expected = client.generate("tiny_lstm", rows.tolist(), 5)
    np.testing.assert_allclose(
        [[float(v) for v in r[1:]] for r in table[1:]], expected, rtol=1e-5, atol=1e-5
    )


def test_forecast_refuses_a_csv_without_the_feature_columns(
    tiny_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n")
    argv = ["forecast", "tiny_lstm", "--csv", str(path), "--horizon", "2"]
    assert main([*argv, "--url", tiny_server.url]) == 2
    assert "missing columns" in capsys.readouterr().err


def _bundled(name: str) -> bool:
    return any((REPO / "model_store" / name).glob("*/manifest.json"))


@pytest.mark.skipif(
    not (_bundled("pydoc_char_lstm") and _bundled("weather_lstm")),
    reason="bundled models not trained yet",
)
def test_cli_on_the_bundled_models(
    bundled_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", bundled_server.url]
    argv = ["generate", "pydoc_char_lstm", "--prime", "def ", "--steps", "40", "--seed", "1"]
    assert main([*argv, *url]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text) == 4 + 40 + 1
    path = tmp_path / "weather.csv"
    path.write_text(
        "date,precipitation,temp_max,temp_min,wind\n"
        + "".join(
            f"2015-12-{d:02d},{d % 3 * 1.5},{8 + d % 4},{2 + d % 3},{3 + d % 5}\n"
            for d in range(1, 31)
        )
    )
    assert main(["forecast", "weather_lstm", "--csv", str(path), "--horizon", "7", *url]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == ["step", "precipitation", "temp_max", "temp_min", "wind"]
    assert len(table) == 8 and all(np.isfinite([float(v) for v in r[1:]]).all() for r in table[1:])
