"""Constant folding, so later passes see constants as constants.

Two passes: small values first, with onnxscript's default size limits; then, after
``refuse_oversized_values`` has checked every size the folded graph computes, the larger
values passes need to read (the weights of recurrent layers that exporters reorder with
Slice and Concat), up to the allowed tensor size. Folding large values first would let a
hostile graph (a small constant expanded to a huge shape) allocate it inside the folder.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxscript import optimizer

from .base import PassOptions, PassResult


def _fold(graph: gs.Graph, name: str, **limits) -> PassResult:
    model = gs.export_onnx(graph, do_type_check=False)
    before = [n.name for n in model.graph.node]
    if not optimizer.fold_constants(model, **limits).modified:
        return PassResult(name)  # the graph stands; reading the folder's copy back costs more than folding
    folded = gs.import_onnx(model)
    graph.nodes, graph.inputs, graph.outputs = folded.nodes, folded.inputs, folded.outputs
    graph.cleanup()
    after = {n.name for n in graph.nodes}
    return PassResult(name, removed=[n for n in before if n not in after])


def fold_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate every node whose inputs are all known and small (onnxscript's constant folder).

    Exporters write parameters through Reshape/Expand/CastLike chains (a GroupNorm's
    scale, a PReLU slope); folded, the passes can read them.
    """
    return _fold(graph, "fold_constants")


def fold_large_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate the remaining constant nodes whose values fit the allowed tensor size."""
    if not any(all(isinstance(t, gs.Constant) for t in node.inputs if t.name) for node in graph.nodes):
        # Every node the first fold left reads the inputs: nothing was held back for its size,
        # and a second run of the folder (a third of the passes' time on plain graphs) would
        # find nothing.
        return PassResult("fold_large_constants")
    elements = max(options.max_tensor_bytes // 4, 1)
    return _fold(graph, "fold_large_constants", input_size_limit=elements, output_size_limit=elements)
