from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.http.app import create_app
from service.models.registry import ModelRegistry
from service.settings import Settings
from tests.redis_process import (  # noqa: F401 (fixtures)
    raw_redis,
    redis_databases,
    redis_server,
    redis_url,
)
from tests.redis_topologies import redis_cluster, redis_sentinel  # noqa: F401 (fixtures)
from tests.tiny_models import make_tiny_store

# Servers the tests start (in-process or as ``lstm-serve serve`` processes, which inherit
# this) open no gRPC port unless a test asks for one: several test runs share a machine.
os.environ.setdefault("LSTM_SERVE_GRPC_PORT", "0")

REPO = Path(__file__).resolve().parent.parent
BUNDLED_STORE = REPO / "model_store"


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_store(tmp_path_factory.mktemp("store"))


@pytest.fixture
def registry(tiny_store: Path) -> ModelRegistry:
    """The tiny store, loaded: a fresh registry per test (tests patch its models)."""
    reg = ModelRegistry(tiny_store)
    reg.load()
    return reg


@pytest.fixture
def settings(tiny_store: Path) -> Settings:
    # In-process apps run onnxruntime on a thread: a child process per app would add ~0.3 s
    # to each of these tests. The child-process runner has its own tests
    # (tests/core/test_model_process.py), and every e2e server runs it (the default).
    return Settings(model_store=tiny_store, request_log=False, model_process=False)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
def anyio_backend() -> Iterator[str]:
    yield "asyncio"
