"""The typed manifest of one model version: the only code that parses ``manifest.json``.

A model version lives in ``model_store/<name>/<version>/`` as ``model.onnx`` plus
``manifest.json``. The manifest says how to talk to the ONNX graph (tensor names,
layouts, state tensors), how to turn wire values into model values (normalisation,
vocabulary) and where the model came from (data provenance, metrics, parity).
"""

from __future__ import annotations

import itertools
import re
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_FILE = "manifest.json"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


_VERSION_RE = re.compile(r"[1-9][0-9]{0,8}")


def is_version_number(text: str) -> bool:
    """A version as text: ASCII digits, no leading zero (``str.isdigit`` accepts "¹")."""
    return _VERSION_RE.fullmatch(text) is not None


def is_valid_model_name(name: str) -> bool:
    """Model names are lowercase slugs, so they can never traverse paths."""
    return bool(_NAME_RE.match(name))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Scaled(_Strict):
    """A spec with per-feature ``mean`` and ``std``, kept as float32 arrays once loaded."""

    if TYPE_CHECKING:  # declared by each subclass, so the fields keep their order
        mean: list[float]
        std: list[float]

    @cached_property
    def mean_array(self) -> np.ndarray:
        return np.asarray(self.mean, dtype=np.float32)

    @cached_property
    def std_array(self) -> np.ndarray:
        return np.asarray(self.std, dtype=np.float32)


def _check_lengths(
    side: str,
    size: int,
    names: list[str],
    mean: list[float],
    std: list[float],
    units: list[str] | None,
) -> None:
    """Names, mean, std (and units, where given) of a features input or a regression
    output each have ``size`` entries."""
    if not (len(names) == len(mean) == len(std) == size):
        raise ValueError(f"{side} names, mean and std must each have `size` entries")
    if units is not None and len(units) != size:
        raise ValueError(f"{side} units must have `size` entries")


class FeaturesInput(_Scaled):
    """Numeric features, one vector of ``size`` floats per step.

    The wire carries values in the data's own units; the service applies
    ``(x - mean) / std`` before the model.
    """

    kind: Literal["features"] = "features"
    size: int = Field(ge=1)
    names: list[str]
    mean: list[float]
    std: list[float]
    units: list[str] | None = None
    """Each feature's unit (``degC``, ``hPa``), where known."""

    @model_validator(mode="after")
    def _lengths(self) -> FeaturesInput:
        _check_lengths("input", self.size, self.names, self.mean, self.std, self.units)
        if any(s <= 0 for s in self.std):
            raise ValueError("input std must be positive")
        return self


class TextInput(_Strict):
    """Characters mapped to token ids through ``vocab`` (the index is the id).

    Characters outside the vocabulary map to ``unknown_id`` when set, else are rejected.
    """

    kind: Literal["text"] = "text"
    vocab_size: int = Field(ge=2)
    vocab: list[str]
    unknown_id: int | None = None

    @model_validator(mode="after")
    def _vocab(self) -> TextInput:
        if len(self.vocab) != self.vocab_size:
            raise ValueError("vocab must have vocab_size entries")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab entries must be unique")
        if self.unknown_id is not None and not 0 <= self.unknown_id < self.vocab_size:
            raise ValueError("unknown_id out of range")
        return self

    @cached_property
    def index(self) -> dict[str, int]:
        """Character → token id, built once per loaded manifest."""
        return {ch: i for i, ch in enumerate(self.vocab)}


InputSpec = Annotated[FeaturesInput | TextInput, Field(discriminator="kind")]


class RegressionOutput(_Scaled):
    """Real values per step; the model emits ``(y - mean) / std``, the service undoes it."""

    kind: Literal["regression"] = "regression"
    size: int = Field(ge=1)
    names: list[str]
    mean: list[float]
    std: list[float]
    units: list[str] | None = None
    """Each output's unit, where known."""

    @model_validator(mode="after")
    def _lengths(self) -> RegressionOutput:
        _check_lengths("output", self.size, self.names, self.mean, self.std, self.units)
        return self


class LogitsOutput(_Strict):
    """Unnormalised next-token scores over the input vocabulary."""

    kind: Literal["logits"] = "logits"
    size: int = Field(ge=2)


