"""Wire values ↔ model values: validation, normalisation, tokenisation, decoding.

Inputs arrive as decoded JSON (lists of numbers, strings); everything that is not
exactly what the model takes raises ``InvalidInput`` before any state is touched.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.models.manifest import FeaturesInput, Manifest, RegressionOutput, TextInput

_F32_MAX = float(np.finfo(np.float32).max)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_step(step: object, size: int, where: str) -> None:
    if not isinstance(step, list):
        raise InvalidInput(f"{where}: each step must be a list of {size} numbers")
    if len(step) != size:
        raise InvalidInput(
            f"{where}: expected {size} features per step, got {len(step)}",
            code="wrong_feature_count",
        )
    for v in step:
        if not _is_number(v):
            raise InvalidInput(f"{where}: features must be numbers, got {type(v).__name__}")
        if not math.isfinite(v) or abs(v) > _F32_MAX:
            raise InvalidInput(
                f"{where}: features must be finite float32 values", code="non_finite"
            )


def _sequence(seq: object, size: int, max_steps: int, where: str) -> np.ndarray:
    if not isinstance(seq, list) or not seq:
        raise InvalidInput(f"{where}: a sequence must be a non-empty list of steps")
    if len(seq) > max_steps:
        raise InvalidInput(
            f"{where}: {len(seq)} steps exceed the limit of {max_steps}", code="too_many_steps"
        )
    if not _plain_steps(seq, size):
        for t, step in enumerate(seq):  # something is wrong: find it and say what
            _check_step(step, size, f"{where}[{t}]")
    return np.asarray(seq, dtype=np.float32)


def _plain_steps(seq: list[Any], size: int) -> bool:
    """True when every step is a list of ``size`` finite float32-range numbers.

    The common case, checked inline (no call per value); ``_check_step`` explains a False.
    """
    for step in seq:
        if type(step) is not list or len(step) != size:
            return False
        for v in step:
            t = type(v)
            # a chained comparison is False for NaN, infinities and out-of-range ints
            if (t is not float and t is not int) or not -_F32_MAX <= v <= _F32_MAX:
                return False
    return True


def normalise(spec: FeaturesInput, raw: np.ndarray) -> np.ndarray:
    x: np.ndarray = ((raw - spec.mean_array) / spec.std_array).astype(np.float32, copy=False)
    return x


def parse_features(
    manifest: Manifest, inputs: object, max_steps: int, max_batch: int
) -> tuple[list[np.ndarray], bool]:
    """One sequence ``[[f..]..]`` or a batch ``[[[f..]..]..]`` → float32 arrays in the
    data's units (the runner normalises them), and whether it was a batch."""
    spec = manifest.input
    if not isinstance(spec, FeaturesInput):
        raise InvalidInput(
            f"model {manifest.name!r} takes text, not inputs", code="wrong_input_kind"
        )
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list")
    first = inputs[0]
    batched = isinstance(first, list) and bool(first) and isinstance(first[0], list)
    if batched:
        if len(inputs) > max_batch:
            raise InvalidInput(
                f"{len(inputs)} sequences exceed the limit of {max_batch}", code="batch_too_large"
            )
        seqs = [_sequence(s, spec.size, max_steps, f"inputs[{i}]") for i, s in enumerate(inputs)]
    else:
        seqs = [_sequence(inputs, spec.size, max_steps, "inputs")]
    return seqs, batched


def encode_text(
    manifest: Manifest, text: object, max_steps: int, where: str = "text"
) -> np.ndarray:
    spec = manifest.input
    if not isinstance(spec, TextInput):
        raise InvalidInput(
            f"model {manifest.name!r} takes numeric inputs, not text", code="wrong_input_kind"
        )
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"{where}: must be a non-empty string")
    if len(text) > max_steps:
        raise InvalidInput(
            f"{where}: {len(text)} characters exceed the limit of {max_steps}",
            code="too_many_steps",
        )
    index = spec.index
    ids = np.empty(len(text), dtype=np.int64)
    for i, ch in enumerate(text):
        tok = index.get(ch, spec.unknown_id)
        if tok is None:
            raise InvalidInput(
                f"{where}: character {ch!r} at position {i} is not in the vocabulary",
                code="unknown_token",
            )
        ids[i] = tok
    return ids


def parse_text(
    manifest: Manifest, text: object, max_steps: int, max_batch: int
) -> tuple[list[np.ndarray], bool]:
    if isinstance(text, list):
        if not text:
            raise InvalidInput("text must be a non-empty string or list of strings")
        if len(text) > max_batch:
            raise InvalidInput(
                f"{len(text)} sequences exceed the limit of {max_batch}", code="batch_too_large"
            )
        return [encode_text(manifest, t, max_steps, f"text[{i}]") for i, t in enumerate(text)], True
    return [encode_text(manifest, text, max_steps)], False


