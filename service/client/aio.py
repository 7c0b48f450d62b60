"""The asyncio client: ``AsyncClient``, ``AsyncSession``, ``AsyncSessionStream``, ...

The same calls as ``service.client.sync`` with ``await``; see ``Client`` for the retry rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Mapping
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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


class AsyncClient:
    """An asyncio client for one lstm-serve server (use ``async with`` or ``aclose()``)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    async def _send(
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
                resp = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt + 1 >= self.retry.attempts or not retryable_transport(exc, idempotent):
                    raise transport_error(exc) from exc
                wait = self.retry.delay(attempt)
            else:
                if resp.status_code < 400:
                    return resp
                content_read = await resp.aread()
                await resp.aclose()
                if attempt + 1 >= self.retry.attempts or not retryable(
                    resp.status_code, idempotent
                ):
                    raise api_error(resp, content_read)
                wait = self.retry.delay(attempt, retry_after(resp))
            await asyncio.sleep(wait)
            attempt += 1

    async def _json(self, method: str, path: str, body: Any = None, idempotent: bool = True) -> Any:
        resp = await self._send(method, path, body, idempotent)
        return orjson.loads(resp.content) if resp.content else None

    # -- models -----------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._json("GET", "/v1/models"))["models"]
        return result

    async def model(self, name: str, version: int | None = None) -> dict[str, Any]:
        query = f"?version={version}" if version is not None else ""
        result: dict[str, Any] = await self._json("GET", f"/v1/models/{name}{query}")
        return result

    async def predict(
        self,
        model: str,
        inputs: Any = None,
        *,
        text: str | list[str] | None = None,
        return_: str = "last",
        version: int | None = None,
    ) -> Any:
        body = predict_body(inputs, text, return_, version)
        return (await self._json("POST", f"/v1/models/{model}/predict", body))["outputs"]

    async def generate(
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
        """The generated outputs, or with ``stream=True`` an ``AsyncGenerationStream``."""
        body = generate_body(context, steps, stream, temperature, top_k, seed, version)
        return await self._generate(f"/v1/models/{model}/generate", body)

    async def _generate(self, path: str, body: dict[str, Any]) -> Any:
        if body.get("stream"):
            return AsyncGenerationStream(await self._send("POST", path, body, stream=True))
        return (await self._json("POST", path, body))["outputs"]

    # -- sessions ---------------------------------------------------------------------------

    def session(
        self,
        model: str,
        version: int | None = None,
        ttl_seconds: int | None = None,
        state: Mapping[str, Any] | None = None,
        steps: int | None = None,
    ) -> _SessionOpener:
        """``async with client.session(m) as s`` (deleted on exit), or ``await`` it."""
        body = session_body(model, version, ttl_seconds, state, steps)
        return _SessionOpener(self, body)

    async def get_session(self, session_id: str) -> AsyncSession:
        return AsyncSession(self, await self._json("GET", f"/v1/sessions/{session_id}"))

    async def sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._json("GET", "/v1/sessions"))["sessions"]
        return result


class _SessionOpener:
    def __init__(self, client: AsyncClient, body: dict[str, Any]) -> None:
        self._client = client
        self._body = body
        self._session: AsyncSession | None = None

    async def _open(self) -> AsyncSession:
        info = await self._client._json("POST", "/v1/sessions", self._body, idempotent=False)
        return AsyncSession(self._client, info)

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._open()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.delete()


class AsyncSession:
    """One server-side session; tracks the step count and sends it as each step's offset."""

    def __init__(self, client: AsyncClient, info: dict[str, Any]) -> None:
        self.client = client
        self.id: str = info["id"]
        self.model: str = info["model"]
        self.version: int = info["version"]
        self.steps: int = info["steps"]
        self.info = info

    def __repr__(self) -> str:
        return f"AsyncSession(id={self.id!r}, model={self.model!r}, steps={self.steps})"

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete()

    @property
    def path(self) -> str:
        return f"/v1/sessions/{self.id}"

    async def step(self, x: Any = None, *, text: str | None = None) -> StepResult:
        body = step_body(x, text, self.steps)
        result = StepResult.of(await self.client._json("POST", f"{self.path}/step", body))
        self.steps = result.steps
        return result

    async def refresh(self) -> dict[str, Any]:
        self.info = await self.client._json("GET", self.path)
        self.steps = self.info["steps"]
        return self.info

    async def reset(self) -> None:
        self.info = await self.client._json("POST", f"{self.path}/reset")
        self.steps = self.info["steps"]

    async def fork(self) -> AsyncSession:
        info = await self.client._json("POST", f"{self.path}/fork", {}, False)
        return AsyncSession(self.client, info)

    async def state(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self.client._json("GET", f"{self.path}/state")
        return doc

    async def generate(
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
        extra = {"advance": True} if advance else None
        body = generate_body(context, steps, stream, temperature, top_k, seed, None, extra)
        result = await self.client._generate(f"{self.path}/generate", body)
        if advance and not stream:
            await self.refresh()
        return result

    async def stream(self) -> AsyncSessionStream:
        """A connected ``AsyncSessionStream`` (also usable as ``async with``)."""
        s = AsyncSessionStream(self)
        await s.connect()
        return s

    async def delete(self) -> None:
        try:
            await self.client._send("DELETE", self.path)
        except ApiError as exc:
            if exc.status not in (404, 410):
                raise


class AsyncSessionStream:
    """Steps over ``WS /v1/sessions/{id}/stream``; see ``service.client.sync.SessionStream``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._url = ws_url(session.client.url, f"{session.path}/stream")
        self._ws: ClientConnection | None = None

    async def connect(self) -> None:
        client = self.session.client
        try:
            self._ws = await connect(
                self._url,
                additional_headers=client.headers,
                open_timeout=client.timeout,
                max_size=None,
            )
        except OSError as exc:
            raise transport_error(exc) from exc

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("stream is not connected")
        return self._ws

    async def __aenter__(self) -> AsyncSessionStream:
        if self._ws is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def send(
        self, x: Any = None, *, text: str | None = None, offset: int | None = None
    ) -> None:
        try:
            await self.ws.send(orjson.dumps(step_body(x, text, offset)).decode())
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def recv(self) -> StepResult:
        try:
            raw = await self.ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from exc
        return self._reply(raw)

    def _reply(self, raw: str | bytes) -> StepResult:
        reply = orjson.loads(raw)
        if "error" in reply:
            raise event_error(reply["error"])
        result = StepResult.of(reply)
        self.session.steps = result.steps
        return result

    async def step(self, x: Any = None, *, text: str | None = None) -> StepResult:
        frame = orjson.dumps(step_body(x, text, self.session.steps)).decode()
        retry = self.session.client.retry
        failure: Exception | None = None
        for attempt in range(retry.attempts):
            if attempt:
                await asyncio.sleep(retry.delay(attempt - 1))
                await self.aclose()
                try:
                    await self.connect()
                except TransportError as exc:
                    failure = exc
                    continue
            try:
                await self.ws.send(frame)
                async with asyncio.timeout(self.session.client.timeout):
                    raw = await self.ws.recv()
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code >= 4000:
                    raise _closed(exc) from exc
                failure = exc
                continue
            except TimeoutError as exc:
                failure = exc
                continue
            return self._reply(raw)
        raise TransportError(f"stream step failed after {retry.attempts} tries") from failure

    async def __aiter__(self) -> AsyncIterator[StepResult]:
        while True:
            try:
                yield await self.recv()
            except TransportError:
                return


def _closed(exc: ConnectionClosed) -> ClientError:
    if exc.rcvd is not None:
        return error_from_close(exc.rcvd.code, exc.rcvd.reason)
    return TransportError(f"stream connection lost: {exc}")


class AsyncGenerationStream:
    """The outputs of a streamed generation as they arrive; ``end`` holds the end event."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._lines = response.aiter_lines()
        self._parser = SSEParser()
        self.end: dict[str, Any] | None = None

    def __aiter__(self) -> AsyncGenerationStream:
        return self

    async def __anext__(self) -> Any:
        if self.end is not None:
            raise StopAsyncIteration
        try:
            async for line in self._lines:
                event = self._parser.feed(line)
                if event is None:
                    continue
                name, data = event
                if name == "step":
                    return data["output"]
                if name == "end":
                    self.end = data
                    await self.aclose()
                    raise StopAsyncIteration
                if name == "error":
                    await self.aclose()
                    raise event_error(data)
        except httpx.TransportError as exc:
            await self.aclose()
            raise transport_error(exc) from exc
        await self.aclose()
        raise TransportError("the generation stream ended without an end event")

    async def aclose(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
