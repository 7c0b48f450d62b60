"""Hypothesis strategies for hostile values, shared by the in-process and the wire fuzzers.

The edges here are the kinds that broke the service before: numbers that parse but
overflow (integers past 2**64 or 1e308, denormals, float32 overflow), strings that are not
Unicode (lone surrogates) or hide NUL, zero-sized and overflowing tensor shapes, deep
nesting, and oversize headers. ``hostile_requests`` puts one such value into a field of an
otherwise valid request for each door; ``check_answer`` says what every answer must be:
a success, or a 4xx in the door's error format, never a 5xx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import strategies as st

# -- values --------------------------------------------------------------------------------

huge_integers = st.sampled_from(
    [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30, 10**400]
) | st.integers(min_value=2**63 - 4, max_value=2**70)
"""Integers past every fixed width, up to a 400-digit one (a float would be infinite)."""

tiny_floats = st.sampled_from([5e-324, -5e-324, 1e-310, 2.2250738585072014e-308, 1.4e-45, 1e-45])
"""Denormals (of float64 and of float32) and the smallest normal float."""

big_floats = st.sampled_from([3.4028235e38, 3.5e38, -3.5e38, 1e39, 1e308, -1.7976931348623157e308])
"""At and past float32's range, up to float64's largest."""

edge_numbers = huge_integers | tiny_floats | big_floats | st.sampled_from([0, -0.0, -1, 1e-7])

lone_surrogates = st.sampled_from(["\ud800", "\udfff", "a\udc80b", "\udbff\ud800"])
"""Code points that are not characters: no UTF-8 encoding exists for them."""

nul_strings = st.sampled_from(["\x00", "a\x00b", "\x00" * 64, "INPUT\x00"])

odd_strings = (
    lone_surrogates
    | nul_strings
    | st.sampled_from(["", " ", "\u202e", "\ufeff", "😀" * 8, "x" * 5000])
    | st.text(max_size=12)
)

bad_dims = st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 2**64, 10**18, 10**400])
shapes = st.lists(st.integers(0, 4) | bad_dims, min_size=0, max_size=9)
"""Tensor shapes: empty, zero-sized, negative, past int64 and past any memory (and rank 9)."""

overflowing_shapes = st.sampled_from(
    [[0, 10**18, 4], [0, 1000000000000000000, 3], [2**32, 2**32, 0], [1, 2**63, 3], [0]]
)
"""Shapes whose element count is zero while a dimension is absurd, or overflows int64."""

hostile_values: st.SearchStrategy[Any] = (
    edge_numbers | odd_strings | st.booleans() | st.none() | shapes | st.just({})
)


def nested(depth: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``depth`` lists."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_json(depth: int) -> bytes:
    """Raw JSON nested ``depth`` levels (built as text: no recursion to encode it)."""
    return b"[" * depth + b"0" + b"]" * depth


def to_json(value: Any) -> bytes:
    """JSON text as a client library writes it: big integers exact, lone surrogates as
    ``\\udXXX`` escapes (json.dumps handles both, orjson refuses them)."""
    return json.dumps(value).encode()


# -- headers -------------------------------------------------------------------------------

header_sizes = st.sampled_from([8 * 1024, 33 * 1024, 64 * 1024, 256 * 1024])


@st.composite
def oversize_headers(draw: st.DrawFn) -> dict[str, str]:
    """One huge header, or many medium ones, well past nginx's 8 KB per line, 32 KB in all."""
    size = draw(header_sizes)
    if draw(st.booleans()):
        return {"X-Big": "a" * size}
    return {f"X-Many-{i}": "b" * 1024 for i in range(size // 1024)}


# -- requests ------------------------------------------------------------------------------

FEATURES = 3
"""Features of the tiny regression models (tests/tiny_models.py)."""


@dataclass
class Door:
    """A valid request to one route; ``hostile_requests`` breaks one field of it."""

    path: str
    body: dict[str, Any]
    v2: bool = False
    needs_session: bool = False
    paths: list[tuple[Any, ...]] = field(default_factory=list)


def _leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _leaf_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:2]):
            out += _leaf_paths(v, (*prefix, i))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


ROW = [0.5] * FEATURES


