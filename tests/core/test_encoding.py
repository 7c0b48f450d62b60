"""The session step's input parsing and replay fingerprint, against their general forms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.errors import InvalidInput
from service.models.encoding import inputs_digest, parse_body_inputs, parse_step_inputs
from service.models.registry import ModelRegistry

MAX_STEPS = 16

VALID: list[dict[str, Any]] = [
    {"inputs": [[1.0, 2.0, 3.0]]},
    {"inputs": [[1, 2, 3]]},
    {"inputs": [[1.5, -2, 3e30]] * 4, "offset": 3},
    {"inputs": [[0.0, 0.0, 0.0]] * MAX_STEPS},
]

INVALID: list[dict[str, Any]] = [
    {"inputs": [[1.0, 2.0]]},
    {"inputs": [[1.0, 2.0, float("nan")]]},
    {"inputs": [[1.0, 2.0, float("inf")]]},
    {"inputs": [[1.0, 2.0, 1e39]]},
    {"inputs": [[1.0, 2.0, 10**40]]},
    {"inputs": [[1.0, True, 3.0]]},
    {"inputs": [[1.0, "2", 3.0]]},
    {"inputs": []},
    {"inputs": "abc"},
    {"inputs": [1.0, 2.0, 3.0]},
    {"inputs": [[[1.0, 2.0, 3.0]]]},
    {"inputs": [[1.0, 2.0, 3.0]] * (MAX_STEPS + 1)},
    {"inputs": [[1.0, 2.0, 3.0]], "text": "abc"},
    {"text": "abc"},
    {},
]


@pytest.mark.parametrize("body", VALID)
def test_plain_steps_parse_as_the_general_path_does(
    registry: ModelRegistry, body: dict[str, Any]
) -> None:
    manifest = registry.get("tiny_lstm").manifest
    x = parse_step_inputs(manifest, body, MAX_STEPS)
    (general,), batched = parse_body_inputs(manifest, body, MAX_STEPS, 1)
    assert not batched
    assert x.dtype == np.float32 and x.shape == general.shape
    np.testing.assert_array_equal(x, general)


@pytest.mark.parametrize("body", INVALID)
def test_anything_else_fails_with_the_general_paths_error(
    registry: ModelRegistry, body: dict[str, Any]
) -> None:
    manifest = registry.get("tiny_lstm").manifest
    with pytest.raises(InvalidInput) as fast:
        parse_step_inputs(manifest, body, MAX_STEPS)
    try:
        _, batched = parse_body_inputs(manifest, body, MAX_STEPS, 1)
    except InvalidInput as general:
        assert (fast.value.code, fast.value.detail) == (general.code, general.detail)
    else:  # the general path takes a batch of one; a step does not
        assert batched and "not a batch" in fast.value.detail


def test_text_steps_are_parsed_for_text_models(registry: ModelRegistry) -> None:
    manifest = registry.get("tiny_char").manifest
    x = parse_step_inputs(manifest, {"text": "hello"}, MAX_STEPS)
    assert x.dtype == np.int64 and x.shape == (5,)
    with pytest.raises(InvalidInput) as exc:
        parse_step_inputs(manifest, {"inputs": [[1.0, 2.0, 3.0]]}, MAX_STEPS)
    assert exc.value.code == "wrong_input_kind"


@pytest.mark.parametrize(
    "x",
    [
        np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32),
        np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
        np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32),
        np.array([1, 2], dtype=np.int64),
        np.array([1, 2, 3, 4], dtype=np.int32),
        np.array([[1.0, 2.0, 3.0, 4.0]], dtype=">f4"),
    ],
)
def test_digest_is_the_dtype_shape_and_bytes(x: np.ndarray) -> None:
    """For inputs of up to 64 bytes; the same string the digest always was (kept in stores)."""
    for _ in range(2):  # the prefix is cached after the first call
        assert inputs_digest(x) == f"{x.dtype.str}{x.shape!r}{x.tobytes().hex()}"


def test_digests_of_the_same_bytes_differ_by_dtype_and_shape() -> None:
    data = np.arange(4, dtype=np.float32)
    views = [data.reshape(1, 4), data.reshape(2, 2), data, data.view(np.int32)]
    assert len({inputs_digest(v) for v in views}) == len(views)
    big = np.zeros((64, 4), dtype=np.float32)  # over 64 bytes: hashed
    assert len(inputs_digest(big)) == 64 and inputs_digest(big) != inputs_digest(big + 1)
