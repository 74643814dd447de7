"""Maxima the explainers handle exactly.

SHAP's and Captum's max-pool rule routes each window's change to the positions of its
maxima (for the input and for the reference) through ``max_unpool``; where windows overlap,
one position can be the maximum of several windows and all but one contribution is lost.
Overlapping max pooling (ResNet's stem, DenseNet, GoogLeNet, SqueezeNet, AlexNet) is
therefore marked ``shaprewrite.ExactMaxPool``: the same op, imported as a module whose
registered rule adds the contributions up, exact for any window, padding or dilation.
(Measured against the alternatives on a ResNet-18: a tree ``max(a, b) = a + Relu(b - a)``
over the window's slices is exact too, but cost 1.15x the SHAP time of a hand-fixed
model; the windows laid side by side for one non-overlapping pool, 1.2x forward time.)

Elementwise Max/Min of input-dependent tensors become ReLU trees. ReduceMax/ReduceMin
over static axes (softmax's shift) become one max pool whose windows are exactly the
reduced elements: non-overlapping, so the explainers' own rule is exact.
"""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from ..onnxkit.graph import (
    DOMAIN,
    Builder,
    const_value,
    float_dtype,
    is_float,
    replace_output,
    varying_tensors,
)
from ..ops.exact_max_pool import EXACT_MAX_POOL
from .base import PassOptions, PassResult, graph_pass, replace_each


def _tree(b: Builder, parts: list[gs.Tensor], suffix: str, combine) -> gs.Tensor:
    """A balanced pairwise tree of ``combine`` over ``parts``."""
    level = 0
    while len(parts) > 1:
        paired = [combine(b, parts[i], parts[i + 1], f"{suffix}{level}_{i // 2}") for i in range(0, len(parts) - 1, 2)]
        parts = paired + ([parts[-1]] if len(parts) % 2 else [])
        level += 1
    return parts[0]


def _windows_overlap(node: gs.Node, spatial: list[int]) -> bool:
    """False only when every window is kernel == stride with no dilation, padding or
    ceil_mode: there the explainers' own max-pool rule is exact."""
    n = len(spatial)
    kernel = list(node.attrs["kernel_shape"])
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        padded = any(size % s for size, s in zip(spatial, strides))  # SAME pads when s does not divide
    else:
        padded = auto_pad != "VALID" and any(node.attrs.get("pads", [0] * (2 * n)))
    return (padded or bool(node.attrs.get("ceil_mode", 0)) or kernel != strides
            or any(d != 1 for d in dilations))


def _exact_max_pool(node: gs.Node) -> bool:
    """Mark an overlapping MaxPool for import as ExactMaxPool; whether it was one."""
    x = node.inputs[0]
    if node.domain or (len(node.outputs) > 1 and node.outputs[1].outputs):
        return False  # ours already, or its Indices are read: keep the op
    shape = x.shape
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[2:]):
        return False
    if not _windows_overlap(node, list(shape[2:])):
        return False
    node.op, node.domain = EXACT_MAX_POOL.name, DOMAIN
    node.attrs.pop("storage_order", None)
    while len(node.outputs) > 1:
        node.outputs.pop()  # unread Indices: the function has one output
    return True


def _reduce_as_pool(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    """ReduceMax/ReduceMin over static axes: one non-overlapping max pool over the reduced
    elements moved last (``min x = -max(-x)``), so the explainers' own rule is exact."""
    x = node.inputs[0]
    if x.shape is None or not is_float(x):
        return None
    rank = len(x.shape)
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        found = const_value(node.inputs[1])
        axes = None if found is None else found.tolist()
    if axes is None or len(axes) == 0:
        return None
    axes = sorted(a + rank if a < 0 else a for a in axes)
    kept = [a for a in range(1, rank) if a not in axes]
    if 0 in axes or not all(isinstance(x.shape[a], int) for a in range(1, rank)):
        return None  # reducing over the batch, or over dynamic dims
    b = Builder(graph, node.name, float_dtype(x))
    source = b.node("Neg", [x], "neg") if node.op == "ReduceMin" else x
    if [0, *kept, *axes] != list(range(rank)):
        source = b.node("Transpose", [source], "move_axes", {"perm": [0, *kept, *axes]})
    window = math.prod(x.shape[a] for a in axes)
    rows = b.node("Reshape", [source, b.ints([0, -1, window], "rows_shape")], "rows")
    pooled = b.node("MaxPool", [rows], "pool", {"kernel_shape": [window], "strides": [window]})
    keep = node.attrs.get("keepdims", 1)
    shape = [0] + [x.shape[a] if a not in axes else 1 for a in range(1, rank) if keep or a not in axes]
    result = b.node("Reshape", [pooled, b.ints(shape, "out_shape")], "unrows",
                    output=None if node.op == "ReduceMin" else replace_output(node))
    if node.op == "ReduceMin":
        b.node("Neg", [result], "negate_back", output=replace_output(node))
    return b.added


def _elementwise_tree(graph: gs.Graph, node: gs.Node, varying: set[str]) -> list[str] | None:
    """Max/Min of several input-dependent tensors."""
    inputs = list(node.inputs)
    if len(inputs) < 2 or sum(t.name in varying for t in inputs) < 2 or not all(is_float(t) for t in inputs):
        return None
    b = Builder(graph, node.name, float_dtype(inputs[0]))
    result = _tree(b, inputs, "m", Builder.max_of if node.op == "Max" else Builder.min_of)
    b.node("Identity", [result], "out", output=replace_output(node))
    return b.added


@graph_pass
def exact_maxima(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Overlapping MaxPool -> ExactMaxPool; Max/Min of input-dependent tensors -> ReLU
    trees; ReduceMax/ReduceMin -> non-overlapping max pools."""
    varying = varying_tensors(graph)
    marked = [node.name for node in graph.nodes if node.op == "MaxPool" and _exact_max_pool(node)]

    def rewrite(node: gs.Node) -> list[str] | None:
        if node.op in ("ReduceMax", "ReduceMin"):
            return _reduce_as_pool(graph, node)
        if node.op in ("Max", "Min"):
            return _elementwise_tree(graph, node, varying)
        return None
    result = replace_each(graph, rewrite)
    result.changed = marked
    return result

