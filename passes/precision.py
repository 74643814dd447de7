"""Half precision (float16, bfloat16) becomes float32 everywhere in the graph.

Explainers compute multipliers as ratios of small differences, which half precision makes
noisy, and SHAP's numba code does not take float16 at all. Mixed-precision graphs (Keras
``mixed_float16`` through tf2onnx, torch autocast) cast to half around convolutions and
matmuls; those casts become no-ops and are dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, numpy_helper

from ..onnxkit.graph import bypass
from ..onnxkit.weights import adopt, type_and_size
from .base import PassOptions, PassResult, graph_pass

HALF_TYPES = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
# Attributes that name an element type.
_TYPE_ATTRIBUTES = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomNormalLike": "dtype",
                    "RandomUniform": "dtype", "RandomUniformLike": "dtype", "Multinomial": "dtype"}


def _upcast_tensor(tensor: TensorProto) -> bool:
    if tensor.data_type not in HALF_TYPES:
        return False
    array = numpy_helper.to_array(tensor).astype(np.float32)
    upcast = numpy_helper.from_array(array, tensor.name)
    tensor.CopyFrom(upcast)
    return True


def _upcast_type(tp: onnx.TypeProto) -> bool:
    if tp.HasField("tensor_type") and tp.tensor_type.elem_type in HALF_TYPES:
        tp.tensor_type.elem_type = TensorProto.FLOAT
        return True
    return False


def half_precision_type(model: onnx.ModelProto) -> int | None:
    """The half type (TensorProto.FLOAT16 or BFLOAT16) any value, constant or cast of
    ``model`` has, or None."""
    graph = model.graph
    found = [t.data_type for t in graph.initializer]
    found += [vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.output, *graph.value_info]]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                found.append(attr.t.data_type)
            elif attr.name == _TYPE_ATTRIBUTES.get(node.op_type):
                found.append(attr.i)
    return next((t for t in found if t in HALF_TYPES), None)


def _holds_half(graph: gs.Graph) -> bool:
    """Whether any value, constant or cast of ``graph`` is half precision: what
    :func:`half_precision_type` reads in a model, read off the graph without exporting it."""
    def is_half(tensor: gs.Tensor) -> bool:
        if isinstance(tensor, gs.Constant):
            found = type_and_size(tensor)
            return found is not None and found[0] in HALF_TYPES
        # graphsurgeon gives numpy's types, and ONNX's own number for those numpy lacks (bfloat16).
        dtype = tensor.dtype
        return dtype in HALF_TYPES if isinstance(dtype, int) else dtype is not None and np.dtype(dtype).name in ("float16", "bfloat16")

    return (any(is_half(tensor) for tensor in graph.tensors().values())
            or any((isinstance(value, gs.Constant) and is_half(value))
                   or (name == _TYPE_ATTRIBUTES.get(node.op) and value in HALF_TYPES)
                   for node in graph.nodes for name, value in node.attrs.items()))


def upcast_model(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model`` in place to float32 wherever it holds half precision; returns the
    names of the nodes changed (graph inputs, outputs and initializers are changed too)."""
    graph = model.graph
    for tensor in graph.initializer:
        _upcast_tensor(tensor)
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        _upcast_type(vi.type)
    changed = []
    for node in graph.node:
        touched = False
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                touched |= _upcast_tensor(attr.t)
            elif attr.name == _TYPE_ATTRIBUTES.get(node.op_type) and attr.i in HALF_TYPES:
                attr.i = TensorProto.FLOAT
                touched = True
        if touched:
            changed.append(node.name)
    return changed


def _drop_float_casts(graph: gs.Graph) -> list[str]:
    """Casts to float32 of float32 tensors pass their input through: remove them."""
    removed = []
    for node in list(graph.nodes):
        if node.op != "Cast" or node.attrs.get("to") != TensorProto.FLOAT or node.outputs[0] in graph.outputs:
            continue
        source = node.inputs[0]
        if getattr(source, "dtype", None) is None or np.dtype(source.dtype) != np.float32:
            continue
        bypass(node, source)
        removed.append(node.name)
    graph.cleanup()
    return removed


@graph_pass
def upcast_half_precision(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Make every float16/bfloat16 initializer, constant, cast target, input, output and
    recorded type float32, then drop the casts that became no-ops."""
    from ..onnxkit.shapes import refresh_shapes  # shapes imports this module's package

    result = PassResult()
    if not _holds_half(graph):
        return result
    model = gs.export_onnx(graph, do_type_check=False)  # the upcast needs the weights' values
    half_inputs = [vi.name for vi in model.graph.input if vi.type.tensor_type.elem_type in HALF_TYPES]
    result.changed = half_inputs + upcast_model(model)
    adopt(graph, model, {})
    refresh_shapes(graph)
    result.removed = _drop_float_casts(graph)
    graph.cleanup()
    return result
