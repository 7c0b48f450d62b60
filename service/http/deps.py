"""Request-scoped dependencies shared by the HTTP adapters, as ``Annotated`` aliases."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from service.errors import MalformedRequest, RequestTooLarge, Unauthorized
from service.http.state import AppState

ANONYMOUS = "anonymous"


async def get_state(request: Request) -> AppState:
    """``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread."""
    state: AppState = request.app.state.core
    return state


Core = Annotated[AppState, Depends(get_state)]


def owner_for_key(key: str) -> str:
    """Sessions are owned by a digest of the key, so the key itself is never stored."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]


def authenticate(keys: list[bytes], authorization: str | None) -> str:
    """The owner for an ``Authorization`` header value; ``Unauthorized`` when it does not match."""
    if not keys:
        return ANONYMOUS
    if not authorization:
        raise Unauthorized("missing Authorization: Bearer <key>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <key>'")
    presented = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise Unauthorized("invalid API key")
    return owner_for_key(presented.decode())


async def get_owner(request: Request) -> str:
    """``async`` on purpose (see ``get_state``): the check is in-memory and non-blocking."""
    core: AppState = request.app.state.core
    owner = authenticate(core.api_keys, request.headers.get("authorization"))
    core.rate_limiter.check(owner)
    return owner


Owner = Annotated[str, Depends(get_owner)]


def parse_json(raw: bytes) -> Any:
    """JSON per RFC 8259, plus NaN/Infinity literals so they reach validation as 422."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from exc


def check_body_size(size: int, limit: int) -> None:
    """``RequestTooLarge`` (413) for a body of ``size`` bytes, declared or received whole,
    over ``limit``."""
    if size > limit:
        raise RequestTooLarge(f"body of {size} bytes exceeds the limit of {limit}")


async def receive_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The raw body from ASGI ``receive``, refusing (413) anything over ``limit``.

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    chunked body is cut off as soon as it passes the limit.
    """
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError as exc:
            raise MalformedRequest("invalid Content-Length") from exc
        check_body_size(declared, limit)
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


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body of ``request`` (see ``receive_body``)."""
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


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


async def get_json_object(request: Request) -> dict[str, Any]:
    core: AppState = request.app.state.core
    return parse_json_object(await read_body(request, core.settings.max_body_bytes))


async def get_optional_json_object(request: Request) -> dict[str, Any]:
    core: AppState = request.app.state.core
    raw = await read_body(request, core.settings.max_body_bytes)
    return parse_json_object(raw, required=False)


JsonBody = Annotated[dict[str, Any], Depends(get_json_object)]
OptionalJsonBody = Annotated[dict[str, Any], Depends(get_optional_json_object)]
