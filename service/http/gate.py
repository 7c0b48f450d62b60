"""The gate: every rule a request or frame must pass, in one place, for every door.

Each protocol adapter (the ``/v1`` routes and the session step, each WebSocket frame,
``/v2`` infer and sequences, and any later door such as gRPC) calls the gate with plain
values (header strings, sizes, the owner) and gets back the owner or a typed
``service.errors`` error, which the door answers in its own format. Nothing here knows
about HTTP, Starlette or a wire format.

Rules and where they hold:

- **authentication**: ``Authorization: Bearer <key>`` (the WebSocket door may carry the
  key in its ``bearer.<key>`` subprotocol or ``?api_key``; it hands the gate the same
  header value). No keys configured: every caller is ``anonymous``.
- **ownership**: the owner the gate returns is a digest of the key; the core answers
  ``SessionNotFound`` (404) for a session of any other owner.
- **rate limit**: one token per request and per WebSocket frame, per key
  (``service.http.rate_limit``).
- **per-key session limit**: ``LSTM_SERVE_MAX_SESSIONS_PER_KEY``; checked by the core
  when it creates a session (it must be atomic with the create in the store), so every
  door that creates sessions (``/v1`` create and fork, ``/v2`` sequence start) has it.
- **stream limits**: ``LSTM_SERVE_MAX_STREAMS_PER_KEY`` open streams per key and
  ``LSTM_SERVE_MAX_STREAMS`` in all, counted here across every streaming door.
- **body and frame size**: ``LSTM_SERVE_MAX_BODY_BYTES`` for a request body (declared or
  received) and for one WebSocket frame.
- **content type**: ``/v1`` bodies are JSON (``application/json``); ``/v2`` accepts any
  content type, or none, as tritonclient sends.
- **output budget**: ``LSTM_SERVE_MAX_RESPONSE_BYTES`` for what one request may produce,
  checked from its shapes before the model runs (``check_output_budget``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import (
    MalformedRequest,
    RequestTooLarge,
    TooManyStreams,
    Unauthorized,
    UnsupportedMediaType,
)
from service.http.rate_limit import RateLimiter

ANONYMOUS = "anonymous"


def owner_for_key(key: str) -> str:
    """Sessions are owned by a digest of the key, so the key itself is never stored."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]


def is_json_media_type(content_type: str) -> bool:
    """``application/json``, with or without parameters (``; charset=utf-8``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json"


class Gate:
    """The rules of one app instance: its keys, rate limiter and limits."""

    def __init__(
        self,
        api_keys: list[bytes],
        rate_limiter: RateLimiter,
        max_body_bytes: int,
        max_streams_per_key: int = 0,
        max_streams: int = 0,
    ) -> None:
        self.api_keys = api_keys
        self.rate_limiter = rate_limiter
        self.max_body_bytes = max_body_bytes
        self.max_streams_per_key = max_streams_per_key
        self.max_streams = max_streams
        self._streams: Counter[str] = Counter()
        self._open_streams = 0

    # -- who is calling ----------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> str:
        """The owner for an ``Authorization`` header value; ``Unauthorized`` if it does not
        match a key. Does not take a rate-limit token (see ``admit``)."""
        keys = self.api_keys
        if not keys:
            return ANONYMOUS
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <key>'")
        presented = token.strip().encode("utf-8", "surrogateescape")
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise Unauthorized("invalid API key")
        return owner_for_key(presented.decode("utf-8", "surrogateescape"))

    def admit(self, authorization: str | None) -> str:
        """One request: authenticate, then take one rate-limit token. The owner."""
        owner = self.authenticate(authorization)
        self.rate_limiter.check(owner)
        return owner

    # -- what is sent ------------------------------------------------------------------

    def check_declared_length(self, content_length: str | None) -> None:
        """A declared ``Content-Length``: 400 if it is not a number, 413 over the limit."""
        if content_length is None:
            return
        try:
            declared = int(content_length)
        except ValueError as exc:
            raise MalformedRequest("invalid Content-Length") from exc
        self.check_body_size(declared)

    def check_body_size(self, size: int) -> None:
        """``RequestTooLarge`` (413) for a body of ``size`` bytes over the limit."""
        limit = self.max_body_bytes
        if size > limit:
            raise RequestTooLarge(f"body of {size} bytes exceeds the limit of {limit}")

    def check_content_type(self, content_type: str | None, has_body: bool) -> None:
        """A ``/v1`` body must be sent as ``application/json``.

        A request that sends a content type other than JSON is refused whether or not it has
        a body (a browser's cross-site form post always sends one); a request without a
        content type is refused when it has a body.
        """
        if content_type is None or not content_type.strip():
            if has_body:
                raise UnsupportedMediaType(
                    "send the request body as Content-Type: application/json"
                )
            return
        if not is_json_media_type(content_type):
            raise UnsupportedMediaType(
                f"Content-Type {content_type[:80]!r} is not supported; "
                "send the request body as application/json"
            )

    def admit_frame(self, owner: str, size: int) -> None:
        """One WebSocket frame of ``size`` bytes from ``owner``: the frame limit is the body
        limit, and every frame takes a rate-limit token like a request."""
        limit = self.max_body_bytes
        if size > limit:
            raise RequestTooLarge(f"frame of {size} bytes exceeds the limit of {limit}")
        self.rate_limiter.check(owner)

    # -- streams -----------------------------------------------------------------------

    def streams_of(self, owner: str) -> int:
        return self._streams[owner]

    @contextmanager
    def stream(self, owner: str) -> Iterator[None]:
        """Hold one of ``owner``'s streams while the block runs; ``TooManyStreams`` when the
        key already holds ``LSTM_SERVE_MAX_STREAMS_PER_KEY`` or the replica
        ``LSTM_SERVE_MAX_STREAMS``."""
        limit = self.max_streams_per_key
        if limit and self._streams[owner] >= limit:
            raise TooManyStreams(f"this key already holds {limit} open streams, the limit per key")
        total = self.max_streams
        if total and self._open_streams >= total:
            raise TooManyStreams(f"the server already holds {total} open streams; retry later")
        self._streams[owner] += 1
        self._open_streams += 1
        try:
            yield
        finally:
            self._open_streams -= 1
            self._streams[owner] -= 1
            if not self._streams[owner]:
                del self._streams[owner]


# -- what a request may produce --------------------------------------------------------

RESPONSE_TOO_LARGE = "response_too_large"


def check_output_budget(estimate: int, limit: int, what: str) -> None:
    """The output budget, ``LSTM_SERVE_MAX_RESPONSE_BYTES``: ``RequestTooLarge`` (413, code
    ``response_too_large``) when a request's response would take more than ``limit`` bytes.

    ``estimate`` is an upper bound from the request's shapes (``service.models.output_size``),
    known before the model runs, so nothing is computed for a request that is refused. The
    doors that produce outputs call it: ``/v2`` infer (JSON or binary, as asked), ``/v1``
    predict (``return: "all"`` counts every step) and both generates. A session step (HTTP,
    WebSocket) gives at most ``LSTM_SERVE_MAX_STEPS_PER_REQUEST`` steps of one sequence,
    which the defaults keep far below the budget for every bundled model (tested).
    """
    if estimate > limit:
        exc = RequestTooLarge(
            f"{what} would produce a response of up to {estimate} bytes, over the limit of "
            f"{limit}; ask for fewer sequences or steps"
        )
        exc.code = RESPONSE_TOO_LARGE
        exc.title = "Response too large"
        raise exc
