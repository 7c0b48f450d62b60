"""The blocking client: ``Client``, ``Session``, ``SessionStream``, ``GenerationStream``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx
import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.client._wire import (
    DEFAULT_URL,
    RetryPolicy,
    SSEParser,
    StepResult,
    api_error,
    dumps,
    event_error,
    generate_body,
    predict_body,
    retry_after,
    retryable,
    retryable_transport,
    session_body,
    step_body,
    transport_error,
    ws_url,
)
from service.client.errors import ApiError, ClientError, TransportError, error_from_close


class Client:
    """A blocking client for one lstm-serve server.

    Every call retries transport errors and 429/5xx answers with backoff, except that
    session creation and fork (not idempotent) are retried only when the server surely
    did nothing (connection refused, 429, 503). Session steps carry their offset, so a
    retried step is applied exactly once.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        idempotent: bool = True,
        stream: bool = False,
    ) -> httpx.Response:
        content = dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        attempt = 0
        while True:
            request = self._http.build_request(method, path, content=content, headers=headers)
            try:
                resp = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt + 1 >= self.retry.attempts or not retryable_transport(exc, idempotent):
                    raise transport_error(exc) from exc
                wait = self.retry.delay(attempt)
            else:
                if resp.status_code < 400:
                    return resp
                content_read = resp.read()
                resp.close()
                if attempt + 1 >= self.retry.attempts or not retryable(
                    resp.status_code, idempotent
                ):
                    raise api_error(resp, content_read)
                wait = self.retry.delay(attempt, retry_after(resp))
            time.sleep(wait)
            attempt += 1

    def _json(self, method: str, path: str, body: Any = None, idempotent: bool = True) -> Any:
        resp = self._send(method, path, body, idempotent)
        return orjson.loads(resp.content) if resp.content else None

    # -- models -----------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/models")["models"]
        return result

    def model(self, name: str, version: int | None = None) -> dict[str, Any]:
        query = f"?version={version}" if version is not None else ""
        result: dict[str, Any] = self._json("GET", f"/v1/models/{name}{query}")
        return result

    def predict(
        self,
        model: str,
        inputs: Any = None,
        *,
        text: str | list[str] | None = None,
        return_: str = "last",
        version: int | None = None,
    ) -> Any:
        """Stateless prediction; ``return_="all"`` gives one output per step."""
        body = predict_body(inputs, text, return_, version)
        return self._json("POST", f"/v1/models/{model}/predict", body)["outputs"]

    def generate(
        self,
        model: str,
        context: Any,
        steps: int,
        *,
        stream: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        version: int | None = None,
    ) -> Any:
        """Roll out ``steps`` steps after ``context`` (text or feature rows).

        Returns the list of generated outputs, or with ``stream=True`` a
        ``GenerationStream`` that yields the same outputs as the server computes them.
        """
        body = generate_body(context, steps, stream, temperature, top_k, seed, version)
        return self._generate(f"/v1/models/{model}/generate", body)

    def _generate(self, path: str, body: dict[str, Any]) -> Any:
        if body.get("stream"):
            return GenerationStream(self._send("POST", path, body, stream=True))
        return self._json("POST", path, body)["outputs"]

    # -- sessions ---------------------------------------------------------------------------

    def session(
        self,
        model: str,
        version: int | None = None,
        ttl_seconds: int | None = None,
        state: Mapping[str, Any] | None = None,
        steps: int | None = None,
    ) -> Session:
        """Create a session; as a context manager it is deleted on exit."""
        body = session_body(model, version, ttl_seconds, state, steps)
        return Session(self, self._json("POST", "/v1/sessions", body, idempotent=False))

    def get_session(self, session_id: str) -> Session:
        """An existing session, by id."""
        return Session(self, self._json("GET", f"/v1/sessions/{session_id}"))

    def sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/sessions")["sessions"]
        return result


