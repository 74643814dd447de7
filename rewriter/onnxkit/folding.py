"""Constant folding by onnxscript's folder, within size limits checked before a node is computed."""

from __future__ import annotations

import math

import onnx
import onnx_ir as ir
from onnxscript import optimizer

from .shapes import dims_of

# Integer inputs up to this size are handed to the size check by value: shape inference reads
# a shape, a repeat count or a range's bounds, never a weight.
_READ_ELEMENTS = 1024


def _output_elements(node: ir.Node, opsets: dict[str, int]) -> int | None:
    """How many elements ``node``, all of whose inputs are constants, computes, from ONNX's
    shape inference of that node alone on its inputs' values; None where it cannot tell."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(node.domain, 1), node.domain)
        proto = ir.serde.serialize_node(node)
        inputs = [v for v in node.inputs if v is not None]
        types = {v.name: onnx.helper.make_tensor_type_proto(int(v.const_value.dtype), list(v.const_value.shape))
                 for v in inputs}
        data = {v.name: ir.serde.serialize_tensor(v.const_value) for v in inputs
                if v.const_value.dtype.is_integer() and v.const_value.size <= _READ_ELEMENTS}
        outputs = onnx.shape_inference.infer_node_outputs(schema, proto, types, data)
    except (onnx.defs.SchemaError, onnx.shape_inference.InferenceError, ValueError, TypeError):
        return None
    shapes = [dims_of(tp) for tp in outputs.values()]
    if not shapes or not all(dims is not None and all(isinstance(d, int) for d in dims) for dims in shapes):
        return None
    return sum(math.prod(dims) for dims in shapes)


def fold_within(model: ir.Model, input_size_limit: int, output_size_limit: int) -> bool:
    """Run onnxscript's constant folder on ``model`` in place; whether it changed anything.

    The folder computes a node and only then checks its output's size against the limit: a
    small constant expanded or tiled to gigabytes would be allocated first. So it folds
    only nodes whose output ONNX's inference, reading their inputs' values, sizes within
    ``output_size_limit`` elements."""
    opsets = dict(model.opset_imports)

    def within(node: ir.Node) -> bool | None:
        elements = _output_elements(node, opsets)
        return None if elements is not None and elements <= output_size_limit else False

    return optimizer.fold_constants(model, input_size_limit=input_size_limit, output_size_limit=output_size_limit,
                                    should_fold=within).modified
