"""schemathesis's stateful phase over the whole OpenAPI against a real server.

Sessions are created, stepped, forked, reset and deleted in generated orders, following the
links the OpenAPI document publishes (and those schemathesis infers from it): never a 5xx,
and every response conforms to the published schema.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.e2e.server import Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_stateful_links_never_5xx(tiny_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{tiny_server.url}/openapi.json")
    machine = schema.as_state_machine()
    transitions = [name for name in dir(machine) if "->" in name]
    print(f"stateful transitions: {len(transitions)}: {transitions[:8]}")
    assert any("/fork" in t for t in transitions) and any("/step" in t for t in transitions)

    class Workflow(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"base_url": tiny_server.url, "timeout": 10}

        def validate_response(self, response, case, **kwargs):  # type: ignore[no-untyped-def]
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
            assert response.status_code < 500, response.text

    Workflow.run(
        settings=settings(
            max_examples=20,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )
