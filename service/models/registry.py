"""Holding models: one onnxruntime session per verified model version.

``service.models.store`` finds versions on disk; this module loads them and knows how to
run one batch through a graph. Running is synchronous and blocking: callers go through
``service.inference.runner.Runner``, which keeps it off the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import InferenceError, ModelNotFound, ModelNotStateful, ModelStoreError
from service.models.encoding import denormalise, normalise
from service.models.manifest import FeaturesInput, Manifest, RegressionOutput, StateTensor
from service.models.store import StoredVersion, scan

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]
"""Per-sequence state: state name (``h``, ``c``) → float32 array of the manifest's shape."""


def _session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # onnxruntime's CPU arena keeps the largest run's buffers for good (a long batch of an
    # LSTM needs steps x batch x 4 x hidden floats): allocate per run and give them back
    opts.enable_cpu_mem_arena = False
    return opts


@dataclass
class LoadedModel:
    """A model version ready to run."""

    manifest: Manifest
    session: ort.InferenceSession
    onnx_path: Path

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @cached_property
    def key(self) -> str:
        """``name:version``; the batcher and metrics look it up on every run."""
        return f"{self.manifest.name}:{self.manifest.version}"

    def model_inputs(self, x: np.ndarray) -> np.ndarray:
        """Inputs in the data's own units → what the graph takes (``encoding.normalise``
        for feature models; token ids pass as they are). A new array."""
        spec = self.manifest.input
        return normalise(spec, x) if isinstance(spec, FeaturesInput) else x

    def wire_outputs(self, y: np.ndarray) -> np.ndarray | None:
        """Regression outputs in the data's own units (``encoding.denormalise``; a
        probabilistic model's mean and scale both), else None."""
        spec = self.manifest.output
        if not isinstance(spec, RegressionOutput):
            return None
        return denormalise(spec, y, self.manifest.distribution is not None)

    @cached_property
    def state_names(self) -> list[str]:
        """The state tensors' names, in the manifest's order (``h``, ``c``)."""
        return [s.name for s in self.manifest.state]

    def require_stateful(self) -> None:
        """Raise ModelNotStateful for a model that can only run whole sequences."""
        if not self.manifest.stateful:
            raise ModelNotStateful(
                f"model {self.key} runs whole sequences only (its graph is bidirectional): "
                "use predict; sessions, streams and sequences cannot step it"
            )

    def zero_state(self) -> State:
        return {s.name: np.zeros(s.shape, dtype=np.float32) for s in self.manifest.state}

    def state_spec(self, name: str) -> StateTensor:
        for s in self.manifest.state:
            if s.name == name:
                return s
        raise KeyError(name)

    @cached_property
    def extra_outputs(self) -> list[str]:
        """Graph outputs joined to the data output: a probabilistic model's scale."""
        d = self.manifest.distribution
        return [] if d is None else [d.scale_output]

    @cached_property
    def _layout(self) -> tuple[list[str], list[tuple[str, str, tuple[int, ...], tuple[int, ...]]]]:
        """Output names, and per state tensor: name, input, and the axis orders that move
        the batch axis from the front to ``batch_axis`` and back."""
        m = self.manifest
        names = [m.graph.output, *self.extra_outputs, *(s.output for s in m.state)]
        states = []
        for spec in m.state:
            rank = len(spec.shape) + 1
            to_graph = list(range(1, rank))
            to_graph.insert(spec.batch_axis, 0)
            states.append((spec.name, spec.input, tuple(to_graph), tuple(np.argsort(to_graph))))
        return names, states

    def run_batch(self, x: np.ndarray, states: list[State]) -> tuple[np.ndarray, list[State]]:
        """Run ``x`` (``[batch, time, ...]`` in model units) from per-sequence ``states``.

        Returns the outputs ``[batch, time, out]`` (``[.., 2 * out]`` for a probabilistic
        model: the mean, then the scale) and each sequence's final state (its own
        copy, so an idle session never keeps a whole batch's array alive). Blocking; safe
        to call from several threads. Stacking and splitting use C-level array calls
        only: this runs with the GIL held, in competition with the event loop.
        """
        stacked = {
            name: np.array([s[name] for s in states], dtype=np.float32) for name in self.state_names
        }
        y, finals = self.run_stacked(x, stacked)
        new_states: list[State] = [{} for _ in range(x.shape[0])]
        for name, arr in finals.items():
            for i, row in enumerate(arr):
                new_states[i][name] = row.copy()
        return y, new_states

    def run_stacked(
        self, x: np.ndarray, states: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``run_batch`` with the states stacked: state name → ``[batch, *shape]``, in and
        out. The final states come back as one array per name, batch axis first."""
        graph = self.manifest.graph
        names, layout = self._layout
        feeds: dict[str, np.ndarray] = {
            graph.input: np.ascontiguousarray(x.swapaxes(0, 1) if graph.time_major else x)
        }
        for name, input_name, to_graph, _ in layout:
            feeds[input_name] = np.ascontiguousarray(states[name].transpose(to_graph))
        if graph.sequence_lens is not None:
            feeds[graph.sequence_lens] = np.full(x.shape[0], x.shape[1], dtype=np.int32)
        try:
            results = self.session.run(names, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceError(f"model {self.key} failed: {exc}") from exc
        k = 1 + len(self.extra_outputs)
        if k == 1:
            y = np.asarray(results[0], dtype=np.float32)
        else:  # a probabilistic model: mean and scale side by side, [.., 2 * out]
            y = np.concatenate([np.asarray(r, dtype=np.float32) for r in results[:k]], axis=-1)
        if graph.time_major:
            y = y.swapaxes(0, 1)
        finals = {
            name: np.asarray(arr, dtype=np.float32).transpose(to_batch)
            for (name, _, _, to_batch), arr in zip(layout, results[k:], strict=True)
        }
        return y, finals


def load_model(stored: StoredVersion, threads: int) -> LoadedModel:
    """Create the onnxruntime session and check the graph matches the manifest."""
    try:
        session = ort.InferenceSession(
            str(stored.onnx_path),
            sess_options=_session_options(threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:
        raise ModelStoreError(f"{stored.onnx_path}: onnxruntime cannot load it: {exc}") from exc
    m = stored.manifest
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    want_in = {m.graph.input, *(s.input for s in m.state)}
    if m.graph.sequence_lens is not None:
        want_in.add(m.graph.sequence_lens)
    want_out = {m.graph.output, *(s.output for s in m.state)}
    if m.distribution is not None:
        want_out.add(m.distribution.scale_output)
    if not want_in <= inputs or not want_out <= outputs:
        raise ModelStoreError(
            f"{stored.onnx_path}: graph tensors {sorted(inputs)} -> {sorted(outputs)} "
            f"do not match the manifest's {sorted(want_in)} -> {sorted(want_out)}"
        )
    return LoadedModel(manifest=m, session=session, onnx_path=stored.onnx_path)


class ModelRegistry:
    """All loaded model versions, by name and version."""

    def __init__(self, root: Path, ort_threads: int = 1) -> None:
        self.root = root
        self.ort_threads = ort_threads
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self.errors: list[str] = []

    def load(self) -> None:
        """(Re)scan the store and load every valid version; broken ones go to ``errors``."""
        result = scan(self.root)
        models: dict[str, dict[int, LoadedModel]] = {}
        errors = list(result.errors)
        for stored in result.versions:
            m = stored.manifest
            current = self._models.get(m.name, {}).get(m.version)
            if current is not None and current.manifest.sha256 == m.sha256:
                models.setdefault(m.name, {})[m.version] = current
                continue
            try:
                models.setdefault(m.name, {})[m.version] = load_model(stored, self.ort_threads)
            except ModelStoreError as exc:
                errors.append(str(exc))
                log.warning("model store: %s", exc)
        self._models = {k: v for k, v in models.items() if v}
        self.errors = errors

    @property
    def ready(self) -> bool:
        return bool(self._models)

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def default_version(self, name: str) -> int:
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"no model {name!r}")
        return versions[-1]

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        by_version = self._models.get(name)
        if not by_version:
            raise ModelNotFound(f"no model {name!r}")
        if version is None:
            version = max(by_version)
        model = by_version.get(version)
        if model is None:
            raise ModelNotFound(f"model {name!r} has no version {version}")
        return model

    def all(self) -> list[LoadedModel]:
        return [m for name in self.names() for m in self._models[name].values()]