OutputSpec = Annotated[RegressionOutput | LogitsOutput, Field(discriminator="kind")]


class StateTensor(_Strict):
    """One recurrent state tensor: fed as ``input``, read back as ``output``.

    ``shape`` is the per-sequence shape (the batch axis removed), e.g. ``[layers, hidden]``;
    ``batch_axis`` says where the batch axis sits in the ONNX tensor (1 for ONNX/PyTorch
    ``[layers, batch, hidden]``).
    """

    name: str = Field(pattern=r"^[a-z]$|^[a-z][a-z0-9_]*$")
    input: str
    output: str
    shape: list[int]
    batch_axis: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _axis(self) -> StateTensor:
        if self.batch_axis > len(self.shape):
            raise ValueError("batch_axis beyond the tensor's rank")
        if any(d < 1 for d in self.shape):
            raise ValueError("state shape entries must be positive")
        return self


class GraphSpec(_Strict):
    """Names and layout of the ONNX graph's data tensors."""

    input: str
    output: str
    input_dtype: Literal["float32", "int64"] = "float32"
    time_major: bool = False
    """True when the data tensors are ``[time, batch, ...]`` instead of ``[batch, time, ...]``."""
    sequence_lens: str | None = None
    """A graph input taking each sequence's length (int32 ``[batch]``); the service fills it."""


class Feedback(_Strict):
    """How ``generate`` rolls a model forward.

    ``autoregressive`` regression models feed output ``output_index[i]`` back as input
    feature ``i`` (in data units); text models feed the sampled token back.
    """

    autoregressive: bool
    output_index: list[int] = Field(default_factory=list)


class Distribution(_Strict):
    """A probabilistic forecaster's likelihood head: for each output feature the graph
    gives a location (the ``graph.output`` tensor, the mean) and a ``scale`` (the
    ``scale_output`` tensor, same shape, positive), both in normalised units like the
    output; the service multiplies the scale by ``output.std``. ``family`` says which
    distribution they parameterise (``gaussian``: the scale is the standard deviation).
    The service serves the ``quantiles`` levels (strictly increasing, in (0, 1)) with every
    output and draws sample paths from it in ``generate``.
    """

    family: Literal["gaussian"] = "gaussian"
    scale_output: str = Field(min_length=1)
    quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9], min_length=1)

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        if len(v) > 16:
            raise ValueError("at most 16 quantile levels")
        if any(not 0.0 < q < 1.0 for q in v) or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("quantile levels must be strictly increasing, each in (0, 1)")
        return v

    @cached_property
    def levels(self) -> tuple[str, ...]:
        """The levels as the wire names them (``"0.1"``, ``"0.5"``)."""
        return tuple(f"{q:g}" for q in self.quantiles)


class Provenance(_Strict):
    dataset: str
    package: str
    package_version: str
    source: str
    rows: int
    split: str


class Parity(_Strict):
    """Export verification figures (max absolute differences)."""

    torch_vs_onnx: float | None = None
    step_vs_whole: float | None
    """None only for a model that is not stateful (it cannot be stepped)."""
    rewritten_vs_original: float | None = None
    """For a graph whose state the importer exposed: the rewritten graph from zero state
    against the graph as exported."""


class ImportRecord(_Strict):
    """How ``lstm-serve import`` made this version from a file exported elsewhere."""

    source_file: str
    source_sha256: str
    producer: str
    graph_rewritten: bool
    decisions: list[str]
    """The import's summary: every decision it took, one line each."""


