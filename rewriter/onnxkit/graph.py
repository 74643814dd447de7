"""Small helpers for reading and editing onnx-graphsurgeon graphs, shared by the passes."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ..naming import fresh_name

# Fused ops that ONNX has no standard op for (or not at every opset) live in this domain,
# each as a model-local function (see onnxkit/functions.py).
DOMAIN = "shaprewrite"


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a tensor fixed at export time: an initializer, a Constant node's output,
    or a Cast/CastLike/Identity of one."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        for key in ("value_float", "value_int", "value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        return None
    if node.op in ("Cast", "CastLike", "Identity") and node.inputs:
        return const_value(node.inputs[0])
    if node.op in _RESHAPES:
        return _reshaped_constant(node)
    return None


_RESHAPES = {"Reshape", "Unsqueeze", "Squeeze", "Flatten"}


def _reshaped_constant(node: gs.Node) -> np.ndarray | None:
    """A constant only reshaped (how exporters shape a PReLU slope or a bias to broadcast)."""
    data = const_value(node.inputs[0])
    if data is None:
        return None
    if node.op == "Flatten":
        axis = node.attrs.get("axis", 1)
        return data.reshape(int(np.prod(data.shape[:axis])), -1)
    arg = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.op == "Reshape":
        if arg is None:
            return None
        target = [data.shape[i] if d == 0 else int(d) for i, d in enumerate(arg.tolist())]
        return data.reshape(target)
    axes = arg.tolist() if arg is not None else node.attrs.get("axes")
    if node.op == "Squeeze":
        return np.squeeze(data, axis=tuple(axes)) if axes is not None else np.squeeze(data)
    if axes is None:
        return None
    rank = data.ndim + len(axes)
    for axis in sorted(a + rank if a < 0 else a for a in axes):
        data = np.expand_dims(data, axis)
    return data


def is_const(tensor: gs.Tensor, value: float, rtol: float = 1e-5) -> bool:
    """Whether ``tensor`` is a constant equal to ``value`` everywhere (within ``rtol``)."""
    found = const_value(tensor)
    return found is not None and found.size > 0 and bool(np.allclose(found, value, rtol=rtol, atol=0))


def scalar_value(tensor: gs.Tensor) -> float | None:
    found = const_value(tensor)
    if found is None or found.size != 1:
        return None
    return float(found.reshape(()))


def only_consumer(tensor: gs.Tensor) -> gs.Node | None:
    """The single node reading ``tensor``'s values, if exactly one does. A CastLike that
    reads only its type (the dynamo exporter types every constant that way) does not count."""
    readers = [n for n in tensor.outputs
               if not (n.op == "CastLike" and n.inputs[1] is tensor and n.inputs[0] is not tensor)]
    return readers[0] if len(readers) == 1 else None


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """For a two-input node, the input that is not ``tensor``."""
    if len(node.inputs) != 2:
        return None
    if node.inputs[0] is tensor:
        return node.inputs[1]
    if node.inputs[1] is tensor:
        return node.inputs[0]
    return None


# The names taken in a graph, by id(graph), while a pass adds nodes only through Builders;
# None until the first Builder asks (most passes find nothing to rewrite on most graphs).
_SHARED_NAMES: dict[int, set[str] | None] = {}


@contextlib.contextmanager
def shared_names(graph: gs.Graph):
    """Within, every Builder on ``graph`` shares one set of its taken names, built once: a
    set per Builder made a pass that rewrites every node quadratic in the graph's size.
    Only Builders may add names to ``graph`` meanwhile."""
    _SHARED_NAMES[id(graph)] = None
    try:
        yield
    finally:
        del _SHARED_NAMES[id(graph)]


def _taken_names(graph: gs.Graph) -> set[str]:
    # Constants are named like nodes: a name must be new among both.
    return {n.name for n in graph.nodes} | set(graph.tensors())


class Builder:
    """Adds nodes named after the node they replace, with constants typed like the data."""

    def __init__(self, graph: gs.Graph, base: str, dtype=np.float32) -> None:
        self.graph, self.base, self.dtype = graph, base, dtype
        self.added: list[str] = []
        key = id(graph)
        if key in _SHARED_NAMES:
            if _SHARED_NAMES[key] is None:
                _SHARED_NAMES[key] = _taken_names(graph)
            self._taken = _SHARED_NAMES[key]
        else:
            self._taken = _taken_names(graph)

    def _name(self, wanted: str) -> str:
        name = fresh_name(wanted, self._taken.__contains__)
        self._taken.add(name)
        return name

    def const(self, value, suffix: str) -> gs.Constant:
        return gs.Constant(self._name(f"{self.base}_{suffix}"), np.asarray(value, dtype=self.dtype))

    def node(self, op: str, inputs: Sequence[gs.Tensor], suffix: str, attrs: dict | None = None,
             output: gs.Variable | None = None, domain: str | None = None) -> gs.Variable:
        """Add ``op`` named ``<base>_<suffix>`` (``<base>`` for an empty suffix); its output."""
        name = self._name(f"{self.base}_{suffix}" if suffix else self.base)
        # No dtype on the new value: inference gives each op its own (Shape's is int64).
        out = output if output is not None else gs.Variable(self._name(f"{name}_out"))
        self.graph.nodes.append(gs.Node(op, name, attrs or {}, list(inputs), [out], domain=domain))
        self.added.append(name)
        return out


    def reduce(self, op: str, x: gs.Tensor, axes: Sequence[int], suffix: str, keepdims: int = 1) -> gs.Variable:
        """A Reduce* node; axes are an input from opset 18 (13 for ReduceSum), else an attribute."""
        since = 13 if op == "ReduceSum" else 18
        if (self.graph.opset or 0) >= since:
            axes_tensor = self.ints(list(axes), f"{suffix}_axes")
            return self.node(op, [x, axes_tensor], suffix, {"keepdims": keepdims})
        return self.node(op, [x], suffix, {"axes": list(axes), "keepdims": keepdims})

    def shape_of(self, x: gs.Tensor, suffix: str) -> gs.Tensor:
        """A Reshape target giving ``x``'s shape for data that keeps ``x``'s first dim: constant
        when the dims after the first are static (0 copies the data's first), so inference
        keeps knowing the shape; else ``Shape(x)``."""
        if x.shape and all(isinstance(d, int) for d in x.shape[1:]):
            return self.ints([0, *x.shape[1:]], suffix)
        return self.node("Shape", [x], suffix)

    def ints(self, values: Sequence[int], suffix: str) -> gs.Constant:
        return gs.Constant(self._name(f"{self.base}_{suffix}"), np.asarray(values, dtype=np.int64))

    def max_of(self, a: gs.Tensor, b: gs.Tensor, suffix: str) -> gs.Variable:
        """``max(a, b) = a + Relu(b - a)``: exact under DeepLIFT, one ReLU module."""
        return self.node("Add", [a, self.node("Relu", [self.node("Sub", [b, a], f"{suffix}_diff")], suffix)],
                         f"{suffix}_add")

    def min_of(self, a: gs.Tensor, b: gs.Tensor, suffix: str) -> gs.Variable:
        """``min(a, b) = a - Relu(a - b)``."""
        return self.node("Sub", [a, self.node("Relu", [self.node("Sub", [a, b], f"{suffix}_diff")], suffix)],
                         f"{suffix}_sub")


def bypass(node: gs.Node, source: gs.Tensor) -> None:
    """Take ``node`` out of the graph: what read its first output reads ``source`` instead."""
    target = node.outputs[0]
    for consumer in list(target.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is target:
                consumer.inputs[i] = source
    node.inputs.clear()
    node.outputs.clear()


def softmax_axis(axis: int | None, opset: int) -> int:
    """The axis of a Softmax/LogSoftmax/Hardmax: its ``axis`` attribute, else the default,
    which opset 13 changed from 1 (all dims from 1 on) to -1."""
    if axis is not None:
        return axis
    return -1 if opset >= 13 else 1


def replace_output(node: gs.Node) -> gs.Variable:
    """Detach ``node``'s first output so new nodes can produce it; the node becomes dead."""
    out = node.outputs[0]
    node.outputs.clear()
    return out


def float_dtype(tensor: gs.Tensor):
    """The numpy float dtype of a tensor, float32 when not recorded."""
    dtype = getattr(tensor, "dtype", None)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return np.float32
    return dtype if dtype.kind == "f" else np.float32


def toposorted(graph: gs.Graph) -> gs.Graph:
    """``graph``, its nodes ordered so each runs after what it reads. Most graphs already are
    (graphsurgeon's sort costs ~40 ms per 1,000 nodes), so it sorts only those that are not;
    a node with a subgraph, which may read values of this graph implicitly, always sorts."""
    ready = {id(t) for t in graph.inputs}
    for node in graph.nodes:
        if any(node.subgraphs()) or any(id(t) not in ready for t in node.inputs
                                        if isinstance(t, gs.Variable) and t.name and t.inputs):
            return graph.toposort()
        ready.update(id(t) for t in node.outputs)
    return graph


# Ops whose output carries no information about their data input's values.
_VALUE_FREE = {"Shape", "Size", "ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike"}
# Ops whose output depends on their input's values but carries no gradient back to it: truth
# values, positions, integers. What flows from them is decided by the input, not explained.
GRADIENT_FREE_OPS = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
                     "IsNaN", "IsInf", "ArgMax", "ArgMin", "NonZero", "BitShift", "BitwiseAnd", "BitwiseOr",
                     "BitwiseXor", "BitwiseNot"}
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def cuts_gradient(op: str, attrs: dict, output_index: int = 0) -> bool:
    """Whether output ``output_index`` of an ``op`` node carries no gradient back to its inputs:
    the gradient-free ops, a cast to a non-float type, the indices of ``TopK``."""
    if op in GRADIENT_FREE_OPS or (op == "TopK" and output_index == 1):
        return True
    return op == "Cast" and attrs.get("to") not in _FLOAT_TYPES


