"""Triton's ``GRPCInferenceService``: the RPCs over the gate and the shared data plane.

Every call passes the gate as an HTTP request does: the ``authorization`` metadata
(``Bearer <key>``) is authenticated and takes a rate-limit token, except the health RPCs
(``ServerLive``, ``ServerReady``), which need no key, as ``/v2/health/*`` do. A stream
holds one of its key's streams (``LSTM_SERVE_MAX_STREAMS_PER_KEY``) while it is open,
and each of its requests takes a token and is size-checked like a WebSocket frame. The
message size limit itself is the server's ``grpc.max_receive_message_length``.

On ``ModelStreamInfer`` requests are read in order and run concurrently, except that a
request of a sequence waits for the sequence's previous request on the stream, so a
sequence advances in the order its requests were sent. Each response carries its
request's ``id``; a failed request answers ``error_message`` (its stable code in the
response's ``lstm_serve_error_code`` parameter) and the stream stays open.
At most ``MAX_IN_FLIGHT_PER_STREAM`` requests of one stream run at once; the stream is
not read further until one finishes. RPCs Triton has and this service does not
(repository, statistics, shared memory, trace and log settings) answer ``UNIMPLEMENTED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.errors import ModelNotFound, NotReady, ServeError
from service.grpc import convert, status
from service.http.health import readiness
from service.http.state import AppState
from service.oip.dataplane import DataPlane

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
ERROR_CODE = "lstm_serve_error_code"
"""The parameter of a stream's failed response that carries the error's stable code (the
``lstm-serve-error-code`` trailer of a failed unary call; a ``/v1`` problem's ``code``)."""
MAX_IN_FLIGHT_PER_STREAM = 64
"""Requests of one stream that run at once; reading waits while this many are running."""

UNIMPLEMENTED_RPCS = (
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


def authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


class GrpcStream:
    """An open ``ModelStreamInfer`` as the app's drain sees it (``AppState.streams``):
    closing it stops reading; the requests already read finish and are answered."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.closed = asyncio.Event()

    async def close(self, code: int, reason: str) -> None:
        self.closed.set()


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, core: AppState) -> None:
        self.core = core
        self.plane = DataPlane(core.sessions)

    async def _call(self, rpc: str, context: Context, work: Callable[[], Awaitable[T]]) -> T:
        """Run one RPC's work; a service error ends the call with its mapped status."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await work()
        except ServeError as exc:
            code = status.code_of(exc)
            context.set_trailing_metadata(status.trailers(exc))
            await context.abort(code, exc.detail)
        except Exception:
            if code == grpc.StatusCode.OK:  # not an abort: a fault of the service
                code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            self.core.metrics.observe_rpc(SERVICE, rpc, code.name, time.perf_counter() - started)

    def _admit(self, context: Context) -> str:
        return self.core.gate.admit(authorization(context))

    # -- health and metadata ---------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Context) -> Any:
        async def work() -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, work)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        async def work() -> Any:
            ok, _ = await readiness(self.core)
            return service_pb2.ServerReadyResponse(ready=ok)

        return await self._call("ServerReady", context, work)

    async def ModelReady(self, request: Any, context: Context) -> Any:
        async def work() -> Any:
            self._admit(context)
            try:
                self.plane.model(request.name, request.version)
            except ModelNotFound:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=self.core.registry.ready)

        return await self._call("ModelReady", context, work)

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        async def work() -> Any:
            self._admit(context)
            return service_pb2.ServerMetadataResponse(**self.plane.server_metadata())

        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        async def work() -> Any:
            self._admit(context)
            return convert.model_metadata(self.plane.model_metadata(request.name, request.version))

        return await self._call("ModelMetadata", context, work)

    async def ModelConfig(self, request: Any, context: Context) -> Any:
        async def work() -> Any:
            self._admit(context)
            return convert.model_config(self.plane.model_config(request.name, request.version))

        return await self._call("ModelConfig", context, work)

    # -- inference -------------------------------------------------------------------------

    async def _infer(self, owner: str, request: Any) -> Any:
        req = convert.infer_request(request)
        result = await self.plane.infer(owner, request.model_name, request.model_version, req)
        return convert.infer_response(result, request.id)

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        async def work() -> Any:
            owner = self._admit(context)
            return await self._infer(owner, request)

        return await self._call("ModelInfer", context, work)

    async def _stream_step(self, owner: str, request: Any) -> Any:
        """One request of a stream: its response, or its error as ``error_message``."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            self.core.gate.admit_frame(owner, request.ByteSize())
            response = await self._infer(owner, request)
            return service_pb2.ModelStreamInferResponse(infer_response=response)
        except ServeError as exc:
            code = status.code_of(exc)
            failed = service_pb2.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            failed.parameters[ERROR_CODE].string_param = exc.code
            return service_pb2.ModelStreamInferResponse(
                error_message=exc.detail, infer_response=failed
            )
        finally:
            elapsed = time.perf_counter() - started
            self.core.metrics.observe_rpc(SERVICE, "ModelStreamInfer", code.name, elapsed)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> None:
        core = self.core
        try:
            if core.draining:
                raise NotReady("the server is shutting down", retry_after=1)
            owner = core.gate.authenticate(authorization(context))
            with core.gate.stream(owner):
                stream = GrpcStream(owner)
                core.streams.add(stream)
                try:
                    await self._serve_stream(owner, stream, request_iterator, context)
                finally:
                    core.streams.discard(stream)
                if stream.closed.is_set():
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        except ServeError as exc:
            context.set_trailing_metadata(status.trailers(exc))
            await context.abort(status.code_of(exc), exc.detail)

    async def _serve_stream(
        self,
        owner: str,
        stream: GrpcStream,
        requests: AsyncIterator[Any],
        context: Context,
    ) -> None:
        slots = asyncio.Semaphore(MAX_IN_FLIGHT_PER_STREAM)
        writing = asyncio.Lock()
        last_of: dict[tuple[str, str], asyncio.Task[None]] = {}
        running: set[asyncio.Task[None]] = set()

        async def answer(request: Any, after: asyncio.Task[None] | None) -> None:
            try:
                if after is not None:
                    await asyncio.wait([after])
                response = await self._stream_step(owner, request)
                async with writing:
                    await context.write(response)
            except Exception:  # the client went away: nobody reads the answer
                log.debug("stream response not delivered", exc_info=True)
            finally:
                slots.release()

        closed = asyncio.ensure_future(stream.closed.wait())
        reader = aiter(requests)
        try:
            while True:
                await slots.acquire()
                following = asyncio.ensure_future(anext(reader))
                await asyncio.wait([following, closed], return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    slots.release()
                    break
                try:
                    request = following.result()
                except StopAsyncIteration:
                    slots.release()
                    break
                key = _sequence_key(request)
                task = asyncio.create_task(answer(request, last_of.get(key) if key else None))
                running.add(task)
                task.add_done_callback(running.discard)
                if key is not None:
                    last_of[key] = task
                    task.add_done_callback(functools.partial(_forget, last_of, key))
            if running:
                await asyncio.wait(running)
        finally:
            closed.cancel()
            for task in running:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closed


def _sequence_key(request: Any) -> tuple[str, str] | None:
    """The stream-local identity of the sequence a request belongs to, if any."""
    param = request.parameters.get("sequence_id")
    if param is None:
        return None
    which = param.WhichOneof("parameter_choice")
    if which is None:
        return None
    value = getattr(param, which)
    typed = f"u:{value}" if isinstance(value, int) and not isinstance(value, bool) else f"s:{value}"
    return request.model_name, typed


def _forget(
    last_of: dict[tuple[str, str], asyncio.Task[None]],
    key: tuple[str, str],
    task: asyncio.Task[None],
) -> None:
    if last_of.get(key) is task:
        del last_of[key]


def _unimplemented(rpc: str) -> Callable[[InferenceServicer, Any, Context], Awaitable[Any]]:
    async def refuse(self: InferenceServicer, request: Any, context: Context) -> Any:
        self.core.metrics.observe_rpc(SERVICE, rpc, grpc.StatusCode.UNIMPLEMENTED.name, 0.0)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"lstm-serve does not implement {rpc}")

    return refuse


for _rpc in UNIMPLEMENTED_RPCS:
    setattr(InferenceServicer, _rpc, _unimplemented(_rpc))