class Manifest(_Strict):
    """Everything the service knows about one model version."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    description: str = ""
    task: Literal["regression", "language_model"]
    cell: Literal["lstm", "gru", "rnn"]
    layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    onnx_file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    graph: GraphSpec
    input: InputSpec
    output: OutputSpec
    state: list[StateTensor] = Field(min_length=1)
    feedback: Feedback
    training: Provenance | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    """Held-out metrics of the model and its naive baselines (``rmse``, ``rmse_persistence``)."""
    headline_metric: str | None = None
    parity: Parity
    distribution: Distribution | None = None
    """Set for a probabilistic forecaster (a likelihood head); None for a point model."""
    stateful: bool = True
    """False for a graph that needs the whole sequence (a bidirectional one): served for
    predict only; sessions, streams and sequences are refused."""
    imported: ImportRecord | None = None
    libraries: dict[str, str] = Field(default_factory=dict)
    sample_file: str | None = None
    """A small JSON file next to the model with real held-out rows (``{"names", "times",
    "values"}``, in the data's units), written at training time for the console."""
    created_at: str

    @field_validator("onnx_file", "sample_file")
    @classmethod
    def _plain_file(cls, v: str | None) -> str | None:
        if v is not None and ("/" in v or "\\" in v or v.startswith(".")):
            raise ValueError("must be a plain file name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [s.name for s in self.state]
        if len(set(names)) != len(names):
            raise ValueError("state tensor names must be unique")
        if self.stateful and self.parity.step_vs_whole is None:
            raise ValueError("a stateful model needs its step_vs_whole figure")
        if self.task == "language_model":
            if not isinstance(self.input, TextInput) or not isinstance(self.output, LogitsOutput):
                raise ValueError("a language model takes text input and gives logits")
            if self.output.size != self.input.vocab_size:
                raise ValueError("logits size must equal vocab_size")
            if self.graph.input_dtype != "int64":
                raise ValueError("a language model's graph input is int64 token ids")
        else:
            if not isinstance(self.input, FeaturesInput) or not isinstance(
                self.output, RegressionOutput
            ):
                raise ValueError("a regression model takes features and gives regression output")
            if self.graph.input_dtype != "float32":
                raise ValueError("a regression model's graph input is float32")
            if self.feedback.autoregressive:
                idx = self.feedback.output_index
                if len(idx) != self.input.size or any(not 0 <= i < self.output.size for i in idx):
                    raise ValueError("feedback.output_index must map every input feature")
        if self.distribution is not None:
            if self.task != "regression":
                raise ValueError("only a regression model can have a distribution")
            taken = {self.graph.output, *(s.output for s in self.state)}
            if self.distribution.scale_output in taken:
                raise ValueError("distribution.scale_output must be a graph output of its own")
        return self

    def _distribution_doc(self) -> dict[str, object]:
        d = self.distribution
        assert d is not None
        return {"family": d.family, "quantiles": d.quantiles}

    @property
    def output_width(self) -> int:
        """Values per step of the model's outputs as the runner gives them: ``output.size``,
        twice that for a probabilistic model (each feature's mean, then its scale)."""
        return self.output.size * (1 if self.distribution is None else 2)

    @property
    def input_size(self) -> int:
        return self.input.size if isinstance(self.input, FeaturesInput) else 1

    def public(self, versions: list[int]) -> dict[str, object]:
        """The part of the manifest the API shows (no normalisation internals)."""
        if isinstance(self.input, FeaturesInput):
            input_doc: dict[str, object] = {
                "kind": "features",
                "size": self.input.size,
                "names": self.input.names,
            }
            if self.input.units is not None:
                input_doc["units"] = self.input.units
        else:
            input_doc = {"kind": "text", "vocab_size": self.input.vocab_size}
        if isinstance(self.output, RegressionOutput):
            output_doc: dict[str, object] = {
                "kind": "regression",
                "size": self.output.size,
                "names": self.output.names,
            }
            if self.output.units is not None:
                output_doc["units"] = self.output.units
        else:
            output_doc = {"kind": "next_token_distribution", "vocab_size": self.output.size}
        return {
            "name": self.name,
            "version": self.version,
            "versions": versions,
            "description": self.description,
            "task": self.task,
            "cell": self.cell,
            "layers": self.layers,
            "hidden_size": self.hidden_size,
            "input": input_doc,
            "output": output_doc,
            "state": [{"name": s.name, "shape": s.shape} for s in self.state],
            "autoregressive": self.feedback.autoregressive,
            "stateful": self.stateful,
            "training": self.training.model_dump() if self.training else None,
            "metrics": self.metrics,
            "headline_metric": self.headline_metric,
            "parity": self.parity.model_dump(),
            **({} if self.distribution is None else {"distribution": self._distribution_doc()}),
            "sha256": self.sha256,
            "sample": self.sample_file is not None,
            "created_at": self.created_at,
        }
