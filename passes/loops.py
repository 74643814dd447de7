"""Loops with a known trip count, unrolled: the body repeated once per iteration.

tf2onnx writes some Keras recurrent layers as a ``Loop`` over the time steps. When the trip
count is a constant and the condition stays true, the loop is its body repeated, the
carried values threaded from one copy to the next and the scan outputs stacked; every
later pass then sees the steps (the products in them become Shapley products). A loop
whose trip count or condition depends on the input is refused, naming the node.
(ONNX's LSTM, GRU and RNN ops are unrolled by their converter, one module per step: see
``rewriter/converters/recurrent.py``.)
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import ConversionError
from .base import PassOptions, PassResult
from .graph import Builder, const_value, float_dtype


def _loop_trip_count(node: gs.Node) -> int | None:
    trips = const_value(node.inputs[0]) if node.inputs and node.inputs[0].name else None
    return int(trips.reshape(())) if trips is not None and trips.size == 1 else None


def _unroll_loop(graph: gs.Graph, node: gs.Node) -> list[str]:
    """A Loop whose trip count is constant and whose condition stays true, as its body
    repeated; scan outputs stacked on a new leading axis."""
    trips = _loop_trip_count(node)
    body: gs.Graph = node.attrs["body"]
    condition = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1].name else None
    cond_value = const_value(condition) if condition is not None else np.array(True)
    cond_out = body.outputs[0]
    while cond_out.inputs and cond_out.inputs[0].op == "Identity":  # the condition passed through
        cond_out = cond_out.inputs[0].inputs[0]
    body_keeps_going = cond_out is body.inputs[1] or (const_value(cond_out) is not None and bool(const_value(cond_out)))
    if trips is None or cond_value is None or not bool(cond_value) or not body_keeps_going:
        raise ConversionError("this Loop's trip count or condition depends on the input", node=node.name,
                              op_type="Loop", fix="only Loops with a constant trip count that always continue can be "
                              "unrolled; export the recurrence with a fixed sequence length")
    if any(isinstance(a, gs.Graph) for n in body.nodes for a in n.attrs.values()):
        raise ConversionError("a Loop body with nested subgraphs cannot be unrolled", node=node.name, op_type="Loop")
    b = Builder(graph, node.name, float_dtype(node.outputs[0]) if node.outputs else np.float32)
    carried = list(node.inputs[2:])
    count = len(carried)
    scans: list[list[gs.Tensor]] = [[] for _ in body.outputs[1 + count:]]
    for t in range(trips):
        mapping: dict[str, gs.Tensor] = {body.inputs[0].name: b.ints(t, f"t{t}_iteration")}
        mapping[body.inputs[1].name] = gs.Constant(f"{node.name}_t{t}_cond", np.array(True))
        mapping.update({v.name: value for v, value in zip(body.inputs[2:], carried)})
        for inner in body.nodes:
            inputs = [mapping.get(i.name, i) if i.name else i for i in inner.inputs]
            outputs = [gs.Variable(f"{node.name}_t{t}_{o.name}", dtype=o.dtype) for o in inner.outputs]
            name = b._name(f"{node.name}_t{t}_{inner.name or inner.op}")
            graph.nodes.append(gs.Node(inner.op, name, dict(inner.attrs), inputs, outputs, domain=inner.domain))
            b.added.append(name)
            mapping.update({o.name: new for o, new in zip(inner.outputs, outputs)})
        carried = [mapping.get(o.name, o) for o in body.outputs[1:1 + count]]
        for k, o in enumerate(body.outputs[1 + count:]):
            scans[k].append(mapping.get(o.name, o))
    finals = list(node.outputs)
    node.outputs.clear()
    for value, wanted in zip(carried, finals[:count]):
        b.node("Identity", [value], "final", output=wanted)
    for values, wanted in zip(scans, finals[count:]):
        b.node("Concat", [_unsqueezed(b, v, graph.opset or 13) for v in values], "scan", {"axis": 0}, output=wanted)
    return b.added


def _unsqueezed(b: Builder, value: gs.Tensor, opset: int) -> gs.Variable:
    if opset < 13:
        return b.node("Unsqueeze", [value], "scan_step", {"axes": [0]})
    return b.node("Unsqueeze", [value, b.ints([0], "scan_axis")], "scan_step")


def unroll_loops(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Loops with a constant trip count that always continue -> their body, once per iteration."""
    result = PassResult("unroll_loops")
    for node in list(graph.nodes):
        if node.op == "Loop" and not node.domain:
            result.added.extend(_unroll_loop(graph, node))
            result.removed.append(node.name)
    if result.removed:
        graph.cleanup().toposort()
    return result
