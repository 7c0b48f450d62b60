"""Where a graph's state comes from: explicit state inputs paired with outputs (by name or
``--state``), or state exposed by graph surgery; and the refusals when neither is possible.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import onnx
import onnxruntime as ort

from service.models.manifest import StateTensor
from service.onnx_import.graph import (
    ImportProblem,
    batch_axis_of,
    pair_states,
    per_sequence,
    state_name,
    tensor_info,
)
from service.onnx_import.surgery import (
    RecurrentNode,
    expose_state,
    looping_nodes,
    recurrent_nodes,
)
from service.onnx_import.verify import ort_session


def refuse_without_nodes(model: onnx.ModelProto, session: ort.InferenceSession) -> None:
    loops = looping_nodes(model)
    names = f"inputs: {[a.name for a in session.get_inputs()]}, outputs: " + str(
        [a.name for a in session.get_outputs()]
    )
    if loops:
        raise ImportProblem(
            f"the recurrence is in {', '.join(loops)}, not in LSTM/GRU/RNN nodes: lstm-serve "
            "can expose the state of LSTM, GRU and RNN nodes only. Export the model with its "
            "recurrent layers as ONNX LSTM/GRU/RNN ops, or with explicit state inputs and "
            f"outputs (then pass --state IN=OUT) ({names})"
        )
    if not recurrent_nodes(model):
        raise ImportProblem(
            "no LSTM, GRU or RNN node and no state input/output pair: the recurrence, if any, "
            "is unrolled into plain ops and cannot be stepped. Export the recurrent layers "
            "as ONNX LSTM/GRU/RNN ops (e.g. nn.LSTM, not an nn.LSTMCell loop), or a graph "
            f"with explicit state inputs and outputs and pass --state IN=OUT ({names})"
        )


def describe(node: RecurrentNode) -> str:
    layout = "[batch, time, features]" if node.layout == 1 else "[time, batch, features]"
    seq = f", sequence_lens from graph input {node.sequence_lens!r}" if node.sequence_lens else ""
    return (
        f"{node.label}: {node.direction}, hidden {node.hidden_size}, layout attribute "
        f"{node.layout} {layout}, initial state {node.initial_state}{seq}"
    )


@dataclass
class StateGraph:
    session: ort.InferenceSession
    onnx_bytes: bytes
    states: list[StateTensor]
    rewritten: bool


def explicit_state(
    session: ort.InferenceSession, onnx_bytes: bytes, ns: argparse.Namespace, notes: list[str]
) -> StateGraph | None:
    inputs = [tensor_info(a) for a in session.get_inputs()]
    outputs = [tensor_info(a) for a in session.get_outputs()]
    given = [tuple(s.split("=", 1)) for s in ns.state or []]
    if any(len(p) != 2 for p in given):
        raise ImportProblem("--state takes INPUT=OUTPUT")
    pairs = pair_states(
        [t for t in inputs if t.name != ns.input],
        [t for t in outputs if t.name != ns.output],
        [(p[0], p[1]) for p in given],
    )
    if not pairs:
        return None
    how = "as given (--state)" if given else "by name"
    states = []
    for i, pair in enumerate(pairs):
        axis = batch_axis_of(pair.input.shape, ns.batch_axis)
        states.append(
            StateTensor(
                name=state_name(pair.input.name, i, len(pairs)),
                input=pair.input.name,
                output=pair.output.name,
                shape=per_sequence(pair.input.shape, axis, pair.input.name),
                batch_axis=axis,
            )
        )
    if len({s.name for s in states}) != len(states):
        states = [s.model_copy(update={"name": f"s{i}"}) for i, s in enumerate(states)]
    for s in states:
        notes.append(
            f"state {s.name}: graph input {s.input!r} -> output {s.output!r} paired {how}, "
            f"per-sequence shape {s.shape}, batch axis {s.batch_axis}"
        )
    return StateGraph(session, onnx_bytes, states, rewritten=False)


def exposed_state(model: onnx.ModelProto, notes: list[str]) -> StateGraph:
    rewritten, exposed = expose_state(model)
    onnx_bytes = rewritten.SerializeToString()
    states = [
        StateTensor(
            name=e.name, input=e.input, output=e.output, shape=e.shape, batch_axis=e.batch_axis
        )
        for e in exposed
    ]
    notes.append(
        f"graph rewritten: no state inputs, so the initial state of each of the "
        f"{len(recurrent_nodes(model))} recurrent node(s) became a graph input and its "
        "final state a graph output"
    )
    for s in states:
        notes.append(
            f"state {s.name}: new graph input {s.input!r} -> output {s.output!r}, "
            f"per-sequence shape {s.shape} [directions, hidden], batch axis {s.batch_axis}"
        )
    return StateGraph(ort_session(onnx_bytes), onnx_bytes, states, rewritten=True)
