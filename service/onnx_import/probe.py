"""Finding a graph's data layout by running it, and proving a rewritten graph unchanged.

Which axis of the data tensor is time and which is batch is decided by what the graph does,
not by its axis names: one element of a ``[4, 4, ...]`` probe is changed and the outputs
that move are read. A change at batch ``b``, time ``t`` moves only that sequence's outputs
(batch elements are independent) at ``t`` and after it (causality; every step for a
bidirectional graph). onnxruntime and numpy only.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from service.onnx_import.graph import ImportProblem
from service.onnx_import.verify import Array, GraphPorts, max_abs, run_graph

_SIDE = 4
_ROW, _COL = 0, 2


def probe_data(
    rng: np.random.Generator, shape: list[int], features: int | None, vocab: int
) -> Array:
    """Random float features ``[*shape, features]``, or token ids ``shape`` when text."""
    if features is None:
        return rng.integers(0, vocab, size=shape, dtype=np.int64)
    return rng.standard_normal([*shape, features]).astype(np.float32)


def _zero_states(ports: GraphPorts, batch: int) -> list[Array]:
    out: list[Array] = []
    for port in ports.states:
        shape = list(port.shape)
        shape[port.batch_axis] = batch
        out.append(np.zeros(shape, dtype=np.float32))
    return out


def detect_time_major(
    session: ort.InferenceSession, ports: GraphPorts, features: int | None, vocab: int
) -> bool:
    """True when the graph's data tensors are ``[time, batch, ...]``, False for
    ``[batch, time, ...]``; raises ImportProblem when the probe shows neither."""
    rng = np.random.default_rng(7)
    x = probe_data(rng, [_SIDE, _SIDE], features, vocab)
    states = _zero_states(ports, _SIDE)
    try:
        y, _ = run_graph(session, ports, x, states)
        moved = x.copy()
        if features is None:
            moved[_ROW, _COL] = (moved[_ROW, _COL] + 1) % vocab
        else:
            moved[_ROW, _COL] += 1.0
        y2, _ = run_graph(session, ports, moved, states)
    except Exception as exc:
        raise ImportProblem(
            f"onnxruntime cannot run a [{_SIDE}, {_SIDE}] probe through the graph ({exc}); "
            "was it exported with fixed batch and time axes? Export it with dynamic axes "
            "(torch.onnx.export(..., dynamic_axes=...) or a None time dimension in Keras)"
        ) from exc
    if y.ndim != 3 or y.shape[:2] != (_SIDE, _SIDE):
        raise ImportProblem(
            f"the data output has shape {list(y.shape)} for a [{_SIDE}, {_SIDE}] input: it is "
            "not one output per step (a model that returns only its last step cannot be "
            "stepped; export the per-step output, e.g. Keras return_sequences=True)"
        )
    changed = np.abs(y2.astype(np.float64) - y.astype(np.float64)).max(axis=-1) > 0
    rows = set(np.nonzero(changed)[0].tolist())
    cols = set(np.nonzero(changed)[1].tolist())
    if not changed[_ROW, _COL]:
        raise ImportProblem("changing one input step changes no output: not a sequence model")
    batch_major = rows == {_ROW} and int(changed[_ROW].sum()) > 1
    time_major = cols == {_COL} and int(changed[:, _COL].sum()) > 1
    if batch_major == time_major:
        raise ImportProblem(
            "cannot tell the time axis from the batch axis by running the graph: a change to "
            f"one input step moved outputs at {sorted(zip(*np.nonzero(changed), strict=True))} "
            "(a recurrent model moves that sequence's later outputs only)"
        )
    return time_major


def rewritten_vs_original(
    original: ort.InferenceSession,
    rewritten: ort.InferenceSession,
    ports: GraphPorts,
    original_output: str,
    data: Array,
) -> float:
    """Max abs difference of the data output: the rewritten graph from zero state vs the
    original graph as it was exported."""
    feeds: dict[str, Array] = {ports.input: data}
    if ports.sequence_lens is not None:
        feeds[ports.sequence_lens] = np.full(
            data.shape[1 - ports.time_axis], data.shape[ports.time_axis], dtype=np.int32
        )
    want = np.asarray(original.run([original_output], feeds)[0])
    batch = data.shape[1 - ports.time_axis]
    got, _ = run_graph(rewritten, ports, data, _zero_states(ports, batch))
    return max_abs(got, want)