class Session:
    """One server-side session. Tracks the step count and sends it as each step's offset."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self.client = client
        self.id: str = info["id"]
        self.model: str = info["model"]
        self.version: int = info["version"]
        self.steps: int = info["steps"]
        self.info = info

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, model={self.model!r}, steps={self.steps})"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    @property
    def path(self) -> str:
        return f"/v1/sessions/{self.id}"

    def step(self, x: Any = None, *, text: str | None = None) -> StepResult:
        """Feed one or more steps; a retry after a lost answer is applied exactly once."""
        body = step_body(x, text, self.steps)
        result = StepResult.of(self.client._json("POST", f"{self.path}/step", body))
        self.steps = result.steps
        return result

    def refresh(self) -> dict[str, Any]:
        self.info = self.client._json("GET", self.path)
        self.steps = self.info["steps"]
        return self.info

    def reset(self) -> None:
        self.info = self.client._json("POST", f"{self.path}/reset")
        self.steps = self.info["steps"]

    def fork(self) -> Session:
        """A new session with a copy of this one's state (delete it, or use ``with``)."""
        return Session(self.client, self.client._json("POST", f"{self.path}/fork", {}, False))

    def state(self) -> dict[str, Any]:
        """``{"model", "version", "steps", "state": {name: {shape, dtype, data_b64}}}``."""
        doc: dict[str, Any] = self.client._json("GET", f"{self.path}/state")
        return doc

    def generate(
        self,
        steps: int,
        context: Any = None,
        *,
        advance: bool = False,
        stream: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> Any:
        """Generate from the session's state; with ``advance`` the session takes the result."""
        extra = {"advance": True} if advance else None
        body = generate_body(context, steps, stream, temperature, top_k, seed, None, extra)
        result = self.client._generate(f"{self.path}/generate", body)
        if advance and not stream:
            self.refresh()
        return result

    def stream(self) -> SessionStream:
        """A WebSocket over which each step is one frame (much faster than HTTP steps)."""
        return SessionStream(self)

    def delete(self) -> None:
        """Delete the session; one that is already gone is not an error."""
        try:
            self.client._send("DELETE", self.path)
        except ApiError as exc:
            if exc.status not in (404, 410):
                raise


class SessionStream:
    """Steps over ``WS /v1/sessions/{id}/stream``.

    ``step()`` sends one frame with the session's offset and waits for its answer; if the
    connection drops it reconnects and resends the same frame, which the server applies at
    most once. ``send()``/``recv()`` pipeline frames (no offset, answers in order).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._url = ws_url(session.client.url, f"{session.path}/stream")
        self._ws: ClientConnection = self._connect()

    def _connect(self) -> ClientConnection:
        client = self.session.client
        try:
            conn = connect(
                self._url,
                additional_headers=client.headers,
                open_timeout=client.timeout,
                max_size=None,
            )
        except OSError as exc:
            raise transport_error(exc) from exc
        # Entering marks the connection as owned by a context (websockets >= 17.1 warns
        # otherwise); this object's close() plays the part of the context's exit.
        return conn.__enter__()

    def __enter__(self) -> SessionStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._ws.close()

    def send(self, x: Any = None, *, text: str | None = None, offset: int | None = None) -> None:
        """Send one step frame without waiting for its answer."""
        try:
            self._ws.send(orjson.dumps(step_body(x, text, offset)).decode())
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc

    def recv(self, timeout: float | None = None) -> StepResult:
        """The answer to the oldest unanswered frame; an error frame raises its problem."""
        try:
            raw = self._ws.recv(timeout)
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc
        except TimeoutError as exc:
            raise TransportError("no answer on the stream") from exc
        return self._reply(raw)

    def _reply(self, raw: str | bytes) -> StepResult:
        reply = orjson.loads(raw)
        if "error" in reply:
            raise event_error(reply["error"])
        result = StepResult.of(reply)
        self.session.steps = result.steps
        return result

    def step(self, x: Any = None, *, text: str | None = None) -> StepResult:
        """Send one frame with the session's offset and wait for its answer (retrying)."""
        frame = orjson.dumps(step_body(x, text, self.session.steps)).decode()
        retry = self.session.client.retry
        failure: Exception | None = None
        for attempt in range(retry.attempts):
            if attempt:
                time.sleep(retry.delay(attempt - 1))
                self._ws.close()
                try:
                    self._ws = self._connect()
                except TransportError as exc:
                    failure = exc
                    continue
            try:
                self._ws.send(frame)
                raw = self._ws.recv(self.session.client.timeout)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code >= 4000:
                    raise self._closed(exc) from exc
                failure = exc
                continue
            except TimeoutError as exc:
                failure = exc
                continue
            return self._reply(raw)
        raise TransportError(f"stream step failed after {retry.attempts} tries") from failure

    def _closed(self, exc: ConnectionClosed) -> ClientError:
        if exc.rcvd is not None:
            return error_from_close(exc.rcvd.code, exc.rcvd.reason)
        return TransportError(f"stream connection lost: {exc}")

    def __iter__(self) -> Iterator[StepResult]:
        """Answers as they come, until the stream closes."""
        while True:
            try:
                yield self.recv()
            except TransportError:
                return


class GenerationStream:
    """The outputs of a streamed generation, one per ``event: step``, as they arrive.

    After the ``end`` event, ``end`` holds its data (e.g. the generated ``text``).
    Closing the stream early closes the connection, which stops the generation.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._lines = response.iter_lines()
        self._parser = SSEParser()
        self.end: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.end is not None:
            raise StopIteration
        try:
            for line in self._lines:
                event = self._parser.feed(line)
                if event is None:
                    continue
                name, data = event
                if name == "step":
                    return data["output"]
                if name == "end":
                    self.end = data
                    self.close()
                    raise StopIteration
                if name == "error":
                    self.close()
                    raise event_error(data)
        except httpx.TransportError as exc:
            self.close()
            raise transport_error(exc) from exc
        self.close()
        raise TransportError("the generation stream ended without an end event")

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
