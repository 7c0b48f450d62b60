"""schemathesis's stateful phase over the whole OpenAPI against a real server.

Sessions are created, stepped, forked, reset and deleted in generated orders, following the
links the OpenAPI document publishes (and those schemathesis infers from it): never a 5xx,
and every response conforms to the published schema.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.e2e.server import Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODELS = ["tiny_char", "tiny_char", "tiny_lstm", "tiny_gru"]


def test_stateful_links_never_5xx(tiny_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{tiny_server.url}/openapi.json")
    # Positive bodies only: in negative mode schemathesis 4 sometimes generates a link's
    # path parameter and sometimes takes it from the response, which hypothesis reports as
    # a flaky strategy. Invalid bodies are fuzzed statelessly (test_openapi_fuzz.py,
    # test_hostile_values*.py).
    schema.config.generation.update(modes=[GenerationMode.POSITIVE])
    machine = schema.as_state_machine()
    # rules are named SOURCE___STATUS_LINK__TARGET (schemathesis 4)
    transitions = [name for name in dir(machine) if "___" in name]
    print(f"stateful transitions: {len(transitions)}")
    for source in ("POST_v1_sessions___201", "POST_v1_sessions_session_id_fork___201"):
        targets = {t.split("__", 2)[-1] for t in transitions if t.startswith(source)}
        assert {"POST_v1_sessions_session_id_step", "POST_v1_sessions_session_id_fork"} <= {
            t.rstrip("_") for t in targets
        }, (source, targets)

    calls: Counter[tuple[str, int]] = Counter()
    models: dict[str, str] = {}

    class Workflow(machine):  # type: ignore[misc, valid-type]
        def before_call(self, case: schemathesis.Case[Any]) -> None:
            # Sessions of models that exist, and step bodies of their model's kind (the
            # generated values kept where they fit), so the links lead to real work.
            # A generated TTL of a second or two would let a session expire mid-run, so
            # the same scenario could take other transitions when hypothesis replays it.
            label, body = case.operation.label, cast(Any, case.body)
            if isinstance(body, dict) and label.startswith("POST /v1/sessions"):
                body.pop("ttl_seconds", None)
            if label == "POST /v1/sessions" and isinstance(body, dict):
                body.pop("state", None)
                body.pop("version", None)
                body["model"] = MODELS[len(repr(body)) % len(MODELS)]
            elif label.endswith("/step") and isinstance(body, dict):
                model = models.get(str(case.path_parameters.get("session_id")))
                if len(repr(body)) % 2:
                    body.pop("offset", None)
                if model == "tiny_char":
                    body.pop("inputs", None)
                    body["text"] = str(body.get("text") or "abc")
                elif model is not None:
                    body.pop("text", None)
                    rows = [r[:3] + [0.0] * (3 - len(r[:3])) for r in body.get("inputs") or []]
                    body["inputs"] = rows[:8] or [[0.1, 0.2, 0.3]]

        def after_call(self, response: Any, case: schemathesis.Case[Any]) -> None:
            if response.status_code == 201:
                view = response.json()
                models[view["id"]] = view["model"]

        def teardown(self) -> None:
            # Each scenario starts with no sessions: GET /v1/sessions lists what the earlier
            # scenarios left, so a replayed scenario would draw other link values from it
            # (hypothesis reports that as a flaky strategy).
            for session_id in models:
                httpx.delete(f"{tiny_server.url}/v1/sessions/{session_id}", timeout=10)
            models.clear()

        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, object]:
            return {"base_url": tiny_server.url, "timeout": 10}

        def validate_response(self, response, case, **kwargs):  # type: ignore[no-untyped-def]
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
            assert response.status_code < 500, response.text
            calls[(case.operation.label, response.status_code)] += 1

    Workflow.run(
        settings=settings(
            max_examples=60,
            derandomize=True,  # the same scenarios each run: the coverage asserted below is stable
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )
    print("calls:", sorted(calls.items()))
    answered = {label for (label, status), _ in calls.items() if status < 300}
    for label in ("POST /v1/sessions/{session_id}/step", "POST /v1/sessions/{session_id}/fork"):
        assert label in answered, sorted(calls.items())
