"""Constant folding, so later passes see constants as constants.

Two passes: small values first, with onnxscript's default size limits; then, after
``refuse_oversized_values`` has checked every size the folded graph computes, the larger
values passes need to read (the weights of recurrent layers that exporters reorder with
Slice and Concat), up to the allowed tensor size. Folding large values first would let a
hostile graph (a small constant expanded to a huge shape) allocate it inside the folder.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
import onnx_ir as ir

from ..onnxkit.folding import fold_within
from ..onnxkit.graph import varying_tensors
from ..onnxkit.weights import adopt, export_light
from .base import PassOptions, PassResult, graph_pass

# The first fold's limits, in elements: onnxscript's own defaults.
_SMALL_INPUT, _SMALL_OUTPUT = 8192, 512 * 512


def _fold(graph: gs.Graph, keep: frozenset[str] | set[str] = frozenset(),
          input_size_limit: int = _SMALL_INPUT, output_size_limit: int = _SMALL_OUTPUT) -> PassResult:
    # Large weights are placeholders the folder leaves alone (above its input size limits);
    # the large-value fold has the values in ``keep`` read.
    light = export_light(graph, keep=keep)
    before = [n.name for n in light.proto.graph.node]
    model = ir.serde.deserialize_model(light.proto)
    if not fold_within(model, input_size_limit, output_size_limit):
        return PassResult()  # the graph stands; writing and reading the folder's copy back costs more than folding
    adopt(graph, ir.serde.serialize_model(model), light.held)
    graph.cleanup()
    after = {n.name for n in graph.nodes}
    return PassResult(removed=[n for n in before if n not in after])


@graph_pass
def fold_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate every node whose inputs are all known and small (onnxscript's constant folder).

    Exporters write parameters through Reshape/Expand/CastLike chains (a GroupNorm's
    scale, a PReLU slope); folded, the passes can read them.
    """
    return _fold(graph)


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


@graph_pass
def fold_large_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate the remaining constant nodes whose values fit the allowed tensor size, but
    transposed weights (see ``_weight_views``)."""
    foldable = _constant_nodes(graph, _weight_views(graph))
    if not foldable:
        # Every node the first fold left reads the inputs: nothing was held back for its size,
        # and a second run of the folder (a third of the passes' time on plain graphs) would
        # find nothing.
        return PassResult()
    elements = max(options.max_tensor_bytes // 4, 1)
    return _fold(graph, {t.name for node in foldable for t in node.inputs if t.name},
                 input_size_limit=elements, output_size_limit=elements)
