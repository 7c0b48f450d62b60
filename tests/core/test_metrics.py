"""The request statistics behind ``lstm_serve_requests_total`` and its latency histogram."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_request_counts_and_cumulative_latency_buckets() -> None:
    m = Metrics()
    for seconds in (0.0001, 0.0002, 0.0003, 0.004, 3.0):
        m.observe_request("POST", "/v1/sessions/{session_id}/step", 200, seconds)
    m.observe_request("GET", "/v1/models", 404, 0.01)
    got = _samples(m)
    step = (("method", "POST"), ("route", "/v1/sessions/{session_id}/step"), ("status", "200"))
    assert got[("lstm_serve_requests_total", step)] == 5

    def bucket(le: str) -> float:
        return got[("lstm_serve_request_duration_seconds_bucket", (("le", le), *step))]

    assert bucket("0.0002") == 2  # an observation equal to a bound counts in that bucket
    assert bucket("0.0005") == 3
    assert bucket("0.005") == 4
    assert bucket("2.5") == 4
    assert bucket("+Inf") == 5
    assert got[("lstm_serve_request_duration_seconds_count", step)] == 5
    assert abs(got[("lstm_serve_request_duration_seconds_sum", step)] - 3.0046) < 1e-9
    other = (("method", "GET"), ("route", "/v1/models"), ("status", "404"))
    assert got[("lstm_serve_requests_total", other)] == 1
