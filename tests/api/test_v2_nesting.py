"""/v2 tensor data nested deeper than its shape (or than any shape) is a clean 400.

``codec.flat_data`` walks nested data level by level, at most the shape's rank deep, so
no nesting a client sends can exhaust the interpreter's stack; the JSON parser bounds
what it will decode at all.
"""

from __future__ import annotations

import httpx
import pytest

from service.errors import InvalidInput
from service.http.v2.codec import flat_data

DEPTHS = [400, 1000, 100_000]


def nested(depth: int, leaf: object = 1.0) -> object:
    value: object = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("rank", [1, 3, 8])
def test_deep_data_is_invalid_input(depth: int, rank: int) -> None:
    with pytest.raises(InvalidInput, match="deeper than shape"):
        flat_data(nested(depth), (1,) * rank, "input 'INPUT'")


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_shape_of_any_length_is_walked_without_recursion(depth: int) -> None:
    # more dimensions than any tensor may have: refused before walking, never RecursionError
    with pytest.raises(InvalidInput, match="more than 8 dimensions"):
        flat_data(nested(depth), (1,) * depth, "input 'INPUT'")


def test_nested_data_matching_its_shape_is_flattened() -> None:
    assert flat_data([[[1, 2, 3]], [[4, 5, 6]]], (2, 1, 3), "x") == [1, 2, 3, 4, 5, 6]
    assert flat_data(nested(8), (1,) * 8, "x") == [1.0]
    assert flat_data([[], []], (2, 0), "x") == []
    for bad in ([[1, 2], [3]], [[1, 2], 3], [1, [2, 3]]):
        with pytest.raises(InvalidInput, match="does not match"):
            flat_data(bad, (2, 2), "x")


def _body(depth: int, shape: list[int], leaf: str = "1.0") -> bytes:
    data = "[" * depth + leaf + "]" * depth
    tensor = f'{{"name": "INPUT", "datatype": "FP32", "shape": {shape}, "data": {data}}}'
    return ('{"inputs": [' + tensor + "]}").encode()


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", [[1, 1, 3], [1], [1] * 8])
@pytest.mark.parametrize("leaf", ["1.0", "NaN", "1" + "0" * 400])  # the last two: json fallback
async def test_deep_data_over_v2_infer_is_400(
    client: httpx.AsyncClient, depth: int, shape: list[int], leaf: str
) -> None:
    r = await client.post("/v2/models/tiny_lstm/infer", content=_body(depth, shape, leaf))
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}
