"""Normalisations and softmax, written with pieces that each have an exact DeepLIFT rule.

``(x - mean) * (var + eps)^-1/2`` over the last dim is one ``shaprewrite.Standardize`` node,
whose body is the exact decomposition (means and centring linear, square and inverse
square root rescaled, one Shapley product); the importer makes it one module running the
fused kernel, with that decomposition's multipliers as its registered rule. Other axes
are reshaped to the last dim first; the affine part stays linear. Softmax is
``exp(x - max x) * (sum exp(x - max x))^-1``: the max is a ReLU tree (passes/maxima.py),
exp and the reciprocal are elementwise, the sum is linear, the rest is a product: it is
imported as one ExactSoftmax module with that decomposition's multipliers as its rule;
LogSoftmax is decomposed here.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..onnxkit.facts import group_scale_repeats
from ..onnxkit.graph import (
    DOMAIN,
    Builder,
    const_value,
    float_dtype,
    is_float,
    replace_output,
    softmax_axis,
)
from .base import PassOptions, PassResult, graph_pass, replace_each


def _normalize(b: Builder, x: gs.Tensor, axes: list[int], eps: float) -> gs.Tensor:
    """Standardize ``x`` over ``axes`` (trailing): one ``shaprewrite.Standardize`` over the
    last dim, with the trailing axes flattened into one first when there are several."""
    rank = len(x.shape)
    if axes == [rank - 1]:
        return b.node("Standardize", [x], "standardize", {"epsilon": eps}, domain=DOMAIN)
    rows = b.node("Reshape", [x, b.ints([0] * axes[0] + [-1], "rows_shape")], "rows")
    standardized = b.node("Standardize", [rows], "standardize", {"epsilon": eps}, domain=DOMAIN)
    # Over axis 0 too (the whole tensor is one row) the rows do not keep x's first dim, which
    # shape_of's constant copies from the data.
    shape = b.node("Shape", [x], "shape") if axes[0] == 0 else b.shape_of(x, "shape")
    return b.node("Reshape", [standardized, shape], "unrows")


def _affine(b: Builder, y: gs.Tensor, scale: gs.Tensor | None, bias: gs.Tensor | None, out: gs.Variable) -> None:
    if scale is not None:
        y = b.node("Mul", [y, scale], "scale")
    if bias is not None:
        y = b.node("Add", [y, bias], "shift")
    b.node("Identity", [y], "out", output=out)


def _parameter(b: Builder, node: gs.Node, i: int, shape: list[int] | None, name: str,
               repeats: int = 1) -> gs.Tensor | None:
    """Input ``i`` (a scale or bias) shaped ``shape`` to broadcast, each element repeated
    ``repeats`` times first (GroupNormalization's per-group scales at opset 18); a constant
    when it is one, else nodes reshaping the value computed at run time. None when absent."""
    if len(node.inputs) <= i or (isinstance(node.inputs[i], gs.Variable) and not node.inputs[i].name):
        return None
    value = const_value(node.inputs[i])
    if value is not None:
        value = np.repeat(value.reshape(-1), repeats) if repeats > 1 else value
        return b.const(value.reshape(shape) if shape else value, name)
    tensor = node.inputs[i]
    if repeats > 1:
        per_group = b.node("Reshape", [tensor, b.ints([-1, 1], f"{name}_column")], f"{name}_groups")
        tensor = b.node("Expand", [per_group, b.ints([1, repeats], f"{name}_repeats")], f"{name}_repeated")
    return b.node("Reshape", [tensor, b.ints(shape, f"{name}_shape")], f"{name}_shaped") if shape else tensor


def _decompose_norm(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    x = node.inputs[0]
    if x.shape is None or not is_float(x):
        return None
    rank = len(x.shape)
    eps = float(node.attrs.get("epsilon", 1e-5))
    b = Builder(graph, node.name, float_dtype(x))
    channels = [-1, *([1] * (rank - 2))]  # a per-channel vector broadcast over N, C, spatial...
    if node.op == "LayerNormalization":
        axis = node.attrs.get("axis", -1)
        axis = axis + rank if axis < 0 else axis
        axes = list(range(axis, rank))
        _statistics(b, node, x, axes, eps)
        y = _normalize(b, x, axes, eps)
        _affine(b, y, _parameter(b, node, 1, None, "weight"), _parameter(b, node, 2, None, "bias"),
                replace_output(node))
    elif node.op == "InstanceNormalization":
        y = _normalize(b, x, list(range(2, rank)), eps)
        _affine(b, y, _parameter(b, node, 1, channels, "weight"), _parameter(b, node, 2, channels, "bias"),
                replace_output(node))
    else:  # GroupNormalization
        groups = int(node.attrs["num_groups"])
        size = x.shape[1]
        scale_shape = node.inputs[1].shape if len(node.inputs) > 1 else None
        if not isinstance(size, int) or not scale_shape or not isinstance(scale_shape[0], int):
            return None
        repeats = group_scale_repeats(scale_shape[0], size, groups)
        grouped = b.node("Reshape", [x, b.ints([0, groups, -1], "group_shape")], "group")
        standardized = b.node("Standardize", [grouped], "standardize", {"epsilon": eps}, domain=DOMAIN)
        restored = b.node("Reshape", [standardized, b.shape_of(x, "shape")], "ungroup")
        _affine(b, restored, _parameter(b, node, 1, channels, "weight", repeats),
                _parameter(b, node, 2, channels, "bias", repeats), replace_output(node))
    return b.added


def _statistics(b: Builder, node: gs.Node, x: gs.Tensor, axes: list[int], eps: float) -> None:
    """LayerNormalization's optional outputs Mean and InvStdDev, when something reads them."""
    outputs = list(node.outputs[1:3])
    if not any(o.outputs or o in b.graph.outputs for o in outputs):
        return
    while len(node.outputs) > 1:  # they are computed below; the node keeps only Y
        node.outputs.pop()
    mean = b.reduce("ReduceMean", x, axes, "mean")
    if outputs:
        b.node("Identity", [mean], "mean_out", output=outputs[0])
    if len(outputs) > 1:
        centered = b.node("Sub", [x, mean], "centered")
        variance = b.reduce("ReduceMean", b.node("Mul", [centered, centered], "squared"), axes, "variance")
        std = b.node("Sqrt", [b.node("Add", [variance, b.const(eps, "eps")], "variance_eps")], "std")
        b.node("Reciprocal", [std], "inv_std", output=outputs[1])


def _decompose_lp(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    """LpNormalization: ``x / ||x||_p`` along the axis (a product with a reciprocal)."""
    x = node.inputs[0]
    p = int(node.attrs.get("p", 2))
    if x.shape is None or p not in (1, 2):
        return None
    b = Builder(graph, node.name, float_dtype(x))
    norm = b.reduce("ReduceL2" if p == 2 else "ReduceL1", x, [node.attrs.get("axis", -1)], "norm")
    divided = b.node("Div", [x, norm], "divide")
    # A zero norm gives 0, as onnxruntime does (0 / 0 would be NaN): the guard is linear.
    nan = b.node("IsNaN", [divided], "is_nan")
    b.node("Where", [nan, b.const(0.0, "zero"), divided], "normalize", output=replace_output(node))
    return b.added


def _decompose_lrn(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    """LRN: ``x / (bias + alpha / size * sum of x^2 over neighbouring channels)^beta``, the
    channel window summed by a pooling over a channel axis made spatial."""
    x = node.inputs[0]
    if x.shape is None or len(x.shape) < 3 or not isinstance(x.shape[1], int):
        return None
    size = int(node.attrs["size"])
    alpha, beta, bias = (float(node.attrs.get(k, d)) for k, d in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    b = Builder(graph, node.name, float_dtype(x))
    squared = b.node("Pow", [x, b.const(2.0, "two")], "square")
    planes = b.node("Reshape", [squared, b.ints([0, 1, x.shape[1], -1], "planes_shape")], "planes")
    before, after = (size - 1) // 2, size // 2
    window = b.node("AveragePool", [planes], "window", {"kernel_shape": [size, 1], "pads": [before, 0, after, 0],
                                                        "count_include_pad": 1})
    total = b.node("Reshape", [window, b.shape_of(x, "shape")], "window_sum")
    scaled = b.node("Add", [b.node("Mul", [total, b.const(alpha, "alpha")], "scale"), b.const(bias, "bias")], "base")
    b.node("Div", [x, b.node("Pow", [scaled, b.const(beta, "beta")], "power")], "normalize",
           output=replace_output(node))
    return b.added


@graph_pass
def decompose_normalization(graph: gs.Graph, options: PassOptions) -> PassResult:
    """LayerNormalization, InstanceNormalization, GroupNormalization -> Standardize + affine;
    LpNormalization and LRN -> their norms and a division."""
    norms = ("LayerNormalization", "InstanceNormalization", "GroupNormalization")
    others = {"LpNormalization": _decompose_lp, "LRN": _decompose_lrn}

    def rewrite(node: gs.Node) -> list[str] | None:
        if node.op in norms:
            return _decompose_norm(graph, node)
        return others[node.op](graph, node) if node.op in others else None
    return replace_each(graph, rewrite)


def _decompose_log_softmax(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    x = node.inputs[0]
    if x.shape is None or not is_float(x):
        return None
    rank = len(x.shape)
    opset = graph.opset or 13
    axis = softmax_axis(node.attrs.get("axis"), opset)
    axis = axis + rank if axis < 0 else axis
    if (opset < 13 and axis != rank - 1) or axis == 0 or not isinstance(x.shape[axis], int):
        return None
    b = Builder(graph, node.name, float_dtype(x))
    shifted = b.node("Sub", [x, b.reduce("ReduceMax", x, [axis], "max")], "shift")
    exp = b.node("Exp", [shifted], "exp")
    total = b.reduce("ReduceSum", exp, [axis], "sum")
    b.node("Sub", [shifted, b.node("Log", [total], "log_sum")], "normalize", output=replace_output(node))
    return b.added


@graph_pass
def decompose_log_softmax(graph: gs.Graph, options: PassOptions) -> PassResult:
    """LogSoftmax over a static axis -> max, exp, sum, log, subtraction.

    (Softmax itself is imported as one ExactSoftmax module whose rule is its decomposition's.)
    """
    return replace_each(graph, lambda node: _decompose_log_softmax(graph, node)
                        if node.op == "LogSoftmax" else None)