def doors() -> list[Door]:
    """One valid request per door that reads a body (tiny models; ``{sid}`` is a session)."""
    features = {"name": "INPUT", "datatype": "FP32", "shape": [1, 2, FEATURES]}
    return [
        Door("/v1/models/tiny_lstm/predict", {"inputs": [ROW, ROW], "return": "all"}),
        Door("/v1/models/tiny_char/predict", {"text": ["abc", "cab"], "return": "last"}),
        Door(
            "/v1/models/tiny_lstm/generate",
            {"context": [ROW], "steps": 2, "temperature": 0.5, "top_k": 2, "seed": 1},
        ),
        Door(
            "/v1/models/tiny_char/generate",
            {"context": "ab", "steps": 2, "temperature": 1.0, "seed": 3, "stream": True},
        ),
        Door("/v1/sessions", {"model": "tiny_lstm", "version": 1, "ttl_seconds": 60, "steps": 0}),
        Door("/v1/sessions/{sid}/step", {"inputs": [ROW], "offset": 0}, needs_session=True),
        Door(
            "/v1/sessions/{sid}/generate",
            {"context": [ROW], "steps": 2, "advance": False, "stream": False},
            needs_session=True,
        ),
        Door("/v1/sessions/{sid}/fork", {"ttl_seconds": 30}, needs_session=True),
        Door(
            "/v2/models/tiny_lstm/infer",
            {
                "id": "r1",
                "inputs": [{**features, "data": [0.5] * (2 * FEATURES)}],
                "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": False}}],
            },
            v2=True,
        ),
        Door(
            "/v2/models/tiny_char/infer",
            {
                "inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [1], "data": ["ab"]}],
                "parameters": {"sequence_id": 7, "sequence_start": True, "sequence_end": True},
            },
            v2=True,
        ),
    ]


deep_values = st.builds(nested, st.sampled_from([50, 400]))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _like(original: Any) -> st.SearchStrategy[Any]:
    """Hostile values of the original's own kind, the likeliest to get past type checks."""
    if isinstance(original, bool):
        return huge_integers | st.sampled_from([0, 1, "true"])
    if isinstance(original, int | float):
        return edge_numbers
    if isinstance(original, str):
        return odd_strings
    if isinstance(original, list):
        return shapes | overflowing_shapes | st.lists(edge_numbers, min_size=1, max_size=4)
    return hostile_values


@dataclass
class HostileRequest:
    door: Door
    content: bytes
    where: str


@st.composite
def hostile_requests(draw: st.DrawFn, only: list[Door] | None = None) -> HostileRequest:
    """A door's valid body with one field (or the whole body) replaced by a hostile value."""
    door = draw(st.sampled_from(only or doors()))
    paths = _leaf_paths(door.body)
    choice = draw(st.integers(0, len(paths) + 1))
    if choice == len(paths):  # the whole body
        raw = draw(
            st.sampled_from([deep_json(100_000), deep_json(5_000), b'{"a":' * 3000, b"\x00" * 8])
            | st.binary(max_size=32)
        )
        return HostileRequest(door, raw, "<body>")
    if choice == len(paths) + 1:  # an unknown field
        key = draw(odd_strings)
        value = {**door.body, key: draw(hostile_values)}
        return HostileRequest(door, to_json(value), f"<unknown field {key!r}>")
    path = paths[choice]
    new = draw(_like(_get(door.body, path)) | hostile_values | deep_values)
    if path and path[-1] == "shape":
        new = draw(shapes | overflowing_shapes)
    return HostileRequest(door, to_json(_replace(door.body, path, new)), repr(path))


# -- answers -------------------------------------------------------------------------------


def check_answer(r: httpx.Response, v2: bool, what: str) -> None:
    """Never a 5xx; a 4xx in the door's format (``{"error": str}`` on /v2, problem details
    with a ``code`` on /v1); a streamed 200 ends with ``end`` or ``error``, not cut off."""
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        if r.status_code == 431:  # answered by the HTTP server itself, before any route
            return
        doc = r.json()
        if v2:
            assert isinstance(doc.get("error"), str), f"{what}: {doc}"
        else:
            assert r.headers["content-type"].startswith("application/problem+json"), what
            assert isinstance(doc.get("code"), str) and doc["status"] == r.status_code, what
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line for line in r.text.splitlines() if line.startswith("event: ")]
        assert events and events[-1] in ("event: end", "event: error"), f"{what}: {r.text[-300:]}"
