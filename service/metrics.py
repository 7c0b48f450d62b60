"""Prometheus metrics, one registry per app so tests can build many apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_RUN_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "lstm_serve_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "lstm_serve_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions_active = Gauge(
            "lstm_serve_sessions_active", "Live sessions (as seen by this replica)", registry=r
        )
        self.sessions_created = Counter(
            "lstm_serve_sessions_created_total", "Sessions created", registry=r
        )
        self.sessions_expired = Counter(
            "lstm_serve_sessions_expired_total", "Sessions found expired", registry=r
        )
        self.sessions_evicted = Counter(
            "lstm_serve_sessions_evicted_total", "Sessions evicted", registry=r
        )
        self.batch_size = Histogram(
            "lstm_serve_inference_batch_size",
            "Sequences per onnxruntime run",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "lstm_serve_inference_queue_wait_seconds",
            "Time from submission to the start of the onnxruntime run",
            ["model"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "lstm_serve_model_run_seconds",
            "onnxruntime run time",
            ["model"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )

    def observe_run(self, model: str, batch: int, waited: float, ran: float) -> None:
        self.batch_size.labels(model).observe(batch)
        self.queue_wait.labels(model).observe(waited)
        self.run_time.labels(model).observe(ran)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(method, route, code).inc()
        self.latency.labels(method, route, code).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
