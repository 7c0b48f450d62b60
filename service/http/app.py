"""``create_app(settings)``: builds the core inside the lifespan and mounts the adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from service.errors import ServeError
from service.http import health, websocket
from service.http.console.routes import mount_console
from service.http.context import RequestContext, RequestContextMiddleware
from service.http.docs_ui import mount_docs_ui
from service.http.endpoint import RequestEndpoint, document
from service.http.problems import (
    client_disconnect_handler,
    http_error_handler,
    serve_error_handler,
    unhandled_error_handler,
    validation_error_handler,
)
from service.http.rate_limit import RateLimiter
from service.http.state import AppState
from service.http.v1 import predict
from service.http.v1 import routes as v1_routes
from service.http.v1 import step as v1_step
from service.http.v2 import infer
from service.http.v2 import routes as v2_routes
from service.inference.runner import Runner
from service.metrics import Metrics
from service.models.registry import ModelRegistry
from service.sessions.manager import SessionManager
from service.sessions.memory import MemoryStore
from service.sessions.store import SessionStore
from service.settings import Settings

log = logging.getLogger("service")
access_logger = logging.getLogger("service.access")

SWEEP_INTERVAL_SECONDS = 5.0


def build_store(settings: Settings, metrics: Metrics) -> SessionStore:
    def on_gone(reason: str) -> None:
        (metrics.sessions_evicted if reason == "evicted" else metrics.sessions_expired).inc()

    if settings.session_store == "memory":
        return MemoryStore(on_gone=on_gone)
    from service.sessions.redis_store import RedisStore

    return RedisStore.from_url(
        settings.session_store,
        on_gone=on_gone,
        cache_records=settings.session_cache_records,
        cache_bytes=settings.session_cache_mb * 2**20,
        wait_replicas=settings.redis_wait_replicas,
    )


async def reload_models(core: AppState) -> None:
    """Re-scan the model store; new versions become defaults, sessions keep their pins."""
    before = {m.key for m in core.registry.all()}
    await asyncio.to_thread(core.registry.load)
    core.runner.prepare(core.registry.all())
    after = {m.key for m in core.registry.all()}
    if before != after:
        log.info(
            "model store reloaded",
            extra={"added": sorted(after - before), "removed": sorted(before - after)},
        )


async def _reloader(core: AppState, wake: asyncio.Event) -> None:
    interval = core.settings.reload_interval_seconds or None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval)
        wake.clear()
        try:
            await reload_models(core)
        except Exception:
            log.exception("model store reload failed; the loaded models keep serving")


async def _sweeper(core: AppState) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
        try:
            await core.sessions.sweep()
        except ServeError as exc:
            log.warning("session sweep failed: %s", exc.detail)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings.model_store, settings.ort_threads)
        await asyncio.to_thread(registry.load)
        log.info(
            "loaded models: %s",
            ", ".join(f"{m.name}:{m.version}" for m in registry.all()) or "none",
        )
        store = build_store(settings, metrics)
        runner = Runner(
            metrics,
            max_batch_size=settings.batch_max_size,
            max_wait_us=settings.batch_max_wait_us,
            process=settings.model_process,
            ort_threads=settings.ort_threads,
            max_run_steps=settings.max_run_steps,
        )
        await runner.start(registry.all())
        core = AppState(
            settings=settings,
            registry=registry,
            store=store,
            runner=runner,
            sessions=SessionManager(store, registry, runner, settings, metrics),
            metrics=metrics,
            rate_limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
            api_keys=[k.encode() for k in settings.api_key_list],
        )
        app.state.core = core
        wake = asyncio.Event()
        app.state.reload = wake
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, wake.set)
        tasks = [asyncio.create_task(_sweeper(core)), asyncio.create_task(_reloader(core, wake))]
        try:
            yield
        finally:
            core.draining = True
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runner.close()
            await store.close()
            log.info("Application shutdown complete")
            await asyncio.to_thread(context.close)  # the access log's last lines

    app = FastAPI(
        title="lstm-serve",
        docs_url=None,
        redoc_url=None,
        version="0.1.0",
        description="Inference for recurrent sequence models with stateful sessions.",
        lifespan=lifespan,
        # Our own Prometheus metrics and access log cover requests; FastAPI's OpenTelemetry
        # instrumentation would cost 3-8% of a session step's CPU for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.add_exception_handler(ServeError, serve_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(ClientDisconnect, client_disconnect_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
    mount_docs_ui(app)
    mount_console(app)
    app.include_router(health.router)
    routes = app.router.routes
    mark = len(routes)
    app.include_router(v1_routes.router)
    app.include_router(v2_routes.router)
    hot = routes[mark:]
    app.include_router(websocket.router)
    # The router tries routes in list order, each at a cost (an included router's route
    # costs several µs), so the hot routes come first (plain Starlette routes:
    # service.http.endpoint), then the other /v1 and /v2 routes; the docs, health, metrics
    # and the WebSocket handshake come after them. No two routes match the same path and
    # method, so the order changes nothing else.
    plain = [
        Route(v1_step.ROUTE, v1_step.StepEndpoint(), methods=["POST"], name="step_session"),
        Route(
            predict.ROUTE,
            RequestEndpoint(predict.ROUTE, predict.predict),
            methods=["POST"],
            name="predict",
        ),
        Route(
            infer.ROUTE,
            RequestEndpoint(infer.ROUTE, infer.infer),
            methods=["POST"],
            name="infer",
        ),
        Route(
            infer.VERSION_ROUTE,
            RequestEndpoint(infer.VERSION_ROUTE, infer.infer),
            methods=["POST"],
            name="infer_version",
        ),
    ]
    routes[:] = [*plain, *hot, *(r for r in routes if not any(r is h for h in hot))]
    # An access line is an INFO record of "service.access": a level above INFO turns it off.
    log_requests = settings.request_log and access_logger.isEnabledFor(logging.INFO)
    context = RequestContext(metrics, log_requests)
    app.add_middleware(RequestContextMiddleware, context=context)
    document(
        app,
        {
            v1_step.ROUTE: {"post": v1_step.openapi_operation()},
            predict.ROUTE: {"post": predict.openapi_operation()},
            **infer.openapi_operations(),
        },
    )
    return app
