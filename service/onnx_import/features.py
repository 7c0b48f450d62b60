"""What the importer is told, never guesses: feature names, units and normalisation (from
options or a small JSON file), and the feedback of ``generate`` (``--autoregressive``).

The JSON file (``--features FILE``) looks like::

    {"input":  {"names": ["temp", "pressure"], "units": ["degC", "hPa"],
                "mean": [10.2, 1013.0], "std": [7.1, 9.4]},
     "output": {"names": ["temp"], "units": ["degC"], "mean": [10.2], "std": [7.1]}}

Every key is optional; options given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.models.manifest import FeaturesInput, Feedback, RegressionOutput
from service.onnx_import.graph import ImportProblem

_KEYS = {"names", "units", "mean", "std"}


@dataclass(frozen=True)
class FeatureSpecs:
    input: FeaturesInput
    output: RegressionOutput
    feedback: Feedback
    decisions: list[str]


def _file(ns: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if not ns.features:
        return {}
    try:
        data = json.loads(Path(ns.features).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImportProblem(f"--features {ns.features}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or not set(data) <= {"input", "output"}:
        raise ImportProblem('--features: expected {"input": {...}, "output": {...}}')
    for side, spec in data.items():
        if not isinstance(spec, dict) or not set(spec) <= _KEYS:
            raise ImportProblem(f"--features: {side!r} takes only the keys {sorted(_KEYS)}")
    return data


def _list(
    text: str | None, from_file: object, size: int, what: str, kind: type
) -> tuple[list[Any] | None, str]:
    if text is not None:
        raw: list[Any] = [v.strip() for v in text.split(",")]
        source = "option"
    elif from_file is not None:
        if not isinstance(from_file, list):
            raise ImportProblem(f"--features: {what} must be a list")
        raw, source = list(from_file), "--features file"
    else:
        return None, "default"
    if len(raw) != size:
        raise ImportProblem(f"{what}: expected {size} values, got {len(raw)}")
    try:
        return [kind(v) for v in raw], source
    except (TypeError, ValueError) as exc:
        raise ImportProblem(f"{what}: {exc}") from exc


def _side(
    ns: argparse.Namespace, spec: dict[str, Any], side: str, size: int, default_names: list[str]
) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    notes: list[str] = []
    names, src = _list(getattr(ns, f"{side}_names"), spec.get("names"), size, f"{side} names", str)
    out["names"] = names or default_names
    notes.append(f"{side} names {out['names']} ({src})")
    units, src = _list(getattr(ns, f"{side}_units"), spec.get("units"), size, f"{side} units", str)
    out["units"] = units
    notes.append(f"{side} units {units} ({src})" if units else f"{side} units: not given")
    mean, msrc = _list(getattr(ns, f"{side}_mean"), spec.get("mean"), size, f"{side} mean", float)
    std, ssrc = _list(getattr(ns, f"{side}_std"), spec.get("std"), size, f"{side} std", float)
    out["mean"] = mean or [0.0] * size
    out["std"] = std or [1.0] * size
    if mean is None and std is None:
        notes.append(f"{side} normalisation: none (the graph sees data units)")
    else:
        notes.append(
            f"{side} normalisation: mean {out['mean']} ({msrc}), std {out['std']} ({ssrc})"
        )
    return out, notes


def _feedback(ns: argparse.Namespace, in_size: int, out_size: int) -> tuple[Feedback, str]:
    mapping: str | None = ns.autoregressive
    if mapping is None:
        return Feedback(autoregressive=False), (
            "generate: not autoregressive (pass --autoregressive to feed outputs back)"
        )
    if mapping == "identity":
        if in_size != out_size:
            raise ImportProblem(
                f"--autoregressive without a mapping needs as many outputs as inputs "
                f"({out_size} vs {in_size}); pass --autoregressive OUT0,OUT1,... "
                "(the output index fed back as each input feature)"
            )
        index = list(range(in_size))
    else:
        try:
            index = [int(i) for i in mapping.split(",")]
        except ValueError as exc:
            raise ImportProblem(f"--autoregressive {mapping!r}: expected output indices") from exc
        if len(index) != in_size or any(not 0 <= i < out_size for i in index):
            raise ImportProblem(
                f"--autoregressive: give one output index (0..{out_size - 1}) per input "
                f"feature ({in_size})"
            )
    pairs = ", ".join(f"output {o} -> input {i}" for i, o in enumerate(index))
    return Feedback(autoregressive=True, output_index=index), f"generate feeds back {pairs}"


def feature_specs(ns: argparse.Namespace, in_size: int, out_size: int) -> FeatureSpecs:
    """Input and output specs and feedback of a regression model, with the decisions."""
    spec = _file(ns)
    inp, in_notes = _side(
        ns, spec.get("input", {}), "input", in_size, [f"x{i}" for i in range(in_size)]
    )
    out, out_notes = _side(
        ns, spec.get("output", {}), "output", out_size, [f"y{i}" for i in range(out_size)]
    )
    feedback, fb_note = _feedback(ns, in_size, out_size)
    try:
        return FeatureSpecs(
            FeaturesInput(size=in_size, **inp),
            RegressionOutput(size=out_size, **out),
            feedback,
            [*in_notes, *out_notes, fb_note],
        )
    except ValueError as exc:
        raise ImportProblem(str(exc)) from exc
