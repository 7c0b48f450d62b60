"""A Python client for lstm-serve, blocking (``Client``) and asyncio (``AsyncClient``).

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        client.predict("weather_lstm", [[...], [...]], return_="all")
        for out in client.generate("pydoc_char_lstm", "def ", 80, stream=True, seed=1):
            print(out["token"], end="", flush=True)
        with client.session("weather_lstm") as s:     # deleted on exit
            s.step([[...]])                           # sends offset=s.steps; retried once-only
            with s.stream() as ws:                    # the same steps over a WebSocket
                ws.step([[...]])

It needs only httpx, websockets and orjson (not the server's dependencies). Errors are
typed (``service.client.errors``) and carry the server's problem ``code`` and ``status``.
"""

from service.client._wire import RetryPolicy, StepResult
from service.client.aio import AsyncClient, AsyncGenerationStream, AsyncSession, AsyncSessionStream
from service.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    InvalidInput,
    NotFound,
    OffsetConflict,
    RequestTooLarge,
    SessionGone,
    TooManyRequests,
    TransportError,
    Unauthorized,
    Unavailable,
)
from service.client.sync import Client, GenerationStream, Session, SessionStream

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncGenerationStream",
    "AsyncSession",
    "AsyncSessionStream",
    "BadRequest",
    "Client",
    "ClientError",
    "GenerationStream",
    "InvalidInput",
    "NotFound",
    "OffsetConflict",
    "RequestTooLarge",
    "RetryPolicy",
    "Session",
    "SessionGone",
    "SessionStream",
    "StepResult",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Unavailable",
]
