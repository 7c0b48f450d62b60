"""``lstm-serve import FILE.onnx --name NAME``: adopt a recurrent ONNX model exported
elsewhere into the model store. Needs onnx and onnxruntime (the ``import`` extra), not torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.errors import ModelStoreError
from service.models.manifest import is_valid_model_name
from service.models.store import next_version, write_version
from service.onnx_import.graph import ImportProblem
from service.onnx_import.importer import build_manifest


def parser() -> argparse.ArgumentParser:
    """The command line of ``lstm-serve import``."""
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
    """``lstm-serve import ...``; the exit status."""
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
