from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server, running_server


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[Server]:
    """A real uvicorn process serving the tiny test models from memory."""
    with running_server(
        {"LSTM_SERVE_MODEL_STORE": str(tiny_store)}, tmp_path_factory.mktemp("logs")
    ) as server:
        yield server


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real uvicorn process serving the bundled, trained model store with no configuration."""
    with running_server({}, tmp_path_factory.mktemp("logs")) as server:
        yield server
