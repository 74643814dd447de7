"""Attributes checked against the ONNX spec before anything converts them.

ONNX's checker reads attribute *types*, not values: a ``MaxPool`` with ``kernel_shape`` of -1
passes it, onnxruntime refuses it, and torch fails on it deep in the rewritten module. Sizes
of windows, strides, dilations and pads, groups and axes are checked here, per node, and a
bad one is an :class:`~rewriter.errors.InputError` naming the node.
"""

from __future__ import annotations

import onnx

from .errors import InputError

# Ops with a sliding window: their window attributes, checked together.
_WINDOWED = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
             "MaxUnpool", "DeformConv", "Col2Im", "MaxRoiPool", "RoiAlign"}
_AXES_ATTRIBUTE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                   "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze", "Unsqueeze", "Slice",
                   "MeanVarianceNormalization"}
_FIX = "the file is malformed: re-export the model"


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints) if attr.type == onnx.AttributeProto.INTS else [attr.i]
    return None


def _refuse(node: onnx.NodeProto, message: str) -> None:
    raise InputError(message, fix=_FIX, node=node.name, op_type=node.op_type)


def _check_window(node: onnx.NodeProto) -> None:
    kernel = _ints(node, "kernel_shape")
    for name, least in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("pads", 0),
                        ("output_padding", 0)):
        values = _ints(node, name)
        if values is None:
            continue
        if any(v < least for v in values):
            _refuse(node, f"{name} {values} holds a value below {least}")
        expected = None if kernel is None else 2 * len(kernel) if name == "pads" else len(kernel)
        if expected is not None and name != "kernel_shape" and len(values) != expected:
            _refuse(node, f"{name} {values} has {len(values)} values for a {len(kernel)}-d kernel "
                          f"{kernel} (expected {expected})")
    group = _ints(node, "group")
    if group is not None and group[0] < 1:
        _refuse(node, f"group {group[0]} is below 1")


def _check_axes(node: onnx.NodeProto) -> None:
    axes = _ints(node, "axes")
    if axes is not None and len(set(axes)) != len(axes):
        _refuse(node, f"axes {axes} repeats an axis")


def check_attributes(graph: onnx.GraphProto) -> None:
    """Refuse (``InputError``) the first node of ``graph``, or of its subgraphs, whose window,
    group or axes attributes break the ONNX spec."""
    for node in graph.node:
        if node.op_type in _WINDOWED:
            _check_window(node)
        if node.op_type in _AXES_ATTRIBUTE:
            _check_axes(node)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                check_attributes(sub)
