"""All configuration, read once from ``LSTM_SERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_STORE = Path(__file__).resolve().parent.parent / "model_store"


class Settings(BaseSettings):
    """Service settings; every field can be set as ``LSTM_SERVE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LSTM_SERVE_", extra="ignore", frozen=True)

    model_store: Path = DEFAULT_MODEL_STORE
    """Directory holding ``<name>/<version>/`` model versions."""

    session_store: str = "memory"
    """``memory`` for in-process sessions, or a Redis URL to share them across replicas:
    ``redis://`` (also ``rediss://``, ``unix://``), ``redis+sentinel://host:port,.../service``
    or ``redis+cluster://host:port,...`` (``service.sessions.redis_connect``)."""

    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    """With Redis: replicas that must have a session's create or step (Redis ``WAIT``)
    before it is acknowledged; fewer answers 503 and the client retries. 0: acknowledged
    once the primary has it (a failover can lose it; the next step then answers 409 with
    the true step count)."""

    session_cache_records: int = Field(default=10_000, ge=0)
    """With Redis: records of sessions this replica wrote recently that it keeps in memory,
    so that a step of a session that stays on this replica costs one Redis round trip
    (the save's compare-and-set tells a stale copy, and the step reruns on a fresh load);
    0 keeps none (every step loads first)."""

    session_cache_mb: int = Field(default=64, ge=0)
    """With Redis: most megabytes those kept records may take (least recently used first
    out)."""

    session_ttl_seconds: int = Field(default=3600, ge=1, le=30 * 86400)
    """Idle time before a session expires, unless the session asks for another TTL."""

    max_session_ttl_seconds: int = Field(default=7 * 86400, ge=1)
    """Largest ``ttl_seconds`` a client may ask for."""

    max_sessions: int = Field(default=100_000, ge=1)
    """Live sessions allowed at once; creation beyond answers 429."""

    max_steps_per_request: int = Field(default=4096, ge=1)
    """Most time steps in one step, predict or generate request (per sequence)."""

    max_batch_sequences: int = Field(default=256, ge=1)
    """Most sequences in one predict request."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger answers 413 before it is read whole."""

    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest response one request may produce, estimated from its shapes (sequences,
    steps, outputs and their encoding) before the model runs; more answers 413
    (``response_too_large``). It bounds the server's memory per request too: a response
    is built whole, with about as much again in working arrays."""

    api_keys: str = ""
    """Comma-separated API keys; empty means no authentication."""

    batch_max_size: int = Field(default=64, ge=1)
    """Most sequences the batcher puts into one onnxruntime run."""

    max_run_steps: int = Field(default=16384, ge=1)
    """Most sequence-steps (sequences times their length) in one onnxruntime run, whose
    working memory grows with them (about 6 KB each for the bundled text model); a request
    with more runs as several runs, and the batcher merges no requests beyond it. A single
    longer sequence runs alone."""

    batch_max_wait_us: int = Field(default=500, ge=0)
    """Longest the batcher waits for more work once a run could start (microseconds)."""

    ort_threads: int = Field(default=1, ge=0)
    """onnxruntime intra-op threads per model (0 lets onnxruntime choose)."""

    model_process: bool = True
    """Run onnxruntime in a child process, out of the server's GIL; false runs it on a
    thread in the server's process."""

    top_k_default: int = Field(default=5, ge=1)
    """Tokens returned per position in a language model's next-token distribution."""

    max_generate_steps: int = Field(default=2048, ge=1)
    """Most steps one generate request may ask for."""

    max_sessions_per_key: int = Field(default=0, ge=0)
    """Live sessions one API key (or the anonymous caller) may hold; 0 means no limit."""

    max_streams_per_key: int = Field(default=0, ge=0)
    """Open streams (WebSocket, gRPC ``ModelStreamInfer``) one API key may hold; 0 means no
    limit."""

    max_streams: int = Field(default=256, ge=1)
    """Open streams (WebSocket, gRPC ``ModelStreamInfer``) this replica serves at once, over
    all keys. The HTTP server buffers a WebSocket message whole (up to 64 MiB) before the
    frame limit can refuse it, so this also bounds that memory."""

    rate_limit_per_second: float = Field(default=0.0, ge=0.0)
    """Sustained requests per second per API key (token bucket); 0 disables rate limiting."""

    rate_limit_burst: int = Field(default=100, ge=1)
    """Requests a key may make at once before the rate limit applies."""

    reload_interval_seconds: float = Field(default=0.0, ge=0.0)
    """Re-scan the model store this often (0: only on SIGHUP)."""

    request_log: bool = True
    """Write one structured access-log line per request."""

    max_connections: int = Field(default=1000, ge=1)
    """Open HTTP and WebSocket connections the server holds at once. Connections over it
    wait in the listen backlog, unread, until one closes; it bounds the file descriptors
    and memory that idle or slow clients can claim."""

    header_timeout_seconds: float = Field(default=10.0, gt=0.0, le=60.0)
    """Time a client has to send a request's whole header, on a new connection and between
    requests on a kept-alive one; the server closes the connection after it."""

    max_header_bytes: int = Field(default=32 * 1024, ge=8 * 1024)
    """Largest request head (request line and headers together); larger answers 431 and
    the connection is closed."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the gRPC door (the Open Inference Protocol's ``GRPCInferenceService``, as
    Triton serves it), on the same host as HTTP; 0 turns it off."""

    @field_validator("session_store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        if v != "memory":
            from service.sessions.redis_connect import parse

            parse(v)  # ValueError saying what is wrong
        return v

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]
