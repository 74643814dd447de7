"""Passes that remove nodes which compute nothing at inference time."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .base import PassOptions, PassResult


def _passes_through(node: gs.Node) -> bool:
    if node.op == "Identity":
        return True
    # Dropout at inference returns its input; only its mask output would need the node.
    return node.op == "Dropout" and (len(node.outputs) < 2 or not node.outputs[1].outputs)


def drop_identities(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Remove Identity and mask-less Dropout nodes, wiring their readers to their input.

    A node that writes a graph output stays, so the output keeps its name.
    """
    result = PassResult("drop_identities")
    for node in list(graph.nodes):
        if not _passes_through(node) or node.outputs[0] in graph.outputs:
            continue
        source, target = node.inputs[0], node.outputs[0]
        for consumer in list(target.outputs):
            for i, tensor in enumerate(consumer.inputs):
                if tensor is target:
                    consumer.inputs[i] = source
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.remove(node)
        result.removed.append(node.name)
    return result


def remove_dead_nodes(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Remove nodes whose outputs reach no graph output."""
    before = [node.name for node in graph.nodes]
    graph.cleanup()
    after = {node.name for node in graph.nodes}
    return PassResult("remove_dead_nodes", removed=[n for n in before if n not in after])
