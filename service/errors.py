"""The service's typed errors. None of them knows about HTTP.

Every error a client can cause, or that the service must report, is one of these;
``service.http.problems`` maps them to problem details for ``/v1`` and
``service.http.v2.errors`` to the Open Inference Protocol's ``{"error": ...}``.

    ServeError
    ├── InvalidInput          well-formed but invalid (422)
    │   ├── MalformedRequest  the body cannot be parsed at all (400)
    │   └── ModelNotStateful  a session or sequence of a whole-sequence-only model (422)
    ├── ModelNotFound         unknown model or version (404)
    ├── SessionNotFound       unknown session, or another key's (404)
    ├── SessionGone           expired or evicted, within the tombstone window (410)
    │   └── SessionCorrupt    the stored record cannot be read; delete it (410)
    ├── OffsetConflict        offset differs from the session's steps (409)
    ├── CapacityReached       session limit, overall or per key (429, Retry-After)
    │   └── TooManyStreams    open streams per key (429; a WebSocket closes 1013)
    ├── RateLimited           request rate per key (429, Retry-After)
    ├── RequestTooLarge       body or frame over the limit (413)
    ├── UnsupportedMediaType  body not sent as the content type the door takes (415)
    ├── Unauthorized          missing or wrong API key (401)
    ├── StoreUnavailable      the session store does not answer (503, Retry-After when
    │                         retrying can help)
    ├── NotReady              models not loaded yet (503)
    └── InferenceError        onnxruntime failed on input that passed validation (422)
"""

from __future__ import annotations


class ServeError(Exception):
    """Base class: ``code`` is the stable snake_case identifier clients branch on."""

    code: str = "error"
    title: str = "Error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, object] = extra


class InvalidInput(ServeError):
    code = "invalid_input"
    title = "Invalid input"

    def __init__(self, detail: str, code: str | None = None, **extra: object) -> None:
        super().__init__(detail, **extra)
        if code is not None:
            self.code = code


class UnknownField(InvalidInput):
    """A body names a field its published schema does not have (a typo, usually): 422 at
    every door, ``/v2`` included."""


class MalformedRequest(InvalidInput):
    code = "malformed_request"
    title = "Malformed request"


class ModelNotStateful(InvalidInput):
    """The model needs whole sequences (a bidirectional graph): it serves predict, but no
    session, stream or sequence can step it."""

    code = "model_not_stateful"
    title = "Model not stateful"


class ModelNotFound(ServeError):
    code = "model_not_found"
    title = "Model not found"


class SessionNotFound(ServeError):
    code = "session_not_found"
    title = "Session not found"


class SessionGone(ServeError):
    """The session existed but its state is gone; ``reason`` is ``expired`` or ``evicted``.

    ``owner`` is the key the session belonged to, where the store knows it: to any other
    key the session is not found (404), never gone.
    """

    title = "Session gone"

    def __init__(self, detail: str, reason: str, owner: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.owner = owner
        self.code = f"session_{reason}"
        self.title = f"Session {reason}"


class SessionCorrupt(SessionGone):
    """The session's stored record fails validation (damaged or written by something else).

    Its state is unusable, so it is gone (410, ``session_corrupt``), but unlike an expired
    session it still occupies the store until it is deleted or its TTL ends: ``DELETE``
    removes it, and listings leave it out. ``owner`` is None when the record does not say.
    """

    def __init__(self, detail: str, owner: str | None = None) -> None:
        super().__init__(detail, "corrupt", owner)


class OffsetConflict(ServeError):
    code = "offset_conflict"
    title = "Offset conflict"

    def __init__(self, detail: str, steps: int) -> None:
        super().__init__(detail, steps=steps)
        self.steps = steps


class CapacityReached(ServeError):
    code = "session_capacity_reached"
    title = "Session capacity reached"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class TooManyStreams(CapacityReached):
    code = "too_many_streams"
    title = "Too many streams"


class RateLimited(ServeError):
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class RequestTooLarge(ServeError):
    code = "request_too_large"
    title = "Request too large"


class UnsupportedMediaType(ServeError):
    code = "unsupported_media_type"
    title = "Unsupported media type"


class Unauthorized(ServeError):
    code = "unauthorized"
    title = "Unauthorized"


class StoreUnavailable(ServeError):
    """The session store failed. ``retry_after`` is None when retrying cannot help (the store
    answered with an error that is not an outage); the detail never names store internals."""

    code = "session_store_unavailable"
    title = "Session store unavailable"

    def __init__(self, detail: str, retry_after: int | None = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class NotReady(ServeError):
    code = "not_ready"
    title = "Not ready"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class InferenceError(ServeError):
    code = "inference_failed"
    title = "Inference failed"


class ModelStoreError(Exception):
    """A model version on disk is corrupt or incomplete; the message names the file."""
