"""Importing a recurrent ONNX model: find or expose its state, find its layout, prove it,
describe it.

1. State: input/output pairs found by name (or ``--state``) are used as they are. Without
   any, every LSTM/GRU/RNN node's state is exposed by graph surgery (``surgery``); a
   recurrence in ``Scan``/``Loop`` or unrolled into plain ops is refused.
2. Layout: time-major or batch-major, by probing the graph (``probe``).
3. Proof (``verify``, ``probe``): the rewritten graph from zero state equals the original,
   and stepping with carried state equals one whole run (both <= ``TOLERANCE``), unless the
   graph is bidirectional: then it is served for whole sequences only (``stateful: false``).
4. A manifest: names, units, normalisation and feedback only as given (``features``).

Nothing is written here; ``cli`` writes the result into a store. onnx and onnxruntime only.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from service.models.manifest import (
    Feedback,
    GraphSpec,
    ImportRecord,
    LogitsOutput,
    Manifest,
    Parity,
    StateTensor,
    TextInput,
)
from service.onnx_import.features import feature_specs
from service.onnx_import.graph import (
    ImportProblem,
    TensorInfo,
    cell_of,
    tensor_info,
)
from service.onnx_import.probe import detect_time_major, probe_data, rewritten_vs_original
from service.onnx_import.state import (
    StateGraph,
    describe,
    explicit_state,
    exposed_state,
    refuse_without_nodes,
)
from service.onnx_import.surgery import (
    recurrent_nodes,
)
from service.onnx_import.verify import (
    TOLERANCE,
    GraphPorts,
    StatePort,
    VerificationError,
    ort_session,
    random_states,
    step_vs_whole,
)


@dataclass
class ImportResult:
    manifest: Manifest
    onnx_bytes: bytes
    """The graph to store: the file as given, or its rewritten copy."""
    decisions: list[str] = field(default_factory=list)


def _vocab(ns: argparse.Namespace) -> list[str]:
    if ns.vocab_file:
        data = json.loads(Path(ns.vocab_file).read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise ImportProblem("--vocab-file must hold a JSON list of strings")
        return list(data)
    if ns.vocab:
        return list(ns.vocab)
    raise ImportProblem("a language model (int64 input) needs --vocab or --vocab-file")


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


def build(onnx_bytes: bytes, ns: argparse.Namespace, version: int) -> ImportResult:
    """Inspect, rewrite where needed, probe and prove the graph; the manifest to store."""
    try:
        model = onnx.load_from_string(onnx_bytes)
        original = ort_session(onnx_bytes)
    except Exception as exc:
        raise ImportProblem(f"{ns.file}: not a loadable ONNX model: {exc}") from exc
    notes: list[str] = []
    nodes = recurrent_nodes(model)
    notes += [f"recurrent node {describe(n)}" for n in nodes] or ["no LSTM/GRU/RNN node"]
    found = explicit_state(original, onnx_bytes, ns, notes)
    if found is None:
        refuse_without_nodes(model, original)
        found = exposed_state(model, notes)
    seq_inputs = sorted({n.sequence_lens for n in nodes if n.sequence_lens})
    if len(seq_inputs) > 1:
        raise ImportProblem(f"several sequence_lens graph inputs {seq_inputs}: not supported")
    seq_lens = seq_inputs[0] if seq_inputs else None
    if seq_lens:
        notes.append(f"sequence_lens: graph input {seq_lens!r}, filled by the service")
    session = found.session
    state_in = {s.input for s in found.states} | set(seq_inputs)
    state_out = {s.output for s in found.states}
    data_in = _pick(
        [tensor_info(a) for a in session.get_inputs() if a.name not in state_in], ns.input, "input"
    )
    data_out = _pick(
        [tensor_info(a) for a in session.get_outputs() if a.name not in state_out],
        ns.output,
        "output",
    )
    text = data_in.dtype == "int64"
    if not text and data_in.dtype != "float32":
        raise ImportProblem(f"data input {data_in.name!r} is {data_in.dtype}")
    if len(data_in.shape) != (2 if text else 3):
        raise ImportProblem(
            f"data input {data_in.name!r} has shape {list(data_in.shape)}; expected "
            f"{'[batch, time] token ids' if text else '[batch, time, features] (or time-major)'}"
        )
    vocab = _vocab(ns) if text else []
    features: int | None = None
    if not text:
        dim = data_in.shape[2]
        if not isinstance(dim, int):
            raise ImportProblem(f"data input {data_in.name!r} has no fixed feature size")
        features = dim
    ports = GraphPorts(
        input=data_in.name,
        output=data_out.name,
        states=tuple(
            StatePort(
                s.input,
                s.output,
                (*s.shape[: s.batch_axis], 1, *s.shape[s.batch_axis :]),
                s.batch_axis,
            )
            for s in found.states
        ),
        sequence_lens=seq_lens,
    )
    time_major = detect_time_major(session, ports, features, len(vocab))
    ports = GraphPorts(ports.input, ports.output, ports.states, 0 if time_major else 1, seq_lens)
    notes.append(
        f"data: input {data_in.name!r} -> output {data_out.name!r}, "
        f"{'time-major [time, batch, ...]' if time_major else 'batch-major [batch, time, ...]'}"
        " (found by probing)"
    )
    bidirectional = [n.label for n in nodes if n.direction == "bidirectional"]
    stateful = not bidirectional
    rng = np.random.default_rng(ns.seed)
    probe = probe_data(rng, [9, 3] if time_major else [3, 9], features, len(vocab))
    rewritten_diff: float | None = None
    try:
        if found.rewritten:
            out_name = data_out.name
            rewritten_diff = rewritten_vs_original(original, session, ports, out_name, probe)
            notes.append(
                f"proof: rewritten graph from zero state vs original: {rewritten_diff:.2e}"
            )
            if not rewritten_diff <= TOLERANCE:
                raise ImportProblem(
                    f"the rewritten graph from zero state differs from the original by "
                    f"{rewritten_diff:.3g} (> {TOLERANCE:g}): the original starts from a "
                    "non-zero initial state, and sessions start from zero"
                )
        figure: float | None = None
        if stateful:
            figure = step_vs_whole(session, ports, probe, random_states(ports, 3, rng))
            notes.append(f"proof: step by step vs whole sequence: {figure:.2e}")
            if not figure <= TOLERANCE:
                raise ImportProblem(
                    f"stepping with carried state differs from a whole run by {figure:.3g} "
                    f"(> {TOLERANCE:g}): not a causal recurrent model with these state pairs"
                )
        else:
            notes.append(
                f"not stateful: {', '.join(bidirectional)} is bidirectional (its backward "
                "direction needs the whole sequence): served for whole-sequence predict; "
                "sessions, streams and sequences are refused (model_not_stateful)"
            )
        whole = session.run([data_out.name], _feeds(ports, probe, found.states, 3))[0]
    except VerificationError as exc:
        raise ImportProblem(str(exc)) from exc
    except ImportProblem:
        raise
    except Exception as exc:
        raise ImportProblem(f"onnxruntime cannot run the probe input: {exc}") from exc
    out_size = int(np.asarray(whole).shape[-1])
    source = hashlib.sha256(onnx_bytes).hexdigest()
    manifest = _manifest(
        ns, version, model, source, found, ports, text, vocab, features, out_size, notes
    )
    if not stateful and manifest.feedback.autoregressive:
        raise ImportProblem(
            "generate rolls a model forward one step at a time, which a bidirectional graph "
            "cannot do: import it without --autoregressive (a language model cannot be one)"
        )
    manifest = manifest.model_copy(
        update={
            "parity": Parity(step_vs_whole=figure, rewritten_vs_original=rewritten_diff),
            "stateful": stateful,
            "graph": GraphSpec(
                input=data_in.name,
                output=data_out.name,
                input_dtype="int64" if text else "float32",
                time_major=time_major,
                sequence_lens=seq_lens,
            ),
        }
    )
    return ImportResult(Manifest.model_validate(manifest.model_dump()), found.onnx_bytes, notes)


def _feeds(
    ports: GraphPorts, data: np.ndarray, states: list[StateTensor], batch: int
) -> dict[str, np.ndarray]:
    feeds = {ports.input: data}
    for port in ports.states:
        shape = list(port.shape)
        shape[port.batch_axis] = batch
        feeds[port.input] = np.zeros(shape, dtype=np.float32)
    if ports.sequence_lens:
        feeds[ports.sequence_lens] = np.full(batch, data.shape[ports.time_axis], dtype=np.int32)
    return feeds


def _manifest(
    ns: argparse.Namespace,
    version: int,
    model: onnx.ModelProto,
    source: str,
    found: StateGraph,
    ports: GraphPorts,
    text: bool,
    vocab: list[str],
    features: int | None,
    out_size: int,
    notes: list[str],
) -> Manifest:
    nodes = recurrent_nodes(model)
    states = found.states
    if found.rewritten:
        layers, hidden = len(nodes), max(n.hidden_size for n in nodes)
    else:
        main_shape = states[0].shape
        layers = main_shape[0] if len(main_shape) >= 2 else 1
        hidden = main_shape[-1]
    ops = {n.op for n in nodes}
    cell = ns.cell or (
        "lstm" if "LSTM" in ops else "gru" if "GRU" in ops else "rnn" if ops else None
    )
    cell = cell or cell_of(model, len(states), None)
    notes.append(f"cell {cell}, {layers} layer(s), hidden size {hidden}")
    producer = f"{model.producer_name} {model.producer_version}".strip() or "unknown"
    common: dict[str, Any] = {
        "name": ns.name,
        "version": version,
        "description": ns.description or f"Imported from {Path(ns.file).name} ({producer})",
        "cell": cell,
        "layers": layers,
        "hidden_size": hidden,
        "sha256": "0" * 64,
        "state": states,
        "parity": Parity(step_vs_whole=0.0),
        "libraries": {
            "onnx": importlib.metadata.version("onnx"),
            "onnxruntime": importlib.metadata.version("onnxruntime"),
            "producer": producer,
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "graph": GraphSpec(input=ports.input, output=ports.output),
    }
    if text:
        if out_size != len(vocab):
            raise ImportProblem(f"logits size {out_size} differs from the vocab size {len(vocab)}")
        unknown = vocab.index(ns.unknown) if ns.unknown is not None else None
        notes.append(f"language model: vocabulary of {len(vocab)}; generate feeds back tokens")
        manifest = Manifest(
            task="language_model",
            input=TextInput(vocab_size=len(vocab), vocab=vocab, unknown_id=unknown),
            output=LogitsOutput(size=out_size),
            feedback=Feedback(autoregressive=True),
            **{
                **common,
                "graph": GraphSpec(input=ports.input, output=ports.output, input_dtype="int64"),
            },
        )
    else:
        assert features is not None
        specs = feature_specs(ns, features, out_size)
        notes.extend(specs.decisions)
        manifest = Manifest(
            task="regression",
            input=specs.input,
            output=specs.output,
            feedback=specs.feedback,
            **common,
        )
    return manifest.model_copy(
        update={
            "imported": ImportRecord(
                source_file=Path(ns.file).name,
                source_sha256=source,
                producer=producer,
                graph_rewritten=found.rewritten,
                decisions=notes,
            )
        }
    )
