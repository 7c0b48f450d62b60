"""Exposing the hidden state of a recurrent ONNX graph by graph surgery.

Most recurrent models are exported as ``y = model(x)``: each ``LSTM``/``GRU``/``RNN`` node
starts from an initial state the graph makes itself (nothing, a constant, or zeros shaped
from the input) and its final state is thrown away. ``expose_state`` rewires such a graph
so that every recurrent node's initial state is a new graph input and its final state
(``Y_h``, and ``Y_c`` for an LSTM) a graph output: the saved model carries explicit state
and can be stepped. Whether the rewritten graph, started from zero state, still computes
what the original did is proven by the importer, not assumed here. onnx only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from service.onnx_import.graph import ImportProblem

RECURRENT_OPS = {"LSTM": ("h", "c"), "GRU": ("h",), "RNN": ("h",)}
"""Recurrent ONNX ops and their state tensors, in the op's input/output order."""

_STATE_INPUT = {"h": 5, "c": 6}
_STATE_OUTPUT = {"h": 1, "c": 2}
_SEQUENCE_LENS = 4
_LOOPING_OPS = ("Scan", "Loop")


@dataclass(frozen=True)
class RecurrentNode:
    """One LSTM/GRU/RNN node as the summary reports it."""

    label: str
    op: str
    direction: str
    layout: int
    """0: ``X`` is ``[time, batch, features]``, state ``[directions, batch, hidden]``; 1:
    ``X`` is ``[batch, time, features]``, state ``[batch, directions, hidden]``."""
    hidden_size: int
    initial_state: str
    """Where its initial state came from, in words (``graph input 'h0'``, ``none``, ...)."""
    sequence_lens: str | None
    """The graph input that gives its ``sequence_lens``, if one does."""

    @property
    def directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def state_batch_axis(self) -> int:
        return 0 if self.layout == 1 else 1


@dataclass(frozen=True)
class ExposedState:
    """A state tensor the surgery made explicit."""

    name: str
    """The manifest's name for it: ``h``/``c`` for one node, ``h0``, ``c0``, ``h1`` ... else."""
    input: str
    output: str
    shape: list[int]
    """Per-sequence shape: ``[directions, hidden]``."""
    batch_axis: int


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _graph_inputs(graph: onnx.GraphProto) -> list[str]:
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _ancestor_inputs(graph: onnx.GraphProto, tensor: str) -> set[str]:
    """The graph inputs that ``tensor`` is computed from."""
    producers = _producers(graph)
    inputs = set(_graph_inputs(graph))
    found: set[str] = set()
    seen: set[str] = set()
    todo = [tensor]
    while todo:
        name = todo.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.add(name)
        node = producers.get(name)
        if node is not None:
            todo.extend(node.input)
    return found


def _describe_source(graph: onnx.GraphProto, tensor: str) -> str:
    if not tensor:
        return "none (zeros)"
    inputs = set(_graph_inputs(graph))
    if tensor in inputs:
        return f"graph input {tensor!r}"
    if tensor in {t.name for t in graph.initializer}:
        return "a constant"
    node = _producers(graph).get(tensor)
    if node is not None and node.op_type == "Constant":
        return "a constant"
    if _ancestor_inputs(graph, tensor):
        return "computed inside the graph (zeros shaped from the input)"
    return "a constant"


def looping_nodes(model: onnx.ModelProto) -> list[str]:
    """``Scan``/``Loop`` nodes, and recurrent nodes inside subgraphs, as ``op 'name'``."""
    found: list[str] = []

    def visit(graph: onnx.GraphProto, nested: bool) -> None:
        for node in graph.node:
            if node.op_type in _LOOPING_OPS or (nested and node.op_type in RECURRENT_OPS):
                found.append(f"{node.op_type} {node.name or '(unnamed)'!r}")
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g, True)
                for g in a.graphs:
                    visit(g, True)

    visit(model.graph, False)
    return found


