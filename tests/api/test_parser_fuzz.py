"""Hypothesis fuzzing of the /v2 request parser (JSON and binary) and the step body parser.

Whatever arrives, the answer is a 4xx in the protocol's error format, never a 5xx.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

datatypes = st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "UINT8", "FP16", "nope"])
shapes = st.lists(st.integers(-2, 4), min_size=0, max_size=4)


@st.composite
def infer_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    inp: dict[str, Any] = {
        "name": draw(st.sampled_from(["INPUT", "STATE_H", "STATE_C", "x", ""])),
        "datatype": draw(datatypes),
        "shape": draw(shapes),
    }
    binary = b""
    if draw(st.booleans()):
        binary = draw(st.binary(max_size=64))
        inp["parameters"] = {"binary_data_size": draw(st.integers(-1, 80) | st.just(len(binary)))}
    else:
        inp["data"] = draw(json_values)
    header: dict[str, Any] = {"inputs": draw(st.lists(st.just(inp), min_size=0, max_size=2))}
    if draw(st.booleans()):
        header["outputs"] = [
            {
                "name": draw(st.sampled_from(["OUTPUT", "STATE_H", "zz"])),
                "parameters": {"binary_data": draw(st.booleans())},
            }
        ]
    if draw(st.booleans()):
        header["parameters"] = {
            "sequence_id": draw(st.integers(-1, 3) | st.text(max_size=4) | st.floats()),
            "sequence_start": draw(st.booleans() | st.integers()),
            "sequence_end": draw(st.booleans()),
        }
    head = json.dumps(header).encode()
    if draw(st.integers(0, 9)) == 0:
        head = draw(st.binary(max_size=40))
    headers: dict[str, str] = {}
    if binary or draw(st.booleans()):
        headers["Inference-Header-Content-Length"] = str(
            draw(st.just(len(head)) | st.integers(-3, len(head) + 5))
        )
    return head + binary, headers


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=infer_bodies(), model=st.sampled_from(["tiny_lstm", "tiny_char", "tiny_gru"]))
async def test_v2_infer_never_5xx(
    client: httpx.AsyncClient, case: tuple[bytes, dict[str, str]], model: str
) -> None:
    body, headers = case
    r = await client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=json_values | st.dictionaries(st.sampled_from(["inputs", "text", "offset"]), json_values)
)
async def test_step_body_never_5xx(client: httpx.AsyncClient, body: Any) -> None:
    sid = (await client.post("/v1/sessions", json={"model": "tiny_lstm"})).json()["id"]
    raw = json.dumps(body).encode()  # NaN and Infinity literals included
    r = await client.post(
        f"/v1/sessions/{sid}/step", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code in (200, 400, 409, 422), r.text
    steps = (await client.get(f"/v1/sessions/{sid}")).json()["steps"]
    assert steps == (len(r.json()["outputs"]) if r.status_code == 200 else 0)
    await client.delete(f"/v1/sessions/{sid}")
