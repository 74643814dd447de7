"""Recurrent layers unrolled over time: ONNX LSTM, GRU and RNN, and Loops with a known trip count.

Unrolled, a recurrence is affine maps, elementwise activations and products of two
input-dependent tensors (gate x state), each of which has an exact DeepLIFT rule: the
products become Shapley products (passes/products.py), the activations modules with the
rescale rule. The sequence length must be static (the example inputs fix it); the batch
stays dynamic.

Per step the gate pre-activations take one matrix product for all gates (``H @ R^T``, the
input part ``X @ W^T`` computed for every step at once), and the gates that share an
activation share one node: LSTM's input, output and forget gates one Sigmoid (without
peepholes), GRU's update and reset gates one. GRU's ``(1 - z) * h~ + z * H`` is written
``h~ + z * (H - h~)``: one product instead of two.

ONNX semantics (opsets 7-22): gates ordered i, o, f, c (LSTM) and z, r, h (GRU); ``B`` holds
the input biases then the recurrent ones; ``clip`` bounds the input of every activation;
``direction`` forward, reverse or bidirectional; ``layout`` 1 puts the batch first;
``sequence_lens`` (constant) masks the steps past each row's length, keeping its state and
writing zeros to ``Y``, in either direction.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import ConversionError
from .base import PassOptions, PassResult
from .graph import Builder, const_value, float_dtype

_DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Activation names ONNX allows, as ONNX ops with their attribute names.
_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "leakyrelu": "LeakyRelu",
                "thresholdedrelu": "ThresholdedRelu", "hardsigmoid": "HardSigmoid", "elu": "Elu",
                "softsign": "Softsign", "softplus": "Softplus", "scaledtanh": "ScaledTanh", "affine": "Affine"}


class _Step:
    """Builds the nodes of one recurrent node's unrolled steps, named ``<node>_<dir>_t<step>_<part>``."""

    def __init__(self, graph: gs.Graph, node: gs.Node, builder: Builder) -> None:
        self.b = builder
        self.opset = graph.opset or 13
        self.clip = node.attrs.get("clip")

    def const(self, value, name: str) -> gs.Constant:
        return self.b.const(value, name)

    def node(self, op: str, inputs, name: str, **attrs) -> gs.Variable:
        return self.b.node(op, inputs, name, attrs)

    def slice(self, x: gs.Tensor, start: int, end: int, axis: int, name: str) -> gs.Variable:
        if self.opset < 10:
            return self.node("Slice", [x], name, starts=[start], ends=[end], axes=[axis])
        ints = self.b.ints
        return self.node("Slice", [x, ints([start], f"{name}_start"), ints([end], f"{name}_end"),
                                   ints([axis], f"{name}_axis")], name)

    def unsqueeze(self, x: gs.Tensor, axis: int, name: str) -> gs.Variable:
        if self.opset < 13:
            return self.node("Unsqueeze", [x], name, axes=[axis])
        return self.node("Unsqueeze", [x, self.b.ints([axis], f"{name}_axes")], name)

    def squeeze(self, x: gs.Tensor, axis: int, name: str) -> gs.Variable:
        if self.opset < 13:
            return self.node("Squeeze", [x], name, axes=[axis])
        return self.node("Squeeze", [x, self.b.ints([axis], f"{name}_axes")], name)

    def activate(self, x: gs.Tensor, activation: tuple[str, float | None, float | None], name: str) -> gs.Variable:
        """``activation`` (name, alpha, beta) of ``x``, clipped first when the node clips."""
        if self.clip is not None:
            x = self.node("Clip", [x, self.const(-self.clip, f"{name}_lo"), self.const(self.clip, f"{name}_hi")],
                          f"{name}_clip")
        op, alpha, beta = activation
        if op == "Affine":
            return self.node("Add", [self.node("Mul", [x, self.const(alpha, f"{name}_alpha")], f"{name}_scale"),
                                     self.const(beta, f"{name}_beta")], name)
        if op == "ScaledTanh":
            inner = self.node("Mul", [x, self.const(beta, f"{name}_beta")], f"{name}_scale")
            return self.node("Mul", [self.node("Tanh", [inner], f"{name}_tanh"), self.const(alpha, f"{name}_alpha")],
                             name)
        attrs = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None}
        return self.node(op, [x], name, **attrs)


