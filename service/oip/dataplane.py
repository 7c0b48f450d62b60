"""What the Open Inference Protocol's requests do, whichever door they came through.

The HTTP routes (``service.http.v2.routes``) and the gRPC servicer (``service.grpc``)
both read their wire format into plain values and call ``DataPlane``: server and model
metadata, model configuration, and inference (stateless, or a step of a sequence through
``Sequences`` and so ``SessionManager.advance``). The gate's output budget is checked
here, from the request's shapes, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from service.errors import InvalidInput, ModelNotFound
from service.http.gate import check_output_budget
from service.inference.runner import SeqResult
from service.models.manifest import is_version_number
from service.models.registry import LoadedModel
from service.oip import tensors
from service.oip.messages import InferRequest, OutputTensor
from service.oip.sequences import SequenceParams, Sequences, sequence_params
from service.sessions.manager import SessionManager

SERVER_NAME = "lstm-serve"
EXTENSIONS = ["binary_tensor_data", "parameters", "sequence", "model_configuration"]


def parse_version(value: str | None) -> int | None:
    """A request's model version: None or "" for the default, else a positive integer."""
    if value is None or value == "":
        return None
    if not is_version_number(value):
        raise ModelNotFound(f"model version {value!r} is not a positive integer")
    return int(value)


def server_version() -> str:
    try:
        return version("lstm-serve")
    except PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class InferResult:
    model: LoadedModel
    outputs: list[OutputTensor]


class DataPlane:
    """The protocol's operations over one app's session manager (and its registry and
    runner)."""

    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions
        self.registry = sessions.registry
        self.settings = sessions.settings

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}

    def model(self, name: str, version: str | None) -> LoadedModel:
        return self.registry.get(name, parse_version(version))

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        return tensors.metadata(self.model(name, version), self.registry.versions(name))

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        s = self.settings
        model = self.model(name, version)
        return tensors.config(model, s.max_batch_sequences, s.session_ttl_seconds)

    async def infer(
        self, owner: str, name: str, version: str | None, request: InferRequest
    ) -> InferResult:
        """Check ``request`` against the model, run it (a sequence's step when it names a
        sequence) and give the outputs it asks for."""
        settings = self.settings
        params = sequence_params(request.parameters)
        sequences = Sequences(self.sessions)
        model = await sequences.resolve(owner, name, parse_version(version), params)
        inputs = tensors.model_inputs(
            model, request.inputs, settings.max_steps_per_request, settings.max_batch_sequences
        )
        estimate = tensors.response_bytes(model.manifest, inputs, request)
        check_output_budget(estimate, settings.max_response_bytes, "this inference request")
        results = await self._run(sequences, owner, model, params, inputs)
        m = model.manifest
        values = {
            **tensors.model_outputs(m, results),
            **tensors.state_outputs(m, [r.state for r in results]),
        }
        return InferResult(model, _select_outputs(model, request, values))

    async def _run(
        self,
        sequences: Sequences,
        owner: str,
        model: LoadedModel,
        params: SequenceParams,
        inputs: tensors.ModelInputs,
    ) -> list[SeqResult]:
        if params.id is None:
            return await self.sessions.runner.run(model, inputs.seqs, inputs.states)
        if len(inputs.seqs) != 1:
            raise InvalidInput(
                f"a request in sequence {params.id} must have batch size 1, got {len(inputs.seqs)}"
            )
        explicit = inputs.states[0] if inputs.states is not None else None
        return [await sequences.step(owner, model, params, inputs.seqs[0], explicit)]


def _select_outputs(
    model: LoadedModel, request: InferRequest, values: dict[str, np.ndarray]
) -> list[OutputTensor]:
    default_binary = request.binary_output_default
    if request.outputs is None:
        return [OutputTensor(n, values[n], default_binary) for n in values]
    chosen: list[OutputTensor] = []
    for out in request.outputs:
        if out.name not in values:
            raise InvalidInput(
                f"unexpected inference output '{out.name}' for model '{model.name}'; "
                f"it gives {list(values)}"
            )
        binary = default_binary if out.binary is None else out.binary
        chosen.append(OutputTensor(out.name, values[out.name], binary))
    return chosen
