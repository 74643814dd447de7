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

from .base import PassOptions, PassResult, replace_each
from .graph import DOMAIN, Builder, const_value, float_dtype, is_float, replace_output


def _normalize(b: Builder, x: gs.Tensor, axes: list[int], eps: float) -> gs.Tensor:
    """Standardize ``x`` over ``axes`` (trailing): one ``shaprewrite.Standardize`` over the
    last dim, with the trailing axes flattened into one first when there are several."""
    rank = len(x.shape)
    if axes == [rank - 1]:
        return b.node("Standardize", [x], "standardize", {"epsilon": eps}, domain=DOMAIN)
    rows = b.node("Reshape", [x, b.ints([0, *x.shape[1:axes[0]], -1], "rows_shape")], "rows")
    standardized = b.node("Standardize", [rows], "standardize", {"epsilon": eps}, domain=DOMAIN)
    return b.node("Reshape", [standardized, b.node("Shape", [x], "shape")], "unrows")


def _affine(b: Builder, y: gs.Tensor, scale: np.ndarray | None, bias: np.ndarray | None, out: gs.Variable) -> None:
    if scale is not None and bias is not None:
        b.node("Add", [b.node("Mul", [y, b.const(scale, "weight")], "scale"), b.const(bias, "bias")], "shift",
               output=out)
    elif scale is not None:
        b.node("Mul", [y, b.const(scale, "weight")], "scale", output=out)
    else:
        b.node("Identity", [y], "out", output=out)


def _channel_shaped(value: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast over an N, C, spatial... tensor."""
    return value.reshape(-1, *([1] * (rank - 2)))


def _optional_const(node: gs.Node, i: int):
    if len(node.inputs) <= i or (isinstance(node.inputs[i], gs.Variable) and not node.inputs[i].name):
        return None, True
    value = const_value(node.inputs[i])
    return value, value is not None


def _decompose_norm(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    x = node.inputs[0]
    if x.shape is None or not is_float(x):
        return None
    rank = len(x.shape)
    scale, ok_scale = _optional_const(node, 1)
    bias, ok_bias = _optional_const(node, 2)
    if not (ok_scale and ok_bias):
        return None
    eps = float(node.attrs.get("epsilon", 1e-5))
    b = Builder(graph, node.name, float_dtype(x))
    if node.op == "LayerNormalization":
        if len(node.outputs) > 1 and any(o.outputs for o in node.outputs[1:]):
            return None  # Mean / InvStdDev are read
        axis = node.attrs.get("axis", -1)
        axis = axis + rank if axis < 0 else axis
        _affine(b, _normalize(b, x, list(range(axis, rank)), eps), scale, bias, replace_output(node))
    elif node.op == "InstanceNormalization":
        _affine(b, _normalize(b, x, list(range(2, rank)), eps), _channel_shaped(scale, rank),
                _channel_shaped(bias, rank), replace_output(node))
    else:  # GroupNormalization
        groups = int(node.attrs["num_groups"])
        channels = x.shape[1]
        if not isinstance(channels, int) or scale is None or bias is None:
            return None
        if scale.size != channels:  # opset 18: one scale per group
            scale, bias = np.repeat(scale, channels // groups), np.repeat(bias, channels // groups)
        grouped = b.node("Reshape", [x, b.ints([0, groups, -1], "group_shape")], "group")
        standardized = b.node("Standardize", [grouped], "standardize", {"epsilon": eps}, domain=DOMAIN)
        restored = b.node("Reshape", [standardized, b.node("Shape", [x], "shape")], "ungroup")
        _affine(b, restored, _channel_shaped(scale, rank), _channel_shaped(bias, rank), replace_output(node))
    return b.added


def decompose_normalization(graph: gs.Graph, options: PassOptions) -> PassResult:
    """LayerNormalization, InstanceNormalization, GroupNormalization -> Standardize + affine."""
    norms = ("LayerNormalization", "InstanceNormalization", "GroupNormalization")
    return replace_each(graph, "decompose_normalization",
                        lambda node: _decompose_norm(graph, node) if node.op in norms else None)


def _decompose_log_softmax(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    x = node.inputs[0]
    if x.shape is None or not is_float(x):
        return None
    rank = len(x.shape)
    opset = graph.opset or 13
    axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
    axis = axis + rank if axis < 0 else axis
    if (opset < 13 and axis != rank - 1) or axis == 0 or not isinstance(x.shape[axis], int):
        return None
    b = Builder(graph, node.name, float_dtype(x))
    shifted = b.node("Sub", [x, b.reduce("ReduceMax", x, [axis], "max")], "shift")
    exp = b.node("Exp", [shifted], "exp")
    total = b.reduce("ReduceSum", exp, [axis], "sum")
    b.node("Sub", [shifted, b.node("Log", [total], "log_sum")], "normalize", output=replace_output(node))
    return b.added


def decompose_log_softmax(graph: gs.Graph, options: PassOptions) -> PassResult:
    """LogSoftmax over a static axis -> max, exp, sum, log, subtraction.

    (Softmax itself is imported as one ExactSoftmax module whose rule is its decomposition's.)
    """
    return replace_each(graph, "decompose_log_softmax", lambda node: _decompose_log_softmax(graph, node)
                        if node.op == "LogSoftmax" else None)
