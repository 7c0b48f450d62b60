"""The protocol's stable tensor names over a model's manifest.

Every model shows the same names, whatever its ONNX graph calls its tensors:

- ``INPUT``: FP32 ``[batch, time, F]`` features in the data's own units (the service
  normalises them as ``/v1`` does), or for text models BYTES ``[batch]``, one UTF-8
  string per sequence (all of equal length, so the outputs form one tensor).
- ``OUTPUT``: FP32 ``[batch, time, O]`` regression outputs in data units, or for text
  models FP32 ``[batch, time, V]`` next-token probabilities (softmax of the logits;
  index ``i`` is the vocabulary's ``i``-th character).
- ``SCALE`` and ``QUANTILES``, probabilistic forecasters only: FP32 ``[batch, time, O]``,
  each output's scale (for ``gaussian`` its standard deviation; ``OUTPUT`` is the mean), and
  FP32 ``[batch, time, L, O]``, its quantiles at the ``L`` levels the model's configuration
  lists (parameter ``quantiles``), in data units.
- ``STATE_H`` (and ``STATE_C`` for LSTMs): FP32 ``[batch, layers, hidden]``, optional
  inputs to start from an explicit state and outputs with the state after the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.inference.runner import SeqResult
from service.models import distribution
from service.models.encoding import encode_text, in_data_units, softmax
from service.models.manifest import FeaturesInput, Manifest, RegressionOutput, TextInput
from service.models.output_size import (
    fp32_tensor_bytes,
    output_values_per_step,
    state_values_per_sequence,
)
from service.models.registry import LoadedModel, State
from service.oip.messages import InferRequest, InputTensor

INPUT = "INPUT"
OUTPUT = "OUTPUT"
SCALE = "SCALE"
QUANTILES = "QUANTILES"
PLATFORM = "onnxruntime_onnx"


def state_tensor_name(state_name: str) -> str:
    return f"STATE_{state_name.upper()}"


def output_names(manifest: Manifest) -> list[str]:
    return [
        OUTPUT,
        *_distribution_names(manifest),
        *(state_tensor_name(s.name) for s in manifest.state),
    ]


def _distribution_names(manifest: Manifest) -> list[str]:
    return [] if manifest.distribution is None else [SCALE, QUANTILES]


def _distribution_dims(manifest: Manifest) -> list[tuple[str, list[int]]]:
    """``SCALE`` and ``QUANTILES`` with their per-step dims (after batch and time)."""
    d = manifest.distribution
    if d is None:
        return []
    size = manifest.output.size
    return [(SCALE, [size]), (QUANTILES, [len(d.quantiles), size])]


def _input_doc(manifest: Manifest) -> dict[str, Any]:
    if isinstance(manifest.input, TextInput):
        return {"name": INPUT, "datatype": "BYTES", "shape": [-1]}
    return {"name": INPUT, "datatype": "FP32", "shape": [-1, -1, manifest.input.size]}


def _state_docs(manifest: Manifest) -> list[dict[str, Any]]:
    return [
        {"name": state_tensor_name(s.name), "datatype": "FP32", "shape": [-1, *s.shape]}
        for s in manifest.state
    ]


def metadata(model: LoadedModel, versions: list[int]) -> dict[str, Any]:
    """``GET /v2/models/{m}``: names, datatypes and shapes, -1 for dynamic axes."""
    m = model.manifest
    return {
        "name": m.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [_input_doc(m), *_state_docs(m)],
        "outputs": [
            {"name": OUTPUT, "datatype": "FP32", "shape": [-1, -1, m.output.size]},
            *(
                {"name": n, "datatype": "FP32", "shape": [-1, -1, *dims]}
                for n, dims in _distribution_dims(m)
            ),
            *_state_docs(m),
        ],
    }


def config(model: LoadedModel, max_batch: int, idle_seconds: int) -> dict[str, Any]:
    """``GET /v2/models/{m}/config`` in Triton's model-configuration JSON.

    Dimensions exclude the batch axis, as Triton's do when ``max_batch_size`` > 0.
    """
    m = model.manifest
    text = isinstance(m.input, TextInput)
    state = [
        {
            "name": state_tensor_name(s.name),
            "data_type": "TYPE_FP32",
            "dims": list(s.shape),
            "optional": True,
        }
        for s in m.state
    ]
    return {
        "name": m.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": {"all": {}},
        "max_batch_size": max_batch,
        "input": [
            {
                "name": INPUT,
                "data_type": "TYPE_STRING" if text else "TYPE_FP32",
                "dims": [1] if text else [-1, m.input_size],
                **({"reshape": {"shape": []}} if text else {}),
            },
            *state,
        ],
        "output": [
            {"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [-1, m.output.size]},
            *(
                {"name": n, "data_type": "TYPE_FP32", "dims": [-1, *dims]}
                for n, dims in _distribution_dims(m)
            ),
            *({k: v for k, v in s.items() if k != "optional"} for s in state),
        ],
        "sequence_batching": {
            "max_sequence_idle_microseconds": idle_seconds * 1_000_000,
            "state": [
                {
                    "input_name": s["name"],
                    "output_name": s["name"],
                    "data_type": "TYPE_FP32",
                    "dims": s["dims"],
                }
                for s in state
            ],
        },
        "parameters": {
            "task": {"string_value": m.task},
            "cell": {"string_value": m.cell},
            **_distribution_parameters(m),
        },
    }


def _distribution_parameters(manifest: Manifest) -> dict[str, dict[str, str]]:
    d = manifest.distribution
    if d is None:
        return {}
    return {
        "distribution": {"string_value": d.family},
        "quantiles": {"string_value": ",".join(d.levels)},
    }


@dataclass
class ModelInputs:
    """One request's inputs, checked and ready for the runner (features in data units)."""

    seqs: list[np.ndarray]
    states: list[State] | None
    """Explicit starting states per sequence, None when the request gave none."""


