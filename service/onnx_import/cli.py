"""``lstm-serve import FILE.onnx --name NAME``: make a recurrent ONNX model exported elsewhere
a stateful, streamable model in a model store. Needs onnx and onnxruntime (the ``import``
extra), not torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from service.errors import ModelStoreError
from service.models.manifest import is_valid_model_name
from service.models.store import next_version, write_version
from service.onnx_import.graph import ImportProblem
from service.onnx_import.importer import ImportResult, build

STORE_ENV = "LSTM_SERVE_MODEL_STORE"


def parser() -> argparse.ArgumentParser:
    """The command line of ``lstm-serve import``."""
    p = argparse.ArgumentParser(
        prog="lstm-serve import",
        description=(
            "Import an ONNX model with LSTM/GRU/RNN nodes as a stateful model: state inputs "
            "and outputs are paired by name (or --state), or exposed by rewriting the graph "
            "when it has none; the layout is found by running it; stepping is proven equal "
            "to the whole sequence before anything is written. Prints every decision."
        ),
    )
    p.add_argument("file", help="the .onnx file")
    p.add_argument("--name", required=True, help="model name in the store (lowercase slug)")
    p.add_argument(
        "--store", type=Path, help=f"model store to write into (default: ${STORE_ENV}; required)"
    )
    p.add_argument("--version", type=int, help="version number (default: the next free one)")
    p.add_argument("--dry-run", action="store_true", help="print the summary, write nothing")
    p.add_argument("--input", help="data input tensor (default: the one input left unpaired)")
    p.add_argument("--output", help="data output tensor (default: the one output left unpaired)")
    p.add_argument(
        "--state",
        action="append",
        metavar="IN=OUT",
        help="pair a state input with its output (repeat; default: by naming pattern)",
    )
    p.add_argument("--batch-axis", type=int, help="batch axis of paired state tensors")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn"], help="default: from the graph's ops")
    p.add_argument("--description")
    p.add_argument(
        "--features", help="JSON file with input/output names, units, mean and std (see docs)"
    )
    p.add_argument("--input-names", help="comma-separated feature names")
    p.add_argument("--input-units", help="comma-separated units of the features")
    p.add_argument("--input-mean", help="comma-separated; the model sees (x - mean) / std")
    p.add_argument("--input-std")
    p.add_argument("--output-names", help="comma-separated output names")
    p.add_argument("--output-units", help="comma-separated units of the outputs")
    p.add_argument("--output-mean", help="comma-separated; outputs are y * std + mean")
    p.add_argument("--output-std")
    p.add_argument(
        "--autoregressive",
        nargs="?",
        const="identity",
        metavar="OUT0,OUT1,...",
        help="generate feeds outputs back as inputs: the output index for each input feature "
        "(alone: output i -> input i, which needs as many outputs as inputs). Off unless given",
    )
    p.add_argument("--vocab", help="language models: the vocabulary as one string of characters")
    p.add_argument("--vocab-file", help="language models: a JSON list of token strings")
    p.add_argument("--unknown", help="language models: the vocabulary entry for unknown input")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe input")
    return p


def _store(ns: argparse.Namespace) -> Path | None:
    if ns.store is not None:
        return Path(ns.store)
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else None


def summary(result: ImportResult, target: Path | None, written: bool) -> list[str]:
    """The printed summary: every decision, the proofs, and how a server picks it up."""
    m = result.manifest
    kind = "stateful" if m.stateful else "whole sequences only"
    head = f"{m.name} v{m.version} ({m.cell}, {m.task}, {kind})"
    lines = [("imported " if written else "would import ") + head]
    lines += [f"  - {d}" for d in result.decisions]
    if target is None:
        lines.append(f"  dry run: no store given (--store or ${STORE_ENV})")
        return lines
    lines.append(f"  {'written to' if written else 'dry run: would write'} {target}")
    lines.append(
        f"  a server already serving {target.parent.parent} loads it without a restart on "
        "SIGHUP (kill -HUP <server pid>), or by itself when LSTM_SERVE_RELOAD_INTERVAL_SECONDS "
        "is set; a server started later loads it at start-up"
    )
    return lines


def main(args: list[str]) -> int:
    """``lstm-serve import ...``; the exit status."""
    ns = parser().parse_args(args)
    if not is_valid_model_name(ns.name):
        print(f"error: {ns.name!r} is not a valid model name (lowercase slug)", file=sys.stderr)
        return 2
    store = _store(ns)
    if store is None and not ns.dry_run:
        print(
            f"error: no model store: pass --store DIR or set {STORE_ENV} to the store a "
            "server serves (or --dry-run to only check the model)",
            file=sys.stderr,
        )
        return 2
    try:
        onnx_bytes = Path(ns.file).read_bytes()
    except OSError as exc:
        print(f"error: {ns.file}: {exc.strerror}", file=sys.stderr)
        return 1
    version = ns.version or (next_version(store, ns.name) if store is not None else 1)
    try:
        result = build(onnx_bytes, ns, version)
        target = store / ns.name / str(version) if store is not None else None
        if not ns.dry_run and store is not None:
            target = write_version(store, result.manifest, result.onnx_bytes)
    except (ImportProblem, ModelStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary(result, target, written=not ns.dry_run)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
