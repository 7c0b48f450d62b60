"""The command line of ``lstm-serve train`` (dispatched by service.cli).

Run directly as ``python -m service.training.cli train RECIPE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from service.errors import ModelStoreError
from service.settings import Settings


def _default_store() -> Path:
    return Settings().model_store


def parse_value(current: object, text: str) -> object:
    """``text`` as the type of a recipe field's current value."""
    if isinstance(current, bool):
        if text.lower() not in {"true", "false", "1", "0"}:
            raise ValueError("expected true or false")
        return text.lower() in {"true", "1"}
    if isinstance(current, int) or current is None:
        return None if text.lower() == "none" else int(text)
    if isinstance(current, float):
        return float(text)
    return text


def train_main(args: list[str]) -> int:
    """``lstm-serve train RECIPE``: train, evaluate, export, verify and write a new version."""
    from service.onnx_import.verify import VerificationError
    from service.training.recipes import RECIPES
    from service.training.train import BaselineNotBeaten, run_recipe

    parser = argparse.ArgumentParser(
        prog="lstm-serve train",
        description="Train a bundled recipe deterministically and write the next model version.",
    )
    parser.add_argument("recipe", choices=sorted(RECIPES), help="which recipe to train")
    parser.add_argument(
        "--store", type=Path, default=None, help="model store (default: LSTM_SERVE_MODEL_STORE)"
    )
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--hidden", type=int, help="override the hidden size")
    parser.add_argument("--layers", type=int, help="override the number of layers")
    parser.add_argument("--seed", type=int, help="override the seed")
    parser.add_argument("--limit-rows", type=int, help="use only part of the data (quick runs)")
    parser.add_argument("--test-rows", type=int, help="held-out tail length (forecasters)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any recipe field (e.g. --set lr=0.001 --set highway=true)",
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="hold out the end of the training data instead of the tail (for choosing "
        "hyperparameters); implies --dry-run",
    )
    parser.add_argument(
        "--strict", action="store_true", help="refuse to write a model that loses to a baseline"
    )
    parser.add_argument("--dry-run", action="store_true", help="train and verify, write nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    ns = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    recipe = RECIPES[ns.recipe]
    overrides: dict[str, object] = {}
    for option, field_name in (
        ("epochs", "epochs"),
        ("hidden", "hidden"),
        ("layers", "layers"),
        ("seed", "seed"),
        ("limit_rows", "limit_rows"),
        ("test_rows", "test_rows"),
    ):
        value = getattr(ns, option)
        if value is not None:
            if field_name not in {f.name for f in dataclasses.fields(recipe)}:
                parser.error(f"--{option.replace('_', '-')} does not apply to {ns.recipe}")
            overrides[field_name] = value
    fields = {f.name for f in dataclasses.fields(recipe)}
    for item in ns.set:
        key, sep, text = item.partition("=")
        if not sep or key not in fields or key in {"name", "load", "description"}:
            parser.error(f"--set {item}: not a FIELD=VALUE of {ns.recipe}'s recipe")
        try:
            overrides[key] = parse_value(getattr(recipe, key), text)
        except ValueError as exc:
            parser.error(f"--set {item}: {exc}")
    if ns.validate:
        overrides["validate"] = True
    recipe = dataclasses.replace(recipe, **overrides)  # type: ignore[arg-type]
    if ns.threads is not None:
        import torch

        torch.set_num_threads(ns.threads)

    store = None if ns.dry_run or ns.validate else (ns.store or _default_store())
    try:
        result = run_recipe(recipe, store, strict=ns.strict, progress=not ns.quiet)
    except (BaselineNotBeaten, VerificationError, ModelStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    m = result.manifest
    print(f"{m.name}: trained in {result.train_seconds:.1f} s")
    for key, value in m.metrics.items():
        if "." not in key:
            print(f"  {key:24s} {value:.4f}")
    for feature in dict.fromkeys(k.partition(".")[2] for k in m.metrics if "." in k):
        cells = ", ".join(
            f"{k.partition('.')[0]} {v:.4f}"
            for k, v in m.metrics.items()
            if k.partition(".")[2] == feature
        )
        print(f"  {feature}: {cells}")
    print(
        f"  parity: onnxruntime vs torch {result.parity.torch_vs_onnx:.2e}, "
        f"step vs whole {result.parity.step_vs_whole:.2e}"
    )
    if result.evaluation.not_beaten:
        print(f"  WARNING: does not beat {', '.join(result.evaluation.not_beaten)}")
    print(f"  written to {result.path}" if result.path else "  (dry run: nothing written)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "train":
        print("usage: python -m service.training.cli train ...", file=sys.stderr)
        return 2
    return train_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