def _features(manifest: Manifest, t: InputTensor, max_steps: int, max_batch: int) -> np.ndarray:
    spec = manifest.input
    assert isinstance(spec, FeaturesInput)
    if t.datatype != "FP32":
        raise InvalidInput(
            f"inference input '{INPUT}' data-type is '{t.datatype}', but model "
            f"'{manifest.name}' expects 'FP32'"
        )
    if len(t.shape) != 3 or t.shape[2] != spec.size:
        raise InvalidInput(
            f"unexpected shape for input '{INPUT}' for model '{manifest.name}'. "
            f"Expected [-1,-1,{spec.size}], got {list(t.shape)}"
        )
    batch, steps, _ = t.shape
    _check_sizes(batch, steps, max_steps, max_batch)
    return t.array.astype(np.float32, copy=False)  # data units: the runner normalises


def _check_sizes(batch: int, steps: int, max_steps: int, max_batch: int) -> None:
    if batch < 1 or steps < 1:
        raise InvalidInput(f"'{INPUT}' needs at least one sequence of at least one step")
    if batch > max_batch:
        raise InvalidInput(f"batch of {batch} sequences exceeds the limit of {max_batch}")
    if steps > max_steps:
        raise InvalidInput(f"{steps} steps exceed the limit of {max_steps}")


def _text(manifest: Manifest, t: InputTensor, max_steps: int, max_batch: int) -> np.ndarray:
    if t.datatype != "BYTES":
        raise InvalidInput(
            f"inference input '{INPUT}' data-type is '{t.datatype}', but model "
            f"'{manifest.name}' expects 'BYTES'"
        )
    if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
        raise InvalidInput(
            f"unexpected shape for input '{INPUT}' for model '{manifest.name}'. "
            f"Expected [-1], got {list(t.shape)}"
        )
    items = list(t.array.reshape(-1))
    _check_sizes(len(items), 1, max_steps, max_batch)
    texts: list[str] = []
    for i, raw in enumerate(items):
        try:
            texts.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"'{INPUT}'[{i}] is not valid UTF-8") from exc
    ids = [encode_text(manifest, s, max_steps, f"'{INPUT}'[{i}]") for i, s in enumerate(texts)]
    if len({len(s) for s in ids}) != 1:
        raise InvalidInput(f"the strings of one '{INPUT}' batch must all have the same length")
    return np.stack(ids)


