"""Request bodies: what ``/openapi.json`` publishes is what the server enforces.

- every body the document publishes says ``additionalProperties: false``, and a misspelled
  field in it is 422 naming the field (``invalid_input`` on ``/v1``, ``{"error"}`` on
  ``/v2``);
- the step's fast validator (a ``TypeAdapter``) accepts and rejects exactly the bodies the
  published schema does;
- values that parse but overflow a float, a denormal temperature, lone surrogates and
  shapes that describe more elements than exist are clean 4xx answers, never a 500.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema.validators import extend

from service.http.v1.schemas import STEP_BODY, StepBody
from tests.api.test_gate import KEY, env_for
from tests.api.test_gate import _auth as auth

JSON = {"content-type": "application/json"}
SEQ = [[1.0, 2.0, 3.0]]
HUGE = "1" + "0" * 400
"""An integer past any float (1e400)."""
TENSOR = '{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 3], "data": [1, 2, 3]}'


def fill(template: str, value: str) -> str:
    return template.replace("%s", value)


PUBLISHED: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("/v1/models/{name}/predict", "post"): ("/v1/models/tiny_lstm/predict", {"inputs": SEQ}),
    ("/v1/models/{name}/generate", "post"): ("/v1/models/tiny_char/generate", {"context": "ab"}),
    ("/v1/sessions", "post"): ("/v1/sessions", {"model": "tiny_lstm"}),
    ("/v1/sessions/{session_id}/step", "post"): ("/v1/sessions/{sid}/step", {"inputs": SEQ}),
    ("/v1/sessions/{session_id}/fork", "post"): ("/v1/sessions/{sid}/fork", {}),
    ("/v1/sessions/{session_id}/generate", "post"): (
        "/v1/sessions/{sid}/generate",
        {"context": SEQ},
    ),
}


async def _session(client: httpx.AsyncClient, model: str = "tiny_lstm") -> str:
    r = await client.post("/v1/sessions", json={"model": model})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


async def test_every_published_body_forbids_unknown_fields_and_the_server_enforces_it(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/openapi.json")).json()
    bodies = {
        (path, method): op["requestBody"]["content"]["application/json"]["schema"]
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if "requestBody" in op
    }
    assert set(bodies) == set(PUBLISHED), "a body without a misspelling test"
    sid = await _session(client)
    for key, schema in bodies.items():
        assert schema["additionalProperties"] is False, key
        url, good = PUBLISHED[key]
        url = url.format(sid=sid)
        field = sorted(schema["properties"])[0]
        misspelled = field[:-1] + "x" + "_"
        r = await client.post(url, json={**good, misspelled: 1})
        assert r.status_code == 422, (key, r.text)
        problem = r.json()
        assert problem["code"] == "invalid_input" and misspelled in problem["detail"], problem
        assert problem["fields"] == [misspelled]


@pytest.mark.parametrize(
    "body",
    [
        {"context": "def ", "steps": 3, "temprature": 0},
        {"context": "ab", "top_k": 2, "extra": True},
    ],
)
async def test_misspelled_generate_fields_are_refused_not_ignored(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    for url in ("/v1/models/tiny_char/generate",):
        r = await client.post(url, json=body)
        assert r.status_code == 422 and r.json()["code"] == "invalid_input", r.text


def test_a_misspelled_field_in_a_frame_is_an_error_frame(tiny_store: Path) -> None:
    with env_for(tiny_store) as env:
        url = f"/v1/sessions/{env.sid}/stream"
        with env.client.websocket_connect(url, headers=auth(KEY)) as ws:
            ws.send_text(json.dumps({"inputs": SEQ, "ofset": 0}))
            problem = json.loads(ws.receive_text())["error"]
            assert problem["code"] == "invalid_input" and "ofset" in problem["detail"]
            ws.send_text(json.dumps({"inputs": SEQ}))
            assert json.loads(ws.receive_text())["steps"] == 1  # the socket stays open


async def test_a_misspelled_field_in_a_v2_request_is_422(client: httpx.AsyncClient) -> None:
    tensor = {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 3], "data": [1, 2, 3]}
    for body in (
        {"inputs": [tensor], "ouputs": []},
        {"inputs": [{**tensor, "dat": [1]}]},
    ):
        r = await client.post("/v2/models/tiny_lstm/infer", json=body)
        assert r.status_code == 422 and "unknown field" in r.json()["error"], r.text
    assert (
        "ouputs"
        in (
            await client.post("/v2/models/tiny_lstm/infer", json={"inputs": [tensor], "ouputs": []})
        ).json()["error"]
    )


# -- values that parse but overflow -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/models/tiny_lstm/predict", fill('{"inputs": [[1.0, 2.0, %s]]}', HUGE)),
        ("/v1/sessions/{sid}/step", fill('{"inputs": [[1.0, 2.0, %s]]}', HUGE)),
        ("/v1/sessions/{sid}/step", '{"inputs": [[1.0, 2.0, 1e308]]}'),
        ("/v1/models/tiny_char/generate", '{"context": "ab", "temperature": 1e-310}'),
        ("/v1/models/tiny_char/generate", fill('{"context": "ab", "temperature": %s}', HUGE)),
        ("/v1/models/tiny_char/generate", fill('{"context": "ab", "steps": %s}', HUGE)),
        ("/v1/models/tiny_char/generate", fill('{"context": "ab", "seed": %s}', HUGE)),
        ("/v1/models/tiny_char/generate", fill('{"context": "ab", "top_k": %s}', HUGE)),
        (
            "/v1/models/tiny_char/generate",
            '{"context": "ab", "stream": true, "temperature": 1e-310}',
        ),
        ("/v1/sessions", fill('{"model": "tiny_lstm", "ttl_seconds": %s}', HUGE)),
    ],
)
async def test_overflowing_values_are_422(client: httpx.AsyncClient, path: str, raw: str) -> None:
    sid = await _session(client)
    r = await client.post(path.format(sid=sid), content=raw.encode(), headers=JSON)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 0


def test_a_huge_integer_in_a_frame_is_an_error_frame(tiny_store: Path) -> None:
    with env_for(tiny_store) as env:
        url = f"/v1/sessions/{env.sid}/stream"
        with env.client.websocket_connect(url, headers=auth(KEY)) as ws:
            ws.send_text(fill('{"inputs": [[1.0, 2.0, %s]]}', HUGE))
            assert json.loads(ws.receive_text())["error"]["code"] == "non_finite"
            ws.send_text(json.dumps({"inputs": SEQ}))
            assert json.loads(ws.receive_text())["steps"] == 1


@pytest.mark.parametrize(
    ("model", "raw"),
    [
        ("tiny_lstm", fill('{"id": "\\ud800", "inputs": [%s]}', TENSOR)),
        ("tiny_lstm", fill('{"inputs": [%s]}', TENSOR).replace('"INPUT"', '"IN\\ud800"')),
        ("tiny_lstm", fill('{"inputs": [%s], "outputs": [{"name": "\\ud800"}]}', TENSOR)),
        (
            "tiny_lstm",
            fill(
                '{"inputs": [%s], '
                '"parameters": {"sequence_id": "\\ud800", "sequence_start": true}}',
                TENSOR,
            ),
        ),
        (
            "tiny_char",
            '{"inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [1], '
            '"data": ["a\\ud800"]}]}',
        ),
        (
            "tiny_lstm",
            '{"inputs": [{"name": "INPUT", "datatype": "FP32", '
            '"shape": [0, 1000000000000000000, 4], "data": []}]}',
        ),
    ],
)
async def test_v2_surrogates_and_impossible_shapes_are_400(
    client: httpx.AsyncClient, model: str, raw: str
) -> None:
    r = await client.post(f"/v2/models/{model}/infer", content=raw.encode())
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}


async def test_v1_bodies_need_json_content_type_and_v2_needs_none(
    client: httpx.AsyncClient,
) -> None:
    sid = await _session(client)
    form = {"content-type": "text/plain"}
    r = await client.post(
        f"/v1/sessions/{sid}/step", content=b'{"inputs": [[1,2,3]]}', headers=form
    )
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    r = await client.post("/v1/sessions", content=b'{"model": "tiny_lstm"}', headers=form)
    assert r.status_code == 415
    r = await client.post(f"/v1/sessions/{sid}/fork", headers=form)  # even without a body
    assert r.status_code == 415
    assert len((await client.get("/v1/sessions")).json()["sessions"]) == 1
    assert (await client.get(f"/v1/sessions/{sid}")).json()["steps"] == 0
    r = await client.post(
        f"/v1/sessions/{sid}/step",
        content=b'{"inputs": [[1,2,3]]}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200
    r = await client.post(f"/v1/sessions/{sid}/reset")  # no body, no content type
    assert r.status_code == 200
    r = await client.post(
        "/v2/models/tiny_lstm/infer", content=(fill('{"inputs": [%s]}', TENSOR)).encode()
    )
    assert r.status_code == 200 and "content-type" not in r.request.headers


# -- the step's fast validator is the published schema --------------------------------------


@functools.cache
def _published_step_schema(tiny_store: Path) -> dict[str, Any]:
    from service.http.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_store=tiny_store, request_log=False, model_process=False))
    op = app.openapi()["paths"]["/v1/sessions/{session_id}/step"]["post"]
    schema: dict[str, Any] = op["requestBody"]["content"]["application/json"]["schema"]
    return schema


def _is_json_int(_checker: object, value: object) -> bool:
    """JSON's integers as a parser gives them: ``1.0`` is a float, ``true`` no number."""
    return isinstance(value, int) and not isinstance(value, bool)


_Validator = extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_json_int),
)

numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([3.4e38, 3.5e38, -3.5e38, 1e-310, 0, -1, 2**63 - 1, 2**63])
)
leaves = numbers | st.booleans() | st.none() | st.text(max_size=3)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3), max_leaves=8)
bodies = st.dictionaries(
    st.sampled_from(["inputs", "text", "offset", "inputz", "extra"]), values, max_size=3
) | st.fixed_dictionaries(
    {"inputs": st.lists(st.lists(numbers, max_size=3), max_size=3)},
    optional={"offset": numbers | st.none(), "text": st.text(max_size=2) | st.none()},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_fast_step_validator_agrees_with_the_published_schema(
    body: dict[str, Any], tiny_store: Path
) -> None:
    published = _Validator(_published_step_schema(tiny_store)).is_valid(body)
    try:
        STEP_BODY.validate_python(body)
        fast = True
    except Exception:
        fast = False
    try:
        StepBody.model_validate(body)
        model = True
    except Exception:
        model = False
    assert fast == published == model, body
