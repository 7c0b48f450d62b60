"""Schema fuzzing of the whole published OpenAPI surface against a real server.

Every operation in ``/openapi.json`` gets generated requests (schemathesis strategies,
driven by hypothesis): never a 5xx, and every response conforms to the published schema.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.e2e.server import Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 25


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    return operations


def test_fuzz_every_operation(tiny_server: Server) -> None:
    operations = _operations(tiny_server.url)
    labels = {op.label for op in operations}
    assert (
        "POST /v1/sessions/{session_id}/step" in labels and "POST /v2/models/{name}/infer" in labels
    )
    checked = 0

    def fuzz(operation: Any) -> None:
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            nonlocal checked
            case = data.draw(operation.as_strategy())
            response = case.call(base_url=tiny_server.url, timeout=10)
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
            assert response.status_code < 500, f"{operation.label}: {response.text}"
            checked += 1

        run()

    for operation in operations:
        fuzz(operation)
    assert checked >= len(operations)
    assert httpx.get(f"{tiny_server.url}/healthz").status_code == 200
    print(f"fuzzed {len(operations)} operations, {checked} requests, no 5xx")
