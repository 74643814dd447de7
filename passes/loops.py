"""Loops with a known trip count and Scans, unrolled: the body repeated once per iteration.

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
from ..onnxkit.graph import Builder, const_value, float_dtype
from .base import PassOptions, PassResult, graph_pass


def _loop_trip_count(node: gs.Node) -> int | None:
    trips = const_value(node.inputs[0]) if node.inputs and node.inputs[0].name else None
    return int(trips.reshape(())) if trips is not None and trips.size == 1 else None


def _counted_trips(node: gs.Node, body: gs.Graph, trips: int) -> int | None:
    """The iterations a Loop runs when its condition is computed from counters only: the
    iteration number, carried values that start as constants and change by constants, and
    constants (tf2onnx's ``while`` over a fixed length). The condition's path is evaluated
    step by step; None when it reads anything else."""
    position = {id(t): k for k, t in enumerate(body.inputs[2:])}
    producers = {id(o): n for n in body.nodes for o in n.outputs}
    needed, nodes, pending, seen = set(), set(), [body.outputs[0]], set()
    while pending:
        tensor = pending.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if id(tensor) in position:
            k = position[id(tensor)]
            if const_value(node.inputs[2 + k]) is None:
                return None  # a carried value that starts from the input
            needed.add(k)
            pending.append(body.outputs[1 + k])
        elif id(tensor) in producers:
            inner = producers[id(tensor)]
            if any(isinstance(a, gs.Graph) for a in inner.attrs.values()):
                return None
            nodes.add(id(inner))
            pending.extend(t for t in inner.inputs if t.name)
        elif tensor not in body.inputs[:2] and const_value(tensor) is None:
            return None  # an outer value computed from the input
    order = [n for n in body.nodes if id(n) in nodes]
    carried = sorted(needed)
    step = _step_model(order, [body.inputs[0], body.inputs[1], *(body.inputs[2 + k] for k in carried)],
                       [body.outputs[0], *(body.outputs[1 + k] for k in carried)])
    if step is None:
        return None
    values = [const_value(node.inputs[2 + k]) for k in carried]
    condition = const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else np.array(True)
    try:
        for t in range(trips):
            condition, *values = step(np.array(t, np.int64), np.asarray(condition), *values)
            if not bool(np.asarray(condition).reshape(-1)[0]):
                return t + 1
    except Exception:  # the reference implementation refused a value on the way
        return None
    return trips


def _step_model(nodes: list[gs.Node], inputs: list[gs.Tensor], outputs: list[gs.Tensor]):
    """``nodes`` as a function of ``inputs`` to ``outputs`` on numpy values, run by ONNX's
    reference evaluator (outer values they read are constants); None when it cannot be built."""
    from onnx.reference import ReferenceEvaluator

    fed = {id(t) for t in inputs}
    made = {id(o) for n in nodes for o in n.outputs}
    copies, names = [], {}

    def named(tensor: gs.Tensor) -> gs.Tensor:
        if id(tensor) in fed or id(tensor) in made:
            return names.setdefault(id(tensor), gs.Variable(tensor.name, dtype=tensor.dtype))
        return names.setdefault(id(tensor), gs.Constant(tensor.name, np.asarray(const_value(tensor))))

    for inner in nodes:
        copies.append(gs.Node(inner.op, inner.name, dict(inner.attrs),
                              [named(t) if t.name else gs.Variable("") for t in inner.inputs],
                              [named(o) for o in inner.outputs]))
    graph = gs.Graph(nodes=copies, inputs=[named(t) for t in inputs], outputs=[named(t) for t in outputs], opset=17)
    try:
        evaluator = ReferenceEvaluator(gs.export_onnx(graph, do_type_check=False))
    except Exception:  # an op or a type the reference implementation refuses
        return None
    names_in = [t.name for t in inputs]
    return lambda *values: evaluator.run(None, dict(zip(names_in, values)))


def _unroll_loop(graph: gs.Graph, node: gs.Node) -> list[str]:
    """A Loop whose trip count is constant and whose condition stays true (or is computed
    from counters, see :func:`_counted_trips`), as its body repeated; scan outputs stacked
    on a new leading axis."""
    trips = _loop_trip_count(node)
    body: gs.Graph = node.attrs["body"]
    condition = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1].name else None
    cond_value = const_value(condition) if condition is not None else np.array(True)
    cond_out = body.outputs[0]
    while cond_out.inputs and cond_out.inputs[0].op == "Identity":  # the condition passed through
        cond_out = cond_out.inputs[0].inputs[0]
    body_keeps_going = cond_out is body.inputs[1] or (const_value(cond_out) is not None and bool(const_value(cond_out)))
    if trips is not None and cond_value is not None and bool(cond_value) and not body_keeps_going:
        trips = _counted_trips(node, body, trips)
        body_keeps_going = trips is not None
    if trips is None or cond_value is None or not bool(cond_value) or not body_keeps_going:
        raise ConversionError("this Loop's trip count or condition depends on the input", node=node.name,
                              op_type="Loop", fix="only Loops with a constant trip count that always continue can be "
                              "unrolled; export the recurrence with a fixed sequence length")
    _check_flat(node, body)
    b = Builder(graph, node.name, float_dtype(node.outputs[0]) if node.outputs else np.float32)
    carried = list(node.inputs[2:])
    count = len(carried)
    scans: list[list[gs.Tensor]] = [[] for _ in body.outputs[1 + count:]]
    for t in range(trips):
        mapping: dict[str, gs.Tensor] = {body.inputs[0].name: b.ints(t, f"t{t}_iteration")}
        mapping[body.inputs[1].name] = gs.Constant(f"{node.name}_t{t}_cond", np.array(True))
        mapping.update({v.name: value for v, value in zip(body.inputs[2:], carried)})
        _copy_body(graph, b, body, mapping, t)
        carried = [mapping.get(o.name, o) for o in body.outputs[1:1 + count]]
        for k, o in enumerate(body.outputs[1 + count:]):
            scans[k].append(mapping.get(o.name, o))
    _write_results(graph, b, node, carried, scans, [0] * len(scans))
    return b.added


def _check_flat(node: gs.Node, body: gs.Graph) -> None:
    if any(isinstance(a, gs.Graph) for n in body.nodes for a in n.attrs.values()):
        raise ConversionError(f"a {node.op} body with nested subgraphs cannot be unrolled", node=node.name,
                              op_type=node.op)


def _copy_body(graph: gs.Graph, b: Builder, body: gs.Graph, mapping: dict[str, gs.Tensor], t: int) -> None:
    """Append a copy of ``body``'s nodes for iteration ``t``, reading ``mapping`` for its
    inputs (outer values pass through); the copies' outputs are added to ``mapping``."""
    for inner in body.nodes:
        inputs = [mapping.get(i.name, i) if i.name else i for i in inner.inputs]
        outputs = [gs.Variable(f"{b.base}_t{t}_{o.name}", dtype=o.dtype) for o in inner.outputs]
        name = b._name(f"{b.base}_t{t}_{inner.name or inner.op}")
        graph.nodes.append(gs.Node(inner.op, name, dict(inner.attrs), inputs, outputs, domain=inner.domain))
        b.added.append(name)
        mapping.update({o.name: new for o, new in zip(inner.outputs, outputs)})


def _write_results(graph: gs.Graph, b: Builder, node: gs.Node, finals: list[gs.Tensor],
                   scans: list[list[gs.Tensor]], axes: list[int]) -> None:
    """The node's outputs: the carried values' last state, then each scan output's steps
    stacked along its axis."""
    outputs = list(node.outputs)
    node.outputs.clear()
    for value, wanted in zip(finals, outputs):
        b.node("Identity", [value], "final", output=wanted)
    for values, wanted, axis in zip(scans, outputs[len(finals):], axes):
        b.node("Concat", [_unsqueezed(b, v, axis, graph.opset or 13) for v in values], "scan", {"axis": axis},
               output=wanted)


def _unroll_scan(graph: gs.Graph, node: gs.Node) -> list[str]:
    """A Scan (opset 9 on) over inputs of static length, as its body once per element; each
    scan input read at the step's index along its axis (from the end when reversed), each
    scan output stacked along its axis (in reverse when so directed)."""
    body: gs.Graph = node.attrs["body"]
    _check_flat(node, body)
    scanned = int(node.attrs["num_scan_inputs"])
    state = list(node.inputs[:len(node.inputs) - scanned])
    inputs = list(node.inputs[len(state):])
    in_axes = list(node.attrs.get("scan_input_axes", [0] * scanned))
    in_reverse = list(node.attrs.get("scan_input_directions", [0] * scanned))
    outs = len(body.outputs) - len(state)
    out_axes = list(node.attrs.get("scan_output_axes", [0] * outs))
    out_reverse = list(node.attrs.get("scan_output_directions", [0] * outs))
    lengths = {t.shape[a if a >= 0 else a + len(t.shape)] if t.shape else None for t, a in zip(inputs, in_axes)}
    if len(lengths) != 1 or not isinstance(next(iter(lengths)), int):
        raise ConversionError("this Scan's length is not fixed, so it cannot be unrolled", node=node.name,
                              op_type="Scan", fix="give example inputs (or --dim sizes) that fix the scanned length")
    length = next(iter(lengths))
    b = Builder(graph, node.name, float_dtype(node.outputs[0]) if node.outputs else np.float32)
    scans: list[list[gs.Tensor]] = [[] for _ in range(outs)]
    for t in range(length):
        mapping = {v.name: value for v, value in zip(body.inputs, state)}
        for v, tensor, axis, reverse in zip(body.inputs[len(state):], inputs, in_axes, in_reverse):
            index = b.ints(length - 1 - t if reverse else t, f"t{t}_index")
            mapping[v.name] = b.node("Gather", [tensor, index], f"t{t}_element", {"axis": axis})
        _copy_body(graph, b, body, mapping, t)
        state = [mapping.get(o.name, o) for o in body.outputs[:len(state)]]
        for k, o in enumerate(body.outputs[len(state):]):
            scans[k].append(mapping.get(o.name, o))
    scans = [values[::-1] if reverse else values for values, reverse in zip(scans, out_reverse)]
    rank = [len(o.shape) - 1 if o.shape else 0 for o in body.outputs[len(state):]]
    _write_results(graph, b, node, state, scans, [a + r + 1 if a < 0 else a for a, r in zip(out_axes, rank)])
    return b.added


def _unsqueezed(b: Builder, value: gs.Tensor, axis: int, opset: int) -> gs.Variable:
    if opset < 13:
        return b.node("Unsqueeze", [value], "scan_step", {"axes": [axis]})
    return b.node("Unsqueeze", [value, b.ints([axis], "scan_axis")], "scan_step")


@graph_pass
def unroll_loops(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Loops with a constant trip count that always continue, and Scans over a static
    length -> their body, once per iteration."""
    result = PassResult()
    unroll = {"Loop": _unroll_loop, "Scan": _unroll_scan}
    for node in list(graph.nodes):
        if node.op in unroll and not node.domain and (node.op != "Scan" or (graph.opset or 9) >= 9):
            result.added.extend(unroll[node.op](graph, node))
            result.removed.append(node.name)
    if result.removed:
        graph.cleanup().toposort()
    return result