def parse_body_inputs(
    manifest: Manifest, body: dict[str, Any], max_steps: int, max_batch: int
) -> tuple[list[np.ndarray], bool]:
    """Read ``inputs`` or ``text`` from a request body, whichever the model takes."""
    has_inputs = "inputs" in body
    has_text = "text" in body
    if has_inputs and has_text:
        raise InvalidInput("give either inputs or text, not both")
    if isinstance(manifest.input, TextInput):
        if not has_text:
            raise InvalidInput(
                f'model {manifest.name!r} is a text model: send {{"text": ...}}',
                code="wrong_input_kind",
            )
        return parse_text(manifest, body["text"], max_steps, max_batch)
    if not has_inputs:
        raise InvalidInput(
            f'model {manifest.name!r} takes numeric features: send {{"inputs": ...}}',
            code="wrong_input_kind",
        )
    return parse_features(manifest, body["inputs"], max_steps, max_batch)


def parse_step_inputs(manifest: Manifest, body: dict[str, Any], max_steps: int) -> np.ndarray:
    """The one sequence of a session step's body (``inputs`` or ``text``); a batch is refused.

    Plain numeric steps, the common case, are checked inline; anything else goes through
    ``parse_body_inputs``, which says what is wrong.
    """
    inputs = body.get("inputs")
    spec = manifest.input
    if (
        type(inputs) is list
        and 0 < len(inputs) <= max_steps
        and isinstance(spec, FeaturesInput)
        and "text" not in body
        and _plain_steps(inputs, spec.size)
    ):
        return np.asarray(inputs, dtype=np.float32)
    seqs, batched = parse_body_inputs(manifest, body, max_steps, 1)
    if batched:
        raise InvalidInput("a step takes one sequence of steps, not a batch")
    return seqs[0]


_DIGEST_PREFIXES: dict[tuple[str, str, int, tuple[int, ...]], str] = {}
"""``inputs_digest``'s prefix by dtype and shape (there are few: inputs of at most 64 bytes)."""


def inputs_digest(x: np.ndarray) -> str:
    """Identity of a step request's inputs, for recognising a retried request."""
    data = x.tobytes()
    if len(data) <= 64:  # a few steps: the bytes themselves are the identity, no hashing
        # dtype.str and repr(shape) are built anew on every call (0.6 of the 1 µs this
        # took); the dtype's char, byte order and size are cached attributes
        dtype = x.dtype
        key = (dtype.char, dtype.byteorder, dtype.itemsize, x.shape)
        prefix = _DIGEST_PREFIXES.get(key)
        if prefix is None:
            prefix = _DIGEST_PREFIXES[key] = f"{dtype.str}{x.shape!r}"
        return prefix + data.hex()
    return hashlib.sha256(x.dtype.str.encode() + repr(x.shape).encode() + data).hexdigest()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    p: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return p


def denormalise(spec: RegressionOutput, y: np.ndarray, with_scale: bool = False) -> np.ndarray:
    """Model units → data units. ``with_scale``: ``y`` is a probabilistic model's
    ``[..., 2F]`` rows, the mean (shifted and scaled) then the scale (scaled only)."""
    if with_scale:
        mean = y[..., : spec.size] * spec.std_array + spec.mean_array
        both = np.concatenate([mean, y[..., spec.size :] * spec.std_array], axis=-1)
        return both.astype(np.float32, copy=False)
    out: np.ndarray = (y * spec.std_array + spec.mean_array).astype(np.float32, copy=False)
    return out


def in_data_units(manifest: Manifest, y: np.ndarray, wire: np.ndarray | None) -> np.ndarray:
    """Regression outputs in the data's units: ``wire`` (``SeqResult.wire``, denormalised
    once per onnxruntime run) when there is one, else ``y`` denormalised here (with the
    scale beside the mean for a probabilistic model)."""
    spec = manifest.output
    assert isinstance(spec, RegressionOutput)
    return wire if wire is not None else denormalise(spec, y, manifest.distribution is not None)


def point_outputs(manifest: Manifest, y: np.ndarray, wire: np.ndarray | None) -> np.ndarray:
    """Regression outputs in the data's units, the mean only for a probabilistic model."""
    data = in_data_units(manifest, y, wire)
    spec = manifest.output
    return data[..., : spec.size] if manifest.distribution is not None else data


def decode_steps(
    manifest: Manifest, y: np.ndarray, top_k: int, wire: np.ndarray | None = None
) -> list[Any]:
    """Model outputs ``[time, out]`` → one wire output per step.

    ``wire``, when given, is ``y`` already denormalised (``SeqResult.wire``).
    """
    spec = manifest.output
    if isinstance(spec, RegressionOutput):
        out: list[Any] = point_outputs(manifest, y, wire).tolist()
        return out
    text_spec = manifest.input
    assert isinstance(text_spec, TextInput)
    probs = softmax(y)
    k = min(top_k, probs.shape[-1])
    result: list[Any] = []
    for row in probs:
        top = np.argpartition(-row, k - 1)[:k]
        top = top[np.argsort(-row[top], kind="stable")]
        result.append(
            {"top": [{"token": text_spec.vocab[int(i)], "p": float(row[i])} for i in top]}
        )
    return result


def decode_sequence(
    manifest: Manifest, y: np.ndarray, mode: str, top_k: int, wire: np.ndarray | None = None
) -> Any:
    """One sequence's outputs for ``return: last`` (one output) or ``all`` (one per step)."""
    if mode == "last":
        return decode_steps(manifest, y[-1:], top_k, None if wire is None else wire[-1:])[0]
    return decode_steps(manifest, y, top_k, wire)