def _activations(node: gs.Node, directions: int) -> list[list[tuple]]:
    """Per direction, the (op, alpha, beta) of each activation the node applies."""
    names = node.attrs.get("activations") or _DEFAULTS[node.op] * directions
    alphas, betas = list(node.attrs.get("activation_alpha", [])), list(node.attrs.get("activation_beta", []))
    per_direction = len(_DEFAULTS[node.op])
    found = []
    for name in names:
        op = _ACTIVATIONS.get(str(name).lower())
        if op is None:
            raise ConversionError(f"activation '{name}' is not an ONNX recurrent activation", node=node.name,
                                  op_type=node.op)
        parametric = op in ("LeakyRelu", "ThresholdedRelu", "HardSigmoid", "Elu", "ScaledTanh", "Affine")
        alpha = alphas.pop(0) if parametric and alphas else None
        beta = betas.pop(0) if op in ("HardSigmoid", "ScaledTanh", "Affine") and betas else None
        found.append((op, alpha, beta))
    return [found[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    if len(node.inputs) <= i or (isinstance(node.inputs[i], gs.Variable) and not node.inputs[i].name):
        return None
    return node.inputs[i]


def _weights(node: gs.Node, i: int, what: str) -> np.ndarray | None:
    tensor = _input(node, i)
    if tensor is None:
        return None
    value = const_value(tensor)
    if value is None:
        raise ConversionError(f"the {what} (input {i}) must be a constant to unroll the layer", node=node.name,
                              op_type=node.op, fix="fold the weights into the graph as initializers")
    return value


def _unroll(graph: gs.Graph, node: gs.Node) -> list[str]:
    x = node.inputs[0]
    layout = node.attrs.get("layout", 0)
    direction = node.attrs.get("direction", "forward")
    directions = 2 if direction == "bidirectional" else 1
    hidden = int(node.attrs["hidden_size"])
    gates = _GATES[node.op]
    shape = x.shape
    length = shape[1] if (shape and layout) else (shape[0] if shape else None)
    if not isinstance(length, int):
        raise ConversionError(f"the {node.op}'s sequence length is not fixed, so it cannot be unrolled",
                              node=node.name, op_type=node.op,
                              fix="give example inputs (or --dim sizes) that fix the sequence length")
    w = _weights(node, 1, "input weight W")
    r = _weights(node, 2, "recurrent weight R")
    bias = _weights(node, 3, "bias B")
    lengths = _input(node, 4)
    mask = None
    if lengths is not None:
        value = const_value(lengths)
        if value is None:
            raise ConversionError(f"the {node.op}'s sequence_lens depend on the input; only constant lengths can be "
                                  "unrolled", node=node.name, op_type=node.op,
                                  fix="pad the sequences to one length, or fix sequence_lens in the graph")
        if not np.all(value == length):
            mask = value.astype(np.int64)
    peephole = _weights(node, 7, "peephole P") if node.op == "LSTM" else None
    b = Builder(graph, node.name, float_dtype(x))
    step = _Step(graph, node, b)
    if layout:
        x = step.node("Transpose", [x], "seq_first", perm=[1, 0, 2])
    activations = _activations(node, directions)
    zeros = _zero_state(step, x, hidden)
    initial_h, initial_c = _input(node, 5), _input(node, 6) if node.op == "LSTM" else None
    outputs_h, outputs_y, outputs_c = [], [], []
    for d in range(directions):
        tag = ("fw", "bw")[d] if directions == 2 else ""
        reverse = direction == "reverse" or d == 1
        wb = bias[d, :gates * hidden] if bias is not None else np.zeros(gates * hidden, w.dtype)
        rb = bias[d, gates * hidden:] if bias is not None else np.zeros(gates * hidden, w.dtype)
        prefix = f"{tag}_" if tag else ""
        # The input part of every gate at every step: one matrix product, biases folded in
        # where they sit outside a product (GRU keeps the recurrent h bias inside r * (...)).
        folded = wb + rb if node.op != "GRU" else wb + np.concatenate([rb[:2 * hidden], np.zeros(hidden, rb.dtype)])
        xw = step.node("Add", [step.node("MatMul", [x, step.const(w[d].T, f"{prefix}w")], f"{prefix}input_proj"),
                               step.const(folded, f"{prefix}input_bias")], f"{prefix}input_gates")
        h = _state(step, initial_h, d, zeros, layout, f"{prefix}h0")
        c = _state(step, initial_c, d, zeros, layout, f"{prefix}c0") if node.op == "LSTM" else None
        ys = [None] * length
        for t in (reversed(range(length)) if reverse else range(length)):
            name = f"{prefix}t{t}"
            xt = step.node("Gather", [xw, b.ints(t, f"{name}_index")], f"{name}_input", axis=0)
            # GRU without linear_before_reset multiplies r into H before the h gate's matrix.
            weights = r[d][:2 * hidden] if node.op == "GRU" and not node.attrs.get("linear_before_reset", 0) else r[d]
            recurrent = step.node("MatMul", [h, step.const(weights.T, f"{name}_r")], f"{name}_recurrent")
            if node.op == "LSTM":
                new_h, new_c = _lstm_step(step, xt, recurrent, c, hidden, activations[d],
                                          None if peephole is None else peephole[d], name)
            elif node.op == "GRU":
                new_h = _gru_step(step, xt, recurrent, h, hidden, activations[d], rb[2 * hidden:],
                                  node.attrs.get("linear_before_reset", 0), r[d], name)
                new_c = None
            else:
                new_h = step.activate(step.node("Add", [xt, recurrent], f"{name}_preactivation"), activations[d][0],
                                      f"{name}_hidden")
                new_c = None
            if mask is not None:
                active = gs.Constant(b._name(f"{node.name}_{name}_active"), (t < mask).reshape(-1, 1))
                ys[t] = step.node("Where", [active, new_h, step.const(0.0, f"{name}_zero")], f"{name}_output")
                h = step.node("Where", [active, new_h, h], f"{name}_kept_hidden")
                c = step.node("Where", [active, new_c, c], f"{name}_kept_cell") if new_c is not None else c
            else:
                ys[t], h, c = new_h, new_h, new_c
        outputs_y.append(step.node("Concat", [step.unsqueeze(y, 0, f"{prefix}t{t}_seq") for t, y in enumerate(ys)],
                                   f"{prefix}sequence", axis=0))
        outputs_h.append(h)
        outputs_c.append(c)
    _write_outputs(step, node, outputs_y, outputs_h, outputs_c, layout)
    return b.added


def _zero_state(step: _Step, x: gs.Tensor, hidden: int) -> gs.Variable:
    """Zeros ``[batch, hidden]``, the batch read from ``x`` (sequence first) at run time."""
    batch = step.slice(step.node("Shape", [x], "shape"), 1, 2, 0, "batch")
    size = step.node("Concat", [batch, step.b.ints([hidden], "hidden_size")], "state_shape", axis=0)
    zeros = step.node("ConstantOfShape", [size], "zero_state", value=gs.Constant("zero", np.zeros(1, step.b.dtype)))
    # Recorded here, so inference derives every step's shapes from it (batch symbol included).
    zeros.shape = [x.shape[1] if x.shape else None, hidden]
    return zeros


def _state(step: _Step, given: gs.Tensor | None, d: int, zeros: gs.Tensor, layout: int, name: str) -> gs.Tensor:
    """Direction ``d``'s initial state ``[batch, hidden]``: given (any producer), or zeros."""
    if given is None:
        return zeros
    return step.node("Gather", [given, step.b.ints(d, f"{name}_direction")], name, axis=1 if layout else 0)


def _lstm_step(step: _Step, xt, recurrent, c, hidden: int, activations, peephole, name: str):
    f, g, h = activations
    pre = step.node("Add", [xt, recurrent], f"{name}_preactivations")

    def gate(index: int) -> gs.Variable:
        return step.slice(pre, index * hidden, (index + 1) * hidden, 1, f"{name}_{('input', 'output', 'forget')[index]}_preactivation")

    if peephole is None:
        # i, o, f are the first three gates: one activation for all of them.
        sig = step.activate(step.slice(pre, 0, 3 * hidden, 1, f"{name}_iof_preactivation"), f, f"{name}_gates")
        i, o, fg = (step.slice(sig, k * hidden, (k + 1) * hidden, 1, f"{name}_{part}")
                    for k, part in enumerate(("input_gate", "output_gate", "forget_gate")))
    else:
        def peeped(index: int, state, weights) -> gs.Variable:
            product = step.node("Mul", [state, step.const(weights, f"{name}_p{index}")], f"{name}_peephole{index}")
            return step.node("Add", [gate(index), product], f"{name}_peeped{index}")

        p_i, p_o, p_f = (peephole[k * hidden:(k + 1) * hidden] for k in range(3))
        i = step.activate(peeped(0, c, p_i), f, f"{name}_input_gate")
        fg = step.activate(peeped(2, c, p_f), f, f"{name}_forget_gate")
    candidate = step.activate(step.slice(pre, 3 * hidden, 4 * hidden, 1, f"{name}_cell_preactivation"), g,
                              f"{name}_cell_candidate")
    new_c = step.node("Add", [step.node("Mul", [fg, c], f"{name}_forget_times_cell"),
                              step.node("Mul", [i, candidate], f"{name}_input_times_candidate")], f"{name}_cell")
    if peephole is not None:
        o = step.activate(peeped(1, new_c, p_o), f, f"{name}_output_gate")
    new_h = step.node("Mul", [o, step.activate(new_c, h, f"{name}_cell_activation")], f"{name}_hidden")
    return new_h, new_c


def _gru_step(step: _Step, xt, recurrent, h, hidden: int, activations, rb_h, linear_before_reset: int, r,
              name: str):
    f, g = activations
    zr = step.activate(step.node("Add", [step.slice(xt, 0, 2 * hidden, 1, f"{name}_zr_input"),
                                         step.slice(recurrent, 0, 2 * hidden, 1, f"{name}_zr_recurrent")],
                                 f"{name}_zr_preactivation"), f, f"{name}_gates")
    z = step.slice(zr, 0, hidden, 1, f"{name}_update_gate")
    reset = step.slice(zr, hidden, 2 * hidden, 1, f"{name}_reset_gate")
    x_h = step.slice(xt, 2 * hidden, 3 * hidden, 1, f"{name}_candidate_input")
    if linear_before_reset:
        recurrent_h = step.node("Add", [step.slice(recurrent, 2 * hidden, 3 * hidden, 1, f"{name}_candidate_recurrent"),
                                        step.const(rb_h, f"{name}_rb")], f"{name}_candidate_recurrent_bias")
        inner = step.node("Mul", [reset, recurrent_h], f"{name}_reset_times_recurrent")
    else:
        reset_h = step.node("Mul", [reset, h], f"{name}_reset_times_hidden")
        inner = step.node("Add", [step.node("MatMul", [reset_h, step.const(r[2 * hidden:].T, f"{name}_rh")],
                                            f"{name}_candidate_recurrent"), step.const(rb_h, f"{name}_rb")],
                          f"{name}_candidate_recurrent_bias")
    candidate = step.activate(step.node("Add", [x_h, inner], f"{name}_candidate_preactivation"), g,
                              f"{name}_candidate")
    kept = step.node("Mul", [z, step.node("Sub", [h, candidate], f"{name}_change")], f"{name}_update_times_change")
    return step.node("Add", [candidate, kept], f"{name}_hidden")


def _write_outputs(step: _Step, node: gs.Node, ys, hs, cs, layout: int) -> None:
    """Y ``[seq, dirs, batch, hidden]`` (``[batch, seq, dirs, hidden]`` with layout 1), Y_h and
    Y_c ``[dirs, batch, hidden]`` (``[batch, dirs, hidden]``), into the node's own outputs."""
    outputs = list(node.outputs) + [None] * 3
    node.outputs.clear()
    wanted_y, wanted_h, wanted_c = outputs[:3]
    if wanted_y is not None and wanted_y.name:
        stacked = step.node("Concat", [step.unsqueeze(y, 1, f"sequence{d}_dir") for d, y in enumerate(ys)],
                            "y_seq_first", axis=1)
        step.b.node("Transpose" if layout else "Identity", [stacked], "y",
                    {"perm": [2, 0, 1, 3]} if layout else {}, output=wanted_y)
    for wanted, states, label in ((wanted_h, hs, "y_h"), (wanted_c, cs, "y_c")):
        if wanted is None or not wanted.name:
            continue
        stacked = step.node("Concat", [step.unsqueeze(s, 1 if layout else 0, f"{label}{d}_dir")
                                       for d, s in enumerate(states)], f"{label}_stacked", axis=1 if layout else 0)
        step.b.node("Identity", [stacked], label, output=wanted)


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
    step = _Step(graph, node, b)
    for values, wanted in zip(scans, finals[count:]):
        b.node("Concat", [step.unsqueeze(v, 0, "scan") for v in values], "scan", {"axis": 0}, output=wanted)
    return b.added


def unroll_recurrences(graph: gs.Graph, options: PassOptions) -> PassResult:
    """LSTM, GRU, RNN and constant-trip-count Loops -> their steps, one after the other."""
    result = PassResult("unroll_recurrences")
    for node in list(graph.nodes):
        if node.op in _GATES and not node.domain:
            result.added.extend(_unroll(graph, node))
        elif node.op == "Loop" and not node.domain:
            result.added.extend(_unroll_loop(graph, node))
        else:
            continue
        result.removed.append(node.name)
    if result.removed:
        graph.cleanup().toposort()
    return result
