"""Prometheus metrics, one registry per app so tests can build many apps in one process."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_RUN_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class RequestStats(Collector):
    """``lstm_serve_requests_total`` and ``lstm_serve_request_duration_seconds`` (and, with
    another name and labels, the same pair for gRPC calls by service, RPC and status code).

        Kept as plain counters per (method, route, status) and turned into Prometheus
        families only when scraped: ``labels()`` plus a locked counter and histogram cost
        several microseconds per request, a few percent of a session step. Observations come
        from the event loop thread only.
    """

    def __init__(
        self,
        buckets: tuple[float, ...],
        name: str = "lstm_serve_request",
        what: str = "HTTP request",
        labels: tuple[str, str, str] = ("method", "route", "status"),
    ) -> None:
        self._buckets = buckets
        self._name = name
        self._what = what
        self._labels = list(labels)
        # per series: one count per bucket, then the +Inf overflow, then the sum
        self._series: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int | str, seconds: float) -> None:
        key = (method, route, str(status))
        counts = self._series.get(key)
        if counts is None:
            counts = self._series[key] = [0] * (len(self._buckets) + 2)
        counts[bisect_left(self._buckets, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        labels = self._labels
        total = CounterMetricFamily(f"{self._name}s", f"{self._what}s", labels=labels)
        latency = HistogramMetricFamily(
            f"{self._name}_duration_seconds", f"{self._what} latency", labels=labels
        )
        bounds = [str(float(b)) for b in self._buckets] + ["+Inf"]
        for key, counts in list(self._series.items()):
            counts = list(counts)
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for bound, n in zip(bounds, counts[:-1], strict=True):
                running += n
                cumulative.append((bound, running))
            total.add_metric(list(key), running)
            latency.add_metric(list(key), cumulative, counts[-1])
        yield total
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = RequestStats(_LATENCY_BUCKETS)
        r.register(self.requests)
        self.grpc_requests = RequestStats(
            _LATENCY_BUCKETS,
            "lstm_serve_grpc_request",
            "gRPC call",  # a request on a stream counts as one call
            ("service", "rpc", "code"),
        )
        r.register(self.grpc_requests)
        self.access_log_dropped = Counter(
            "lstm_serve_access_log_dropped",
            "Access-log lines not written: the writer's queue was full or the stream failed",
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
        self.model_process_exits = Counter(
            "lstm_serve_model_process_exits_total",
            "onnxruntime child processes that exited while the server ran (each is restarted)",
            registry=r,
        )
        # labels() per onnxruntime run shows in profiles: the children are kept per model
        self._run_children: dict[str, tuple[Histogram, Histogram, Histogram]] = {}

    def observe_run(self, model: str, batch: int, waited: float, ran: float) -> None:
        children = self._run_children.get(model)
        if children is None:
            children = self._run_children[model] = (
                self.batch_size.labels(model),
                self.queue_wait.labels(model),
                self.run_time.labels(model),
            )
        size, wait, run = children
        size.observe(batch)
        wait.observe(waited)
        run.observe(ran)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.observe(method, route, status, seconds)

    def observe_rpc(self, service: str, rpc: str, code: str, seconds: float) -> None:
        """One gRPC call, or one request of a stream, by its final status code name."""
        self.grpc_requests.observe(service, rpc, code, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
