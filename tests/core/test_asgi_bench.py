"""``benchmarks.asgi_bench`` runs every case against the real app and reports them all."""

from __future__ import annotations

import pytest

from benchmarks import asgi_bench


def test_every_case_runs_and_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    # each call raises unless it gets the status it expects, so a case that the app
    # refuses (a 4xx from a wrong body, a 404 from a wrong path) fails this test
    assert asgi_bench.main(["--requests", "40", "--rounds", "2", "--concurrency", "4"]) == 0
    out = capsys.readouterr().out
    rows = {
        line[:24].strip(): line[24:].split()
        for line in out.splitlines()
        if line[:24].strip() and line[24:].split() and line[24:].split()[0][0].isdigit()
    }
    for name in (
        "step",
        "step, endpoint alone",
        "predict",
        "predict, all steps",
        "v2",
        "v2, OUTPUT",
    ):
        rate, cpu = rows[name][0], rows[name][1]
        assert float(rate.replace(",", "")) > 0
        assert float(cpu) > 0
        assert len(rows[name]) == 2 + 2  # the two medians, then one value per round
    assert "req/s, v2, OUTPUT / predict, all steps:" in out
