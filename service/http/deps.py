"""Request-scoped dependencies shared by the HTTP adapters, as ``Annotated`` aliases.

Each one asks the gate (``service.http.gate``): ``Owner`` authenticates the request and
takes its rate-limit token; ``Body(Model)`` checks the content type and size, reads the
body, parses the JSON and validates it with the model ``/openapi.json`` publishes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Annotated, Any, NamedTuple, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from service.errors import MalformedRequest, RequestTooLarge
from service.http.gate import Gate
from service.http.state import AppState
from service.http.v1.schemas import validate_body

M = TypeVar("M", bound=BaseModel)


async def get_state(request: Request) -> AppState:
    """``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread."""
    state: AppState = request.app.state.core
    return state


Core = Annotated[AppState, Depends(get_state)]


async def get_owner(request: Request) -> str:
    """``async`` on purpose (see ``get_state``): the check is in-memory and non-blocking."""
    core: AppState = request.app.state.core
    return core.gate.admit(request.headers.get("authorization"))


Owner = Annotated[str, Depends(get_owner)]


def _strings(value: object) -> Iterator[str]:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_json(raw: bytes) -> Any:
    """JSON per RFC 8259, plus NaN/Infinity literals so they reach validation as 422.

    A string holding a lone surrogate (``"\\ud800"``: not a Unicode character, so no UTF-8
    encoding exists) is a malformed body (400); a number too large for any float reaches
    validation as an integer and is refused there.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from exc
    for text in _strings(doc):
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise MalformedRequest(
                "request body holds a string with a lone surrogate (not valid Unicode)"
            ) from exc
    return doc


def has_body(content_length: str | None, transfer_encoding: str | None) -> bool:
    """Whether a request announces a body (a non-zero length, or a chunked one)."""
    if transfer_encoding:
        return True
    return content_length is not None and content_length.strip() not in ("", "0")


async def receive_body(receive: Receive, gate: Gate, content_length: str | None) -> bytes:
    """The raw body from ASGI ``receive``, refusing (413) anything over the gate's limit.

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    chunked body is cut off as soon as it passes the limit.
    """
    gate.check_declared_length(content_length)
    limit = gate.max_body_bytes
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class GateHeaders(NamedTuple):
    """The request headers the gate reads."""

    authorization: str | None
    content_type: str | None
    content_length: str | None
    transfer_encoding: str | None


def gate_headers(headers: Iterable[tuple[bytes, bytes]]) -> GateHeaders:
    """``GateHeaders`` from an ASGI scope's headers, in one pass (the first of each)."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in _GATE_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return GateHeaders(*(found.get(name) for name in _GATE_HEADERS))


_GATE_HEADERS = (b"authorization", b"content-type", b"content-length", b"transfer-encoding")


async def read_body(request: Request, json_only: bool) -> bytes:
    """The raw body of ``request`` through the gate: content type (``json_only``: the
    ``/v1`` rule) and size (see ``receive_body``)."""
    core: AppState = request.app.state.core
    h = gate_headers(request.scope["headers"])
    return await _gated_body(core.gate, h, request.receive, json_only)


async def admit_body(
    core: AppState, scope: Scope, receive: Receive, json_only: bool
) -> tuple[str, bytes]:
    """A plain route's whole gate, from one pass over the headers: the caller (``Owner``'s
    check and rate-limit token), then the body as ``read_body`` reads it."""
    h = gate_headers(scope["headers"])
    owner = core.gate.admit(h.authorization)
    return owner, await _gated_body(core.gate, h, receive, json_only)


async def _gated_body(gate: Gate, h: GateHeaders, receive: Receive, json_only: bool) -> bytes:
    if json_only:
        gate.check_content_type(h.content_type, has_body(h.content_length, h.transfer_encoding))
    return await receive_body(receive, gate, h.content_length)


def parse_json_object(raw: bytes, required: bool = True) -> dict[str, Any]:
    """A request body that must be a JSON object (400 otherwise); empty is ``{}`` if allowed."""
    if not raw.strip():
        if required:
            raise MalformedRequest("request body is empty; send a JSON object")
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise MalformedRequest("request body must be a JSON object")
    return body


def body_of(model: type[M], required: bool = True) -> Callable[[Request], Coroutine[Any, Any, M]]:
    """A dependency that gives a ``/v1`` body validated by ``model`` (see the module doc)."""

    async def validated(request: Request) -> M:
        raw = await read_body(request, json_only=True)
        return validate_body(model, parse_json_object(raw, required))

    return validated
