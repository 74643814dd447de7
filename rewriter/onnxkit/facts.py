"""Small facts about an ONNX model, each read one way: its standard opset, its runtime inputs,
the dims of a type, the name the batch dim goes by, how GroupNormalization's scales map
to channels."""

from __future__ import annotations

import onnx

STANDARD_DOMAINS = ("", "ai.onnx")
BATCH = "batch"  # the symbol a dynamic batch dim is named by
Dim = int | str | None


def opset_of(model: onnx.ModelProto, default: int = 1) -> int:
    """The version of the standard domain ``model`` imports (``default`` when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), default)


def runtime_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's inputs that are fed at run time (not initializers, which older files list
    among the inputs too)."""
    initializers = {t.name for t in graph.initializer}
    return [vi for vi in graph.input if vi.name not in initializers]


def dim_of(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    """A dim's size (0 included), its symbol, or None where neither is recorded."""
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param if dim.HasField("dim_param") else None


def dims_of(tp: onnx.TypeProto) -> list[Dim] | None:
    """The dims of a tensor type; None where it records no shape."""
    if not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return None
    return [dim_of(d) for d in tp.tensor_type.shape.dim]


def group_scale_repeats(scales: int, channels: int, groups: int) -> int:
    """How many channels each GroupNormalization scale and bias element covers: one per
    channel since opset 21, one per group at opset 18."""
    return 1 if scales == channels else channels // groups
