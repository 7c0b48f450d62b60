"""``lstm-serve import``: adopt a recurrent ONNX model exported elsewhere into the store.

The importer inspects the graph, pairs each state input with its state output (by common
naming patterns or ``--state IN=OUT``), finds the batch axis of every state tensor, proves
on a random probe that stepping one step at a time while carrying the state equals one
whole-sequence run, and writes a manifest (identity normalisation unless statistics are given).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from service.errors import ModelStoreError
from service.models.manifest import (
    FeaturesInput,
    Feedback,
    GraphSpec,
    LogitsOutput,
    Manifest,
    Parity,
    RegressionOutput,
    StateTensor,
    TextInput,
    is_valid_model_name,
)
from service.models.store import next_version, write_version
from service.training.export import (
    TOLERANCE,
    ExportVerificationError,
    GraphPorts,
    StatePort,
    ort_session,
    random_states,
    run_graph,
    step_vs_whole,
)

Dim = int | str | None


class ImportProblem(Exception):
    """The graph cannot be imported as given; the message says what option would help."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class StatePair:
    input: TensorInfo
    output: TensorInfo


# (input fragment, output fragment): an input whose name has the first where the output's
# name has the second is a state pair. Tried at the end of the name, then at the start, then
# anywhere; the fragment is never the whole name, so the data pair x -> y is not mistaken.
_PAIR_PATTERNS: tuple[tuple[str, str], ...] = (
    ("_in", "_out"),
    ("in_", "out_"),
    ("_input", "_output"),
    ("input_", "output_"),
    (".in", ".out"),
    ("_0", "_n"),
    ("0", "n"),
    ("_init", "_final"),
    ("init_", "final_"),
    ("initial_", "final_"),
    ("_prev", "_next"),
    ("prev_", "next_"),
    ("_prev", ""),
    ("_in", ""),
    ("_t", "_t1"),
    ("x", "y"),
)

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}
_TIME_WORDS = ("time", "seq", "len", "step")


