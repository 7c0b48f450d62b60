"""Importing a recurrent ONNX model: the graph is read (``graph``), stepping it one step
at a time while carrying the state is proven equal to one whole-sequence run on a random
probe (``verify``), and a manifest describes it (identity normalisation unless statistics
are given). The command line is ``service.onnx_import.cli``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx

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
)
from service.onnx_import.graph import (
    ImportProblem,
    cell_of,
    inspect,
    is_time_major,
    per_sequence,
    state_name,
)
from service.onnx_import.verify import (
    TOLERANCE,
    GraphPorts,
    StatePort,
    VerificationError,
    ort_session,
    random_states,
    run_graph,
    step_vs_whole,
)


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
    time_major = is_time_major(found.data_in, ns.time_major)
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
    except VerificationError as exc:
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
        per_seq = per_sequence(pair.input.shape, axis, pair.input.name)
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

    cell = cell_of(model, len(state_specs), ns.cell)
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
