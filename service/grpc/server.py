"""The ``grpc.aio`` server beside the HTTP server, in the same process and event loop.

``service.http.server`` binds it before the HTTP server starts (a port that cannot be
bound stops the process, as for HTTP), starts it once the app's lifespan has built the
core, stops it accepting on SIGTERM together with HTTP, and waits for its calls in flight
(at most the graceful timeout) before the lifespan closes the runner and the store. Open
streams are closed by the app's drain (``AppState.close_streams``): their requests already
read are answered, then they end with ``UNAVAILABLE``.

The largest message it receives is ``LSTM_SERVE_MAX_BODY_BYTES`` (``RESOURCE_EXHAUSTED``
beyond, before the message is read whole). ``SO_REUSEPORT`` is off, so a second process
cannot silently share the port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc

from service.grpc.health import Health
from service.grpc.servicer import SERVICE, InferenceServicer
from service.http.state import AppState
from service.settings import Settings


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcDoor:
    """The gRPC server of one serving process: ``bind``, ``start``, ``stop``."""

    def __init__(
        self,
        settings: Settings,
        host: str,
        grace_seconds: float,
        core: Callable[[], AppState],
    ) -> None:
        self.settings = settings
        self.host = host
        self.grace_seconds = grace_seconds
        self.core = core
        """The app's core, once its lifespan has built it."""
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None

    def bind(self) -> int:
        """Create the server and bind its port (inside the running event loop); the port."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.max_body_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        where = address(self.host, self.settings.grpc_port)
        try:
            self.port = server.add_insecure_port(where)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {where}: {exc}") from exc
        self._server = server
        return self.port

    async def start(self) -> None:
        """Serve the inference service, health and reflection over the app's core."""
        core = self.core()
        server = self._server
        assert server is not None, "bind() first"
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
        health_pb2_grpc.add_HealthServicer_to_server(Health(core), server)
        names = (
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        await server.start()

    def begin_stop(self) -> None:
        """Stop accepting calls; those in flight get the grace period."""
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.ensure_future(self._server.stop(self.grace_seconds))

    async def stopped(self) -> None:
        """Stop (if not yet begun) and wait until the server has stopped."""
        self.begin_stop()
        if self._stopping is not None:
            await self._stopping
