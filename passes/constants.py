"""Constant folding, so later passes see constants as constants.

Two passes: small values first, with onnxscript's default size limits; then, after
``refuse_oversized_values`` has checked every size the folded graph computes, the larger
values passes need to read (the weights of recurrent layers that exporters reorder with
Slice and Concat), up to the allowed tensor size. Folding large values first would let a
hostile graph (a small constant expanded to a huge shape) allocate it inside the folder.
"""

from __future__ import annotations

import math

import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
from onnxscript import optimizer

from .base import PassOptions, PassResult
from .graph import varying_tensors
from .shapes import dims_of
from .weights import adopt, export_light

# The first fold's limits, in elements: onnxscript's own defaults.
_SMALL_INPUT, _SMALL_OUTPUT = 8192, 512 * 512
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


def _fold(graph: gs.Graph, name: str, keep: frozenset[str] | set[str] = frozenset(),
          input_size_limit: int = _SMALL_INPUT, output_size_limit: int = _SMALL_OUTPUT) -> PassResult:
    # Large weights are placeholders the folder leaves alone (above its input size limits);
    # the large-value fold has the values in ``keep`` read.
    light = export_light(graph, keep=keep)
    before = [n.name for n in light.proto.graph.node]
    model = ir.serde.deserialize_model(light.proto)
    if not fold_within(model, input_size_limit, output_size_limit):
        return PassResult(name)  # the graph stands; writing and reading the folder's copy back costs more than folding
    adopt(graph, ir.serde.serialize_model(model), light.held)
    graph.cleanup()
    after = {n.name for n in graph.nodes}
    return PassResult(name, removed=[n for n in before if n not in after])


def fold_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate every node whose inputs are all known and small (onnxscript's constant folder).

    Exporters write parameters through Reshape/Expand/CastLike chains (a GroupNorm's
    scale, a PReLU slope); folded, the passes can read them.
    """
    return _fold(graph, "fold_constants")


def _constant_nodes(graph: gs.Graph, skip: frozenset[int] = frozenset()) -> list[gs.Node]:
    """The nodes that read only constants (what folding evaluates), but those in ``skip``;
    a Constant node, which reads nothing, is already as folded as it gets."""
    return [node for node in graph.nodes if id(node) not in skip
            and node.inputs and all(isinstance(t, gs.Constant) for t in node.inputs if t.name)]


def _weight_views(graph: gs.Graph) -> frozenset[int]:
    """The Transposes of a constant that only computations of the inputs read (a Linear's
    weight, as exporters write it). The importer takes each as a view of the weight; the
    folder would copy every such weight out to transpose it, a third of the passes' time on
    BERT-base."""
    varying = varying_tensors(graph)
    return frozenset(id(node) for node in graph.nodes if node.op == "Transpose" and node.outputs[0].outputs
                     and node.outputs[0] not in graph.outputs
                     and all(any(t.name in varying for t in reader.inputs) for reader in node.outputs[0].outputs))


def fold_large_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate the remaining constant nodes whose values fit the allowed tensor size, but
    transposed weights (see ``_weight_views``)."""
    foldable = _constant_nodes(graph, _weight_views(graph))
    if not foldable:
        # Every node the first fold left reads the inputs: nothing was held back for its size,
        # and a second run of the folder (a third of the passes' time on plain graphs) would
        # find nothing.
        return PassResult("fold_large_constants")
    elements = max(options.max_tensor_bytes // 4, 1)
    return _fold(graph, "fold_large_constants", {t.name for node in foldable for t in node.inputs if t.name},
                 input_size_limit=elements, output_size_limit=elements)
