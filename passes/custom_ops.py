"""Find the computations the project's own ops replace (see ``rewriter.ops``): each op's
``match`` looks at every node and, where the node ends such a computation, writes the op in
its place; what it replaced becomes dead and is cleaned away."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..onnxkit.graph import shared_names
from ..ops import load
from .base import PassOptions, PassResult, graph_pass


@graph_pass
def fuse_custom_ops(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Every registered op's ``match`` over every node (Sparsemax's sorting algorithm -> one
    Sparsemax)."""
    result = PassResult()
    matchers = [op.match for op in load().values() if op.match is not None]
    with shared_names(graph):
        for node in list(graph.nodes):
            for match in matchers:
                added = match(graph, node)
                if added:
                    result.removed.append(node.name)
                    result.added.extend(added)
                    break
    if result.removed:
        graph.cleanup()
    return result