def recurrent_nodes(model: onnx.ModelProto) -> list[RecurrentNode]:
    """The top-level LSTM/GRU/RNN nodes, in graph order."""
    graph = model.graph
    inputs = set(_graph_inputs(graph))
    out: list[RecurrentNode] = []
    for i, node in enumerate(n for n in graph.node if n.op_type in RECURRENT_OPS):
        states = RECURRENT_OPS[node.op_type]
        sources = [
            _describe_source(graph, node.input[_STATE_INPUT[s]])
            if len(node.input) > _STATE_INPUT[s]
            else "none (zeros)"
            for s in states
        ]
        seq = node.input[_SEQUENCE_LENS] if len(node.input) > _SEQUENCE_LENS else ""
        hidden = _attr(node, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ImportProblem(f"{node.op_type} node {node.name!r} has no hidden_size attribute")
        layout = _attr(node, "layout", 0)
        out.append(
            RecurrentNode(
                label=f"{node.op_type} {node.name or f'#{i}'!r}",
                op=node.op_type,
                direction=str(_attr(node, "direction", "forward")),
                layout=int(layout) if isinstance(layout, int) else 0,
                hidden_size=hidden,
                initial_state=", ".join(dict.fromkeys(sources)),
                sequence_lens=seq if seq in inputs else None,
            )
        )
    return out


def check_state_sources(model: onnx.ModelProto) -> None:
    """Refuse surgery where a recurrent node's initial state comes from a graph input that
    does not also feed its sequence: that input is a state input the names did not pair,
    and rewiring would silently drop it."""
    graph = model.graph
    for node in graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        data = _ancestor_inputs(graph, node.input[0])
        for s in RECURRENT_OPS[node.op_type]:
            idx = _STATE_INPUT[s]
            if len(node.input) <= idx:
                continue
            extra = sorted(_ancestor_inputs(graph, node.input[idx]) - data)
            if extra:
                raise ImportProblem(
                    f"graph input(s) {extra} give the initial state of {node.op_type} node "
                    f"{node.name!r} but no output was paired with them by name; "
                    "pass --state IN=OUT for each"
                )


def _unique(taken: set[str], wanted: str) -> str:
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = f"{wanted}_{n}"
    taken.add(name)
    return name


def _state_value_info(name: str, layout: int, directions: int, hidden: int) -> onnx.ValueInfoProto:
    shape: list[int | str] = (
        ["batch", directions, hidden] if layout == 1 else [directions, "batch", hidden]
    )
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes, initializers and value_info nothing reaches the outputs through."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs may read outer-scope names
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    for inner in g.node:
                        needed.update(inner.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    kept_inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    produced = {o for n in graph.node for o in n.output}
    kept_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)


def _iter_recurrent(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    return [n for n in graph.node if n.op_type in RECURRENT_OPS]


def expose_state(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[ExposedState]]:
    """A copy of ``model`` with every recurrent node's state as graph input and output."""
    check_state_sources(model)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    nodes = list(_iter_recurrent(graph))
    infos = recurrent_nodes(model)
    taken = _all_names(graph)
    graph_outputs = {o.name for o in graph.output}
    exposed: list[ExposedState] = []
    for index, (node, info) in enumerate(zip(nodes, infos, strict=True)):
        for kind in RECURRENT_OPS[node.op_type]:
            name = kind if len(nodes) == 1 else f"{kind}{index}"
            in_idx, out_idx = _STATE_INPUT[kind], _STATE_OUTPUT[kind]
            while len(node.input) <= in_idx:
                node.input.append("")
            state_in = _unique(taken, f"state_{name}_in")
            node.input[in_idx] = state_in
            graph.input.append(
                _state_value_info(state_in, info.layout, info.directions, info.hidden_size)
            )
            while len(node.output) <= out_idx:
                node.output.append("")
            current = node.output[out_idx]
            if current and current in graph_outputs:
                state_out = current
            else:
                state_out = _unique(taken, f"state_{name}_out")
                if current:
                    graph.node.append(helper.make_node("Identity", [current], [state_out]))
                else:
                    node.output[out_idx] = state_out
                graph.output.append(
                    _state_value_info(state_out, info.layout, info.directions, info.hidden_size)
                )
            exposed.append(
                ExposedState(
                    name=name,
                    input=state_in,
                    output=state_out,
                    shape=[info.directions, info.hidden_size],
                    batch_axis=info.state_batch_axis,
                )
            )
    _prune(graph)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dropped = [i for i in _graph_inputs(graph) if i not in used]
    if dropped:
        raise ImportProblem(f"graph inputs {dropped} would be left unused by the rewiring")
    onnx.checker.check_model(rewritten)
    return rewritten, exposed