def _info(arg: ort.NodeArg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorInfo(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def _candidates(name: str) -> list[str]:
    out: list[str] = []
    for a, b in _PAIR_PATTERNS:
        if a == name or a not in name:
            continue
        if name.endswith(a):
            out.append(name[: -len(a)] + b)
        if name.startswith(a):
            out.append(b + name[len(a) :])
        idx = name.rfind(a)
        out.append(name[:idx] + b + name[idx + len(a) :])
    return [c for c in out if c and c != name]


def pair_states(
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    explicit: Sequence[tuple[str, str]] = (),
) -> list[StatePair]:
    """State pairs: the explicit ``(input, output)`` names, else found by naming pattern.

    Only float tensors of equal rank are paired.
    """
    by_in = {t.name: t for t in inputs}
    by_out = {t.name: t for t in outputs}
    pairs: list[StatePair] = []
    if explicit:
        for i, o in explicit:
            if i not in by_in:
                raise ImportProblem(f"--state: graph has no input {i!r} (inputs: {list(by_in)})")
            if o not in by_out:
                raise ImportProblem(f"--state: graph has no output {o!r} (outputs: {list(by_out)})")
            pairs.append(StatePair(by_in[i], by_out[o]))
        return pairs
    taken: set[str] = set()
    for tin in inputs:
        if tin.dtype != "float32":
            continue
        for cand in _candidates(tin.name):
            tout = by_out.get(cand)
            if tout is None or cand in taken or tout.dtype != "float32":
                continue
            if len(tout.shape) != len(tin.shape):
                continue
            pairs.append(StatePair(tin, tout))
            taken.add(cand)
            break
    return pairs


def state_name(tensor_name: str, index: int, count: int) -> str:
    """``c`` for an LSTM cell state, ``h`` for a hidden state (by name, else by order)."""
    lowered = tensor_name.lower()
    tokens = set(re.split(r"[^a-z]+", lowered))
    if count == 1:
        return "h"
    if "cell" in lowered or "c" in tokens or re.search(r"(^|[^a-z])c[0-9xn]?($|[^a-z])", lowered):
        return "c"
    if "hidden" in lowered or "h" in tokens or re.search(r"(^|[^a-z])h[0-9xn]?($|[^a-z])", lowered):
        return "h"
    return "h" if index == 0 else "c"


def batch_axis_of(shape: tuple[Dim, ...], explicit: int | None) -> int:
    if explicit is not None:
        if not 0 <= explicit < len(shape):
            raise ImportProblem(f"--batch-axis {explicit} is outside a rank-{len(shape)} state")
        return explicit
    dynamic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if len(dynamic) != 1:
        raise ImportProblem(
            f"cannot tell the batch axis of a state shaped {list(shape)}; pass --batch-axis"
        )
    return dynamic[0]


def _per_sequence(shape: tuple[Dim, ...], axis: int, name: str) -> list[int]:
    rest = [d for i, d in enumerate(shape) if i != axis]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ImportProblem(f"state {name!r} has a non-fixed dimension besides batch: {shape}")
    return [int(d) for d in rest if isinstance(d, int)]


def _floats(text: str | None, size: int, what: str, default: float) -> list[float]:
    if text is None:
        return [default] * size
    values = [float(v) for v in text.split(",")]
    if len(values) != size:
        raise ImportProblem(f"{what}: expected {size} values, got {len(values)}")
    return values


def _names(text: str | None, size: int, prefix: str) -> list[str]:
    if text is None:
        return [f"{prefix}{i}" for i in range(size)]
    names = [n.strip() for n in text.split(",")]
    if len(names) != size:
        raise ImportProblem(f"expected {size} names, got {len(names)}")
    return names


def _vocab(ns: argparse.Namespace) -> list[str]:
    if ns.vocab_file:
        data = json.loads(Path(ns.vocab_file).read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise ImportProblem("--vocab-file must hold a JSON list of strings")
        return list(data)
    if ns.vocab:
        return list(ns.vocab)
    raise ImportProblem("a language model (int64 input) needs --vocab or --vocab-file")


def _cell(model: onnx.ModelProto, states: int, explicit: str | None) -> str:
    if explicit:
        return explicit
    ops = {node.op_type for node in model.graph.node}
    if "LSTM" in ops:
        return "lstm"
    if "GRU" in ops:
        return "gru"
    return "lstm" if states == 2 else "gru"


@dataclass(frozen=True)
class Inspection:
    data_in: TensorInfo
    data_out: TensorInfo
    pairs: list[StatePair]
    batch_axes: list[int]


def inspect(
    session: ort.InferenceSession,
    data_input: str | None,
    data_output: str | None,
    explicit_states: Sequence[tuple[str, str]],
    batch_axis: int | None,
) -> Inspection:
    """Find the data tensors and state pairs of a recurrent graph."""
    inputs = [_info(a) for a in session.get_inputs()]
    outputs = [_info(a) for a in session.get_outputs()]
    skip_in = {data_input} if data_input else set()
    skip_out = {data_output} if data_output else set()
    pairs = pair_states(
        [t for t in inputs if t.name not in skip_in],
        [t for t in outputs if t.name not in skip_out],
        explicit_states,
    )
    if not pairs:
        raise ImportProblem(
            "found no state input/output pair by name; pass --state IN=OUT for each "
            f"(inputs: {[t.name for t in inputs]}, outputs: {[t.name for t in outputs]})"
        )
    paired_in = {p.input.name for p in pairs}
    paired_out = {p.output.name for p in pairs}
    rest_in = [t for t in inputs if t.name not in paired_in]
    rest_out = [t for t in outputs if t.name not in paired_out]
    data_in = _pick(rest_in, data_input, "input")
    data_out = _pick(rest_out, data_output, "output")
    axes = [batch_axis_of(p.input.shape, batch_axis) for p in pairs]
    return Inspection(data_in, data_out, pairs, axes)


def _pick(candidates: list[TensorInfo], wanted: str | None, kind: str) -> TensorInfo:
    if wanted is not None:
        for t in candidates:
            if t.name == wanted:
                return t
        raise ImportProblem(f"--{kind} {wanted!r} is not a graph {kind} that is left unpaired")
    if len(candidates) != 1:
        raise ImportProblem(
            f"expected one data {kind} besides the state tensors, found "
            f"{[t.name for t in candidates]}; pass --{kind}"
        )
    return candidates[0]


def _is_time_major(data_in: TensorInfo, flag: bool) -> bool:
    if flag:
        return True
    first = data_in.shape[0] if data_in.shape else None
    return isinstance(first, str) and any(w in first.lower() for w in _TIME_WORDS)


def build_manifest(
    onnx_bytes: bytes,
    ns: argparse.Namespace,
    version: int,
) -> tuple[Manifest, float]:
    """Inspect, prove step-vs-whole and describe the graph; returns the manifest and figure."""
    try:
        model = onnx.load_from_string(onnx_bytes)
        session = ort_session(onnx_bytes)
    except Exception as exc:
        raise ImportProblem(f"{ns.file}: not a loadable ONNX model: {exc}") from exc
    explicit = [tuple(s.split("=", 1)) for s in ns.state or []]
    if any(len(p) != 2 for p in explicit):
        raise ImportProblem("--state takes INPUT=OUTPUT")
    found = inspect(
        session,
        ns.input,
        ns.output,
        [(p[0], p[1]) for p in explicit],
        ns.batch_axis,
    )
    text = found.data_in.dtype == "int64"
    if not text and found.data_in.dtype != "float32":
        raise ImportProblem(f"data input {found.data_in.name!r} is {found.data_in.dtype}")
    time_major = _is_time_major(found.data_in, ns.time_major)
    time_axis = 0 if time_major else 1
    rank = len(found.data_in.shape)
    if rank != (2 if text else 3):
        raise ImportProblem(
            f"data input {found.data_in.name!r} has rank {rank}; expected "
            f"{'[batch, time] token ids' if text else '[batch, time, features]'}"
        )

    ports = GraphPorts(
        input=found.data_in.name,
        output=found.data_out.name,
        states=tuple(
            StatePort(
                p.input.name,
                p.output.name,
                tuple(1 if i == axis else int(d or 1) for i, d in enumerate(p.input.shape)),
                axis,
            )
            for p, axis in zip(found.pairs, found.batch_axes, strict=True)
        ),
        time_axis=time_axis,
    )
    rng = np.random.default_rng(ns.seed)
    batch, length = 3, 9
    shape = [batch, length] if not time_major else [length, batch]
    vocab: list[str] = []
    if text:
        vocab = _vocab(ns)
        probe: np.ndarray = rng.integers(0, len(vocab), size=shape, dtype=np.int64)
        in_size = 1
    else:
        in_size_dim = found.data_in.shape[2]
        if not isinstance(in_size_dim, int):
            raise ImportProblem(f"data input {found.data_in.name!r} has no fixed feature size")
        in_size = in_size_dim
        probe = rng.standard_normal([*shape, in_size]).astype(np.float32)
    states = random_states(ports, batch, rng)
    try:
        whole_y, _ = run_graph(session, ports, probe, states)
        figure = step_vs_whole(session, ports, probe, states)
    except ExportVerificationError as exc:
        raise ImportProblem(str(exc)) from exc
    except Exception as exc:
        raise ImportProblem(f"onnxruntime cannot run the probe input: {exc}") from exc
    if not figure <= TOLERANCE:
        raise ImportProblem(
            f"stepping with carried state differs from a whole run by {figure:.3g} "
            f"(> {TOLERANCE:g}): not a causal recurrent model with these state pairs"
        )
    out_size = int(whole_y.shape[-1])

    state_specs = []
    for i, (pair, axis) in enumerate(zip(found.pairs, found.batch_axes, strict=True)):
        per_seq = _per_sequence(pair.input.shape, axis, pair.input.name)
        state_specs.append(
            StateTensor(
                name=state_name(pair.input.name, i, len(found.pairs)),
                input=pair.input.name,
                output=pair.output.name,
                shape=per_seq,
                batch_axis=axis,
            )
        )
    if len({s.name for s in state_specs}) != len(state_specs):
        state_specs = [
            s.model_copy(update={"name": n})
            for s, n in zip(state_specs, ["h", "c", *(f"s{i}" for i in range(2, 99))], strict=False)
        ]
    main_shape = state_specs[0].shape
    layers = main_shape[0] if len(main_shape) >= 2 else 1
    hidden = main_shape[-1]

    cell = _cell(model, len(state_specs), ns.cell)
    common: dict[str, Any] = {
        "name": ns.name,
        "version": version,
        "description": ns.description or f"Imported from {Path(ns.file).name}",
        "cell": cell,
        "layers": layers,
        "hidden_size": hidden,
        "sha256": "0" * 64,
        "state": state_specs,
        "parity": Parity(torch_vs_onnx=None, step_vs_whole=figure),
        "libraries": {
            "onnx": importlib.metadata.version("onnx"),
            "onnxruntime": importlib.metadata.version("onnxruntime"),
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if text:
        if out_size != len(vocab):
            raise ImportProblem(f"logits size {out_size} differs from the vocab size {len(vocab)}")
        unknown = vocab.index(ns.unknown) if ns.unknown is not None else None
        manifest = Manifest(
            task="language_model",
            graph=GraphSpec(
                input=ports.input, output=ports.output, input_dtype="int64", time_major=time_major
            ),
            input=TextInput(vocab_size=len(vocab), vocab=vocab, unknown_id=unknown),
            output=LogitsOutput(size=out_size),
            feedback=Feedback(autoregressive=True),
            **common,
        )
        return manifest, figure
    if ns.output_index is not None:
        index = [int(i) for i in ns.output_index.split(",")]
    else:
        index = list(range(in_size)) if out_size == in_size else []
    autoregressive = bool(index) and not ns.no_feedback
    in_names = _names(ns.input_names, in_size, "x")
    same_names = ns.output_names is None and out_size == in_size
    out_names = in_names if same_names else _names(ns.output_names, out_size, "y")
    manifest = Manifest(
        task="regression",
        graph=GraphSpec(
            input=ports.input, output=ports.output, input_dtype="float32", time_major=time_major
        ),
        input=FeaturesInput(
            size=in_size,
            names=in_names,
            mean=_floats(ns.input_mean, in_size, "--input-mean", 0.0),
            std=_floats(ns.input_std, in_size, "--input-std", 1.0),
        ),
        output=RegressionOutput(
            size=out_size,
            names=out_names,
            mean=_floats(ns.output_mean, out_size, "--output-mean", 0.0),
            std=_floats(ns.output_std, out_size, "--output-std", 1.0),
        ),
        feedback=Feedback(
            autoregressive=autoregressive, output_index=index if autoregressive else []
        ),
        **common,
    )
    return manifest, figure


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lstm-serve import",
        description="Import an LSTM/GRU ONNX model with explicit state inputs and outputs.",
    )
    p.add_argument("file", help="the .onnx file")
    p.add_argument("--name", required=True, help="model name in the store (lowercase slug)")
    p.add_argument("--store", type=Path, help="model store (default: LSTM_SERVE_MODEL_STORE)")
    p.add_argument("--version", type=int, help="version number (default: the next free one)")
    p.add_argument("--input", help="data input tensor (default: the one input left unpaired)")
    p.add_argument("--output", help="data output tensor (default: the one output left unpaired)")
    p.add_argument(
        "--state",
        action="append",
        metavar="IN=OUT",
        help="pair a state input with its output (repeat; default: by naming pattern)",
    )
    p.add_argument("--batch-axis", type=int, help="batch axis of the state tensors")
    p.add_argument("--time-major", action="store_true", help="data tensors are [time, batch, ...]")
    p.add_argument("--cell", choices=["lstm", "gru"], help="default: from the graph's ops")
    p.add_argument("--description")
    p.add_argument("--input-names", help="comma-separated feature names")
    p.add_argument("--output-names", help="comma-separated output names")
    p.add_argument("--input-mean", help="comma-separated; the model sees (x - mean) / std")
    p.add_argument("--input-std")
    p.add_argument("--output-mean", help="comma-separated; outputs are y * std + mean")
    p.add_argument("--output-std")
    p.add_argument("--output-index", help="feedback: output index feeding each input feature")
    p.add_argument("--no-feedback", action="store_true", help="not autoregressive")
    p.add_argument("--vocab", help="language models: the vocabulary as one string of characters")
    p.add_argument("--vocab-file", help="language models: a JSON list of token strings")
    p.add_argument("--unknown", help="language models: the vocabulary entry for unknown input")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe input")
    return p


def main(args: list[str]) -> int:
    ns = parser().parse_args(args)
    if not is_valid_model_name(ns.name):
        print(f"error: {ns.name!r} is not a valid model name (lowercase slug)", file=sys.stderr)
        return 2
    if ns.store is None:
        from service.settings import Settings

        ns.store = Settings().model_store
    try:
        onnx_bytes = Path(ns.file).read_bytes()
    except OSError as exc:
        print(f"error: {ns.file}: {exc.strerror}", file=sys.stderr)
        return 1
    version = ns.version or next_version(ns.store, ns.name)
    try:
        manifest, figure = build_manifest(onnx_bytes, ns, version)
        path = write_version(ns.store, manifest, onnx_bytes)
    except (ImportProblem, ModelStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    states = ", ".join(f"{s.name}: {s.input}->{s.output} {s.shape}" for s in manifest.state)
    print(f"imported {manifest.name} v{manifest.version} ({manifest.cell}, {manifest.task})")
    print(f"  data: {manifest.graph.input} -> {manifest.graph.output}; states: {states}")
    print(f"  step vs whole: {figure:.2e}")
    print(f"  written to {path}")
    return 0
