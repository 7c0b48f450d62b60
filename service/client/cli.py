"""``lstm-serve generate`` and ``lstm-serve forecast``: command-line use of the client.

Both talk to a running server (``--url``, default ``$LSTM_SERVE_URL`` or
http://127.0.0.1:8000) and take the API key from ``--api-key`` or ``$LSTM_SERVE_API_KEY``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path
from typing import Any

from service.client import Client, ClientError
from service.client._wire import DEFAULT_URL


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name")
    parser.add_argument(
        "--url", default=os.environ.get("LSTM_SERVE_URL", DEFAULT_URL), help="server URL"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("LSTM_SERVE_API_KEY"), help="bearer API key"
    )
    parser.add_argument("--version", type=int, default=None, help="model version")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")


def _fail(prog: str, exc: ClientError) -> int:
    print(f"{prog}: {exc}", file=sys.stderr)
    return 1


def generate_main(argv: list[str]) -> int:
    """Stream characters from a language model, printing each as it arrives."""
    parser = argparse.ArgumentParser(
        prog="lstm-serve generate", description="Stream text from a language model."
    )
    _common(parser)
    parser.add_argument("--prime", required=True, help="text to start from")
    parser.add_argument("--steps", type=int, default=200, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--no-prime", action="store_true", help="print only the generated characters"
    )
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            stream = client.generate(
                args.model,
                args.prime,
                args.steps,
                stream=True,
                temperature=args.temperature,
                top_k=args.top_k,
                seed=args.seed,
                version=args.version,
            )
            if not args.no_prime:
                out.write(args.prime)
                out.flush()
            with stream:
                for output in stream:
                    if not isinstance(output, dict) or "token" not in output:
                        print(
                            f"\nlstm-serve generate: {args.model} is not a language model; "
                            "use forecast",
                            file=sys.stderr,
                        )
                        return 2
                    out.write(output["token"])
                    out.flush()
            out.write("\n")
            out.flush()
    except ClientError as exc:
        return _fail("lstm-serve generate", exc)
    except KeyboardInterrupt:
        return 130
    return 0


def _read_context(path: Path, names: list[str]) -> list[list[float]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [n for n in names if n not in header]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (has {header})")
        rows: list[list[float]] = []
        for line, row in enumerate(reader, start=2):
            try:
                values = [float(row[n]) for n in names]
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: not a number in {names}") from exc
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{path}:{line}: NaN or infinity in {names}")
            rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return rows


def forecast_main(argv: list[str]) -> int:
    """Read a CSV, roll the model out ``--horizon`` steps after it, print the forecast as CSV."""
    parser = argparse.ArgumentParser(
        prog="lstm-serve forecast",
        description="Forecast from the rows of a CSV file (columns named as the model's inputs).",
    )
    _common(parser)
    parser.add_argument("--csv", required=True, type=Path, help="CSV file with a header row")
    parser.add_argument("--horizon", type=int, required=True, help="steps to forecast")
    parser.add_argument(
        "--last", type=int, default=None, help="use only the last N rows as context"
    )
    args = parser.parse_args(argv)
    prog = "lstm-serve forecast"
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            info = client.model(args.model, args.version)
            if info["input"].get("kind") != "features":
                print(f"{prog}: {args.model} takes text; use generate", file=sys.stderr)
                return 2
            names: list[str] = info["input"]["names"]
            try:
                context = _read_context(args.csv, names)
            except (OSError, ValueError) as exc:
                print(f"{prog}: {exc}", file=sys.stderr)
                return 2
            if args.last is not None:
                context = context[-args.last :]
            outputs: list[Any] = client.generate(
                args.model, context, args.horizon, version=info["version"]
            )
    except ClientError as exc:
        return _fail(prog, exc)
    out_names: list[str] = info["output"].get("names") or [f"y{i}" for i in range(len(outputs[0]))]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["step", *out_names])
    for i, row in enumerate(outputs, start=1):
        writer.writerow([i, *(f"{v:.6g}" for v in row)])
    return 0