def _states(model: LoadedModel, given: dict[str, InputTensor], batch: int) -> list[State] | None:
    if not given:
        return None
    zero = model.zero_state()
    stacked: dict[str, np.ndarray] = {}
    for spec in model.manifest.state:
        t = given.get(state_tensor_name(spec.name))
        if t is None:
            stacked[spec.name] = np.broadcast_to(zero[spec.name], (batch, *spec.shape))
            continue
        want = (batch, *spec.shape)
        if t.datatype != "FP32":
            raise InvalidInput(f"inference input '{t.name}' data-type must be 'FP32'")
        if t.shape != want:
            raise InvalidInput(
                f"unexpected shape for input '{t.name}' for model '{model.name}'. "
                f"Expected {list(want)}, got {list(t.shape)}"
            )
        stacked[spec.name] = t.array.astype(np.float32)
    return [{k: np.array(v[i], dtype=np.float32) for k, v in stacked.items()} for i in range(batch)]


def model_inputs(
    model: LoadedModel, inputs: list[InputTensor], max_steps: int, max_batch: int
) -> ModelInputs:
    """Check the request's tensors against the model and gather them for the runner."""
    m = model.manifest
    allowed = {INPUT, *(state_tensor_name(s.name) for s in m.state)}
    by_name: dict[str, InputTensor] = {}
    for t in inputs:
        if t.name not in allowed:
            raise InvalidInput(
                f"unexpected inference input '{t.name}' for model '{m.name}'; "
                f"it takes {sorted(allowed)}"
            )
        by_name[t.name] = t
    main = by_name.pop(INPUT, None)
    if main is None:
        raise InvalidInput(f"inference request for model '{m.name}' must have input '{INPUT}'")
    if isinstance(m.input, TextInput):
        x = _text(m, main, max_steps, max_batch)
    else:
        x = _features(m, main, max_steps, max_batch)
    seqs = list(x)
    return ModelInputs(seqs, _states(model, by_name, len(seqs)))


def response_bytes(manifest: Manifest, inputs: ModelInputs, request: InferRequest) -> int:
    """Upper bound of the response body for ``inputs``, before the model runs: the
    outputs the request asks for (all when it names none), each binary or JSON as asked.
    A name the model does not give counts nothing (it is refused once the outputs exist)."""
    steps = sum(len(s) for s in inputs.seqs)
    batch = len(inputs.seqs)
    values = {OUTPUT: steps * output_values_per_step(manifest)}
    for name, dims in _distribution_dims(manifest):
        values[name] = steps * math.prod(dims)
    for name, n in state_values_per_sequence(manifest).items():
        values[state_tensor_name(name)] = batch * n
    default_binary = request.binary_output_default
    if request.outputs is None:
        wanted = [(name, default_binary) for name in values]
    else:
        wanted = [
            (o.name, default_binary if o.binary is None else o.binary) for o in request.outputs
        ]
    header = 256 + len(manifest.name) + 6 * len(request.id or "")
    return header + sum(
        128 + fp32_tensor_bytes(values[name], binary) for name, binary in wanted if name in values
    )


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays)``; one array becomes a view with a batch axis (the common
    request of one sequence, where ``np.stack`` costs more than the rest of the tensor)."""
    return arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)


def model_outputs(manifest: Manifest, results: list[SeqResult]) -> dict[str, np.ndarray]:
    """Per-sequence runner results → ``OUTPUT`` ``[batch, time, O]`` (and a probabilistic
    model's ``SCALE`` and ``QUANTILES``)."""
    if isinstance(manifest.output, RegressionOutput):
        wire = _stack([in_data_units(manifest, r.outputs, r.wire) for r in results])
        wire = wire.astype(np.float32, copy=False)
        d = manifest.distribution
        if d is None:
            return {OUTPUT: wire}
        mean, scale = distribution.split(wire)
        return {
            OUTPUT: np.ascontiguousarray(mean),
            SCALE: np.ascontiguousarray(scale),
            QUANTILES: distribution.quantiles(d, wire),
        }
    y = _stack([r.outputs for r in results]).astype(np.float32, copy=False)
    return {OUTPUT: softmax(y).astype(np.float32)}


def state_outputs(manifest: Manifest, states: list[State]) -> dict[str, np.ndarray]:
    return {
        state_tensor_name(s.name): _stack([st[s.name] for st in states]).astype(
            np.float32, copy=False
        )
        for s in manifest.state
    }
