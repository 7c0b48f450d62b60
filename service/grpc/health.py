"""``grpc.health.v1`` answering as ``/readyz`` does (Kubernetes gRPC probes use it).

The service name ``""`` (the whole server) and ``inference.GRPCInferenceService`` are
``SERVING`` while ``/readyz`` answers 200 (models loaded, session store answering, not
draining) and ``NOT_SERVING`` otherwise; any other name is ``NOT_FOUND``, as the
protocol says. Each ``Check`` asks the readiness check itself, so it is never stale;
``Watch`` asks it every ``WATCH_INTERVAL_SECONDS`` and sends each change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.http.health import readiness
from service.http.state import AppState

SERVICE = "inference.GRPCInferenceService"
WATCH_INTERVAL_SECONDS = 1.0


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self, core: AppState) -> None:
        self.core = core

    async def _status(self, service: str) -> int:
        if service not in ("", SERVICE):
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        ok, _ = await readiness(self.core)
        return (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ],
    ) -> health_pb2.HealthCheckResponse:
        status = await self._status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ],
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: int | None = None
        while True:
            status = await self._status(request.service)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            if self.core.draining:
                return
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