def varying_tensors(graph: gs.Graph) -> set[str]:
    """Names of tensors whose values depend on the explained graph inputs (not only on their
    shapes) and carry their gradient: what the float inputs reach through the nodes' data
    inputs, short of the gradient-free ops (no toposort, which cost a third of a second per
    call on BERT-base). Integer inputs (a mask, ids read directly) are context, shared by a
    row and its references: what only they decide is fixed for the explainers."""
    explained = [t for t in graph.inputs if is_float(t)]
    varying = {t.name for t in explained}
    pending = list(explained)
    while pending:
        tensor = pending.pop()
        for node in tensor.outputs:
            # CastLike reads only the type of its second input.
            if node.op in _VALUE_FREE or (node.op == "CastLike" and node.inputs[0] is not tensor):
                continue
            for index, out in enumerate(node.outputs):
                if cuts_gradient(node.op, node.attrs, index):
                    continue  # decided by the inputs, explained by nothing: no rule goes on it
                if out.name not in varying:
                    varying.add(out.name)
                    pending.append(out)
    return varying


def batch_dims(graph: gs.Graph) -> set:
    """The batch, as the graph inputs' leading dims say (see :func:`leading_batch`)."""
    return leading_batch([t.shape for t in graph.inputs])


def leading_batch(shapes) -> set:
    """The batch's symbols: the symbolic leading dims of the inputs (those that carry the
    batch); without any, a fixed leading dim every input shares. Empty when there is no
    batch (fixed shapes whose leading dims differ: a broadcast operand is no batch)."""
    leading = [shape[0] if shape else None for shape in shapes]
    symbols = {d for d in leading if isinstance(d, str)}
    if symbols:
        return symbols
    return set(leading) if len(set(leading)) == 1 and isinstance(leading[0], int) else set()


def is_float(tensor: gs.Tensor) -> bool:
    """False only when the tensor is known to hold non-float values (shape arithmetic)."""
    dtype = getattr(tensor, "dtype", None)
    try:
        return dtype is None or np.dtype(dtype).kind == "f"
    except TypeError:
        return True
