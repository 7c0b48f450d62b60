"""``lstm-serve``: serve, list models, train, import, and client commands."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, with any ``extra`` fields the record carries."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _serve(args: argparse.Namespace) -> int:
    from service.http.app import create_app
    from service.http.server import serve
    from service.settings import Settings

    setup_logging(args.log_level)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: print it plainly and stop
        print(f"lstm-serve: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    problem = check_model_store(settings.model_store)
    if problem is not None:
        print(f"lstm-serve: {problem}", file=sys.stderr)
        return 2
    serve(create_app(settings), args.host, args.port, args.graceful_timeout)
    return 0


def check_model_store(root: Path) -> str | None:
    """Why the server cannot start on ``root`` (missing, not a folder), or None.

    An existing but empty store is allowed (models can be added and reloaded with SIGHUP),
    with a warning, since the server stays not-ready until a version is there.
    """
    from service.settings import DEFAULT_MODEL_STORE

    hint = (
        " (the default store is the source tree's model_store/, which a non-editable install"
        " does not include)"
        if root == DEFAULT_MODEL_STORE
        else ""
    )
    if not root.exists():
        return (
            f"model store {root} does not exist{hint}; "
            "set LSTM_SERVE_MODEL_STORE to a directory of <name>/<version>/ models"
        )
    if not root.is_dir():
        return f"model store {root} is not a directory; set LSTM_SERVE_MODEL_STORE"
    if not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        logging.getLogger("service").warning(
            "model store %s is empty: no model is served and /readyz answers 503 until a "
            "version is added and the store reloaded (SIGHUP)",
            root,
            extra={"model_store": str(root)},
        )
    return None


def _models(args: argparse.Namespace) -> int:
    from service.models.store import scan
    from service.settings import Settings

    root = Settings().model_store
    result = scan(root)
    defaults: dict[str, int] = {}
    for v in result.versions:
        defaults[v.manifest.name] = max(v.manifest.version, defaults.get(v.manifest.name, 0))
    print(
        f"{'NAME':<20} {'VERSION':>7}  {'DEFAULT':<7}  {'CELL':<5} {'TASK':<15} "
        "HEADLINE METRIC (baselines)"
    )
    for v in result.versions:
        m = v.manifest
        default = "*" if defaults[m.name] == m.version else ""
        headline = m.headline_metric or ""
        value = m.metrics.get(headline)
        baselines = ", ".join(
            f"{k.removeprefix(headline + '_')} {val:.4g}"
            for k, val in sorted(m.metrics.items())
            if k.startswith(headline + "_") and "." not in k
        )
        shown = f"{headline} {value:.4g}" if value is not None else "-"
        if baselines:
            shown += f" ({baselines})"
        print(f"{m.name:<20} {m.version:>7}  {default:<7}  {m.cell:<5} {m.task:<15} {shown}")
    for err in result.errors:
        print(f"refused: {err}", file=sys.stderr)
    return 0 if result.versions else 1


_DELEGATED: dict[str, tuple[str, str]] = {
    "train": ("service.training.cli", "train_main"),
    "import": ("service.onnx_import.cli", "main"),
    "generate": ("service.client.cli", "generate_main"),
    "forecast": ("service.client.cli", "forecast_main"),
}
"""Subcommands implemented elsewhere, imported only when used (torch only for train)."""

_EXTRAS: dict[str, str] = {"train": "train", "import": "import"}
"""The optional extra each delegated subcommand needs beyond the runtime."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # onnxruntime's telemetry (on by default) writes an ANSI-coloured, non-JSON line to
    # stderr when HOME is not writable; it must be turned off before onnxruntime is
    # imported, here and in the model process (which inherits the environment).
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if argv and argv[0] in _DELEGATED:
        module, function = _DELEGATED[argv[0]]
        try:
            handler: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
            return handler(argv[1:])
        except ModuleNotFoundError as exc:
            extra = _EXTRAS.get(argv[0])
            if extra is None or (exc.name or "").split(".")[0] == "service":
                raise
            print(
                f"lstm-serve {argv[0]} needs the '{extra}' extra (missing module: {exc.name}).\n"
                f"Install it with: pip install 'lstm-serve[{extra}]'"
                f"  (in a checkout: pip install -e '.[{extra}]')",
                file=sys.stderr,
            )
            return 2

    parser = argparse.ArgumentParser(prog="lstm-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the model store over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--graceful-timeout", type=int, default=20)
    serve.set_defaults(func=_serve)
    models = sub.add_parser("models", help="list the model store's versions")
    models.set_defaults(func=_models)
    sub.add_parser("train", help="train a recipe and write a new version (needs the train extra)")
    sub.add_parser("import", help="import an LSTM/GRU ONNX model exported elsewhere")
    sub.add_parser("generate", help="stream text from a language model")
    sub.add_parser("forecast", help="forecast from a CSV file")
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
