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
from .weights import adopt, export_light


def _fold(graph: gs.Graph, name: str, **limits) -> PassResult:
    # Large weights are placeholders the folder leaves alone (above its input size limits);
    # the large-value fold gets the values of those constant nodes read.
    light = export_light(graph, keep=_constant_inputs(graph) if limits else ())
    before = [n.name for n in light.proto.graph.node]
    if not optimizer.fold_constants(light.proto, **limits).modified:
        return PassResult(name)  # the graph stands; reading the folder's copy back costs more than folding
    adopt(graph, light.proto, light.held)
    graph.cleanup()
    after = {n.name for n in graph.nodes}
    return PassResult(name, removed=[n for n in before if n not in after])


def fold_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate every node whose inputs are all known and small (onnxscript's constant folder).

    Exporters write parameters through Reshape/Expand/CastLike chains (a GroupNorm's
    scale, a PReLU slope); folded, the passes can read them.
    """
    return _fold(graph, "fold_constants")


def _constant_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The nodes that read only constants (what folding evaluates)."""
    return [node for node in graph.nodes if all(isinstance(t, gs.Constant) for t in node.inputs if t.name)]


def _constant_inputs(graph: gs.Graph) -> set[str]:
    return {t.name for node in _constant_nodes(graph) for t in node.inputs if t.name}


def fold_large_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate the remaining constant nodes whose values fit the allowed tensor size."""
    if not _constant_nodes(graph):
        # Every node the first fold left reads the inputs: nothing was held back for its size,
        # and a second run of the folder (a third of the passes' time on plain graphs) would
        # find nothing.
        return PassResult("fold_large_constants")
    elements = max(options.max_tensor_bytes // 4, 1)
    return _fold(graph, "fold_large_constants", input_size_limit=elements, output_size_limit=elements)
