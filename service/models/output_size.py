"""How many bytes a request's outputs will take, known from shapes before the model runs.

Every figure is an upper bound of the serialised size: a request is refused from what it
asks for (sequences, steps, outputs, encoding), never after the work is done. The output
budget (``service.http.gate.check_output_budget``) compares these figures with
``Settings.max_response_bytes``.

Per value:

- FP32 binary (``/v2`` ``binary_data``): 4 bytes.
- FP32 as JSON on ``/v2`` (orjson's shortest float32 form): at most 16 characters
  (``-1.17549435e-38``) and a separator.
- a float on ``/v1`` (a float32 value written as a Python float): at most 24 characters
  (``-1.1754943508222875e-38``) and a separator.
"""

from __future__ import annotations

import math
from functools import cache

import orjson

from service.models.manifest import Manifest, RegressionOutput, TextInput

FP32_BINARY_BYTES = 4
FP32_JSON_BYTES = 17
FLOAT_JSON_BYTES = 25

_TOP_ENTRY = len(b'{"token":,"p":},')
"""One ``{"token": t, "p": p}`` of a next-token distribution, without ``t`` and ``p``."""
_TOP_WRAPPER = len(b'{"top":[]},')


def fp32_tensor_bytes(values: int, binary: bool) -> int:
    """An FP32 tensor of ``values`` elements, binary or as a JSON list (plus its brackets)."""
    if binary:
        return values * FP32_BINARY_BYTES
    return values * FP32_JSON_BYTES + 2


def output_values_per_step(manifest: Manifest) -> int:
    """Values the model gives per time step: regression outputs, or the vocabulary's size."""
    return manifest.output.size


def state_values_per_sequence(manifest: Manifest) -> dict[str, int]:
    """Values of each state tensor (``h``, ``c``) for one sequence, by state name."""
    return {s.name: math.prod(s.shape) for s in manifest.state}


@cache
def _token_bytes(vocab: tuple[str, ...]) -> int:
    """The longest vocabulary entry as a JSON string (quotes and escapes included)."""
    return max(len(orjson.dumps(t)) for t in vocab)


def _longest_token(manifest: Manifest) -> int:
    spec = manifest.input
    assert isinstance(spec, TextInput)
    return _token_bytes(tuple(spec.vocab))


_LEVEL_KEY = len(b'"0.123456":,')
"""A quantile level's key in a ``{"0.1": [...], ...}`` object (``:g`` gives at most 6
significant digits)."""
_DISTRIBUTION_KEYS = len(b'{"scale":,"quantiles":{}},')


def _vector_bytes(manifest: Manifest) -> int:
    """One regression vector: ``output.size`` floats, brackets and a separator."""
    return manifest.output.size * FLOAT_JSON_BYTES + 3


def _levels(manifest: Manifest) -> int:
    d = manifest.distribution
    return 0 if d is None else len(d.quantiles)


def v1_step_bytes(manifest: Manifest, top_k: int) -> int:
    """One ``/v1`` output step: a regression vector (and a probabilistic forecaster's
    ``distribution`` entry: the scale and each level's quantiles), or the top ``top_k``
    next tokens."""
    if isinstance(manifest.output, RegressionOutput):
        vector = _vector_bytes(manifest)
        if manifest.distribution is None:
            return vector
        levels = _levels(manifest)
        return 2 * vector + _DISTRIBUTION_KEYS + levels * (_LEVEL_KEY + vector)
    k = min(top_k, manifest.output.size)
    return _TOP_WRAPPER + k * (_TOP_ENTRY + _longest_token(manifest) + FLOAT_JSON_BYTES)


def v1_generated_step_bytes(manifest: Manifest, samples: int = 1, paths: bool = False) -> int:
    """One generated step: ``{"token", "p"}`` (and its character in ``text``), or a vector
    (for a probabilistic forecaster, also its ``fan`` entry and, with ``paths``, every one
    of the ``samples`` paths' vectors)."""
    if isinstance(manifest.output, RegressionOutput):
        vector = _vector_bytes(manifest)
        if manifest.distribution is None:
            return vector
        fan = 3 + _levels(manifest) * (_LEVEL_KEY + vector)
        return vector + fan + (samples * vector + 3 if paths else 0)
    token = _longest_token(manifest)
    return _TOP_ENTRY + token + FLOAT_JSON_BYTES + token


def v1_outputs_bytes(manifest: Manifest, steps: list[int], every_step: bool, top_k: int) -> int:
    """A ``/v1`` predict or step response's outputs for sequences of ``steps`` steps each:
    one output per step when ``every_step`` (``return: "all"``, a session step), else one
    per sequence."""
    outputs = sum(steps) if every_step else len(steps)
    return outputs * v1_step_bytes(manifest, top_k) + 2 * len(steps) + 2
