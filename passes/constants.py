"""Constant folding, so later passes see constants as constants."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxscript import optimizer

from .base import PassOptions, PassResult


def fold_constants(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Evaluate every node whose inputs are all known (onnxscript's constant folder).

    Exporters write parameters through Reshape/Expand/CastLike chains (a GroupNorm's
    scale, a PReLU slope); folded, the passes can read them.
    """
    model = gs.export_onnx(graph, do_type_check=False)
    before = [n.name for n in model.graph.node]
    optimizer.fold_constants(model)
    folded = gs.import_onnx(model)
    graph.nodes, graph.inputs, graph.outputs = folded.nodes, folded.inputs, folded.outputs
    graph.cleanup()
    after = {n.name for n in graph.nodes}
    return PassResult("fold_constants", removed=[n for n in before if n not in after])
