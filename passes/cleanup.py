"""Passes that remove nodes which compute nothing at inference time."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..onnxkit.graph import bypass, const_value, producer
from .base import PassOptions, PassResult, graph_pass

_NEUTRAL = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}


def _passes_through(node: gs.Node) -> bool:
    if node.op == "Identity":
        return True
    if node.op == "Dropout":
        # At inference it returns its input; only its mask output would need the node.
        return len(node.outputs) < 2 or not node.outputs[1].outputs
    if node.op in _NEUTRAL and len(node.inputs) == 2:
        # x * 1, x / 1, x + 0, x - 0 with a scalar (exporters write F.elu's scales so).
        value = const_value(node.inputs[1])
        return value is not None and value.ndim == 0 and float(value) == _NEUTRAL[node.op] \
            and const_value(node.inputs[0]) is None
    return False


@graph_pass
def drop_identities(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Remove nodes that return their input: Identity, mask-less Dropout, and scalings by one
    or shifts by zero; their readers read the input instead.

    A node that writes a graph output stays, so the output keeps its name. When the node
    was named after the torch op and its input's producer carries that name plus a suffix,
    the producer takes the plain name (``elu_elu`` becomes ``elu``).
    """
    result = PassResult()
    dropped: set[int] = set()
    for node in list(graph.nodes):
        if not _passes_through(node) or node.outputs[0] in graph.outputs:
            continue
        source = node.inputs[0]
        bypass(node, source)
        dropped.add(id(node))
        result.removed.append(node.name)
        upstream = producer(source)
        if upstream is not None and upstream.name.startswith(node.name + "_") and len(source.outputs) == 1:
            upstream.name = node.name
    graph.nodes = [n for n in graph.nodes if id(n) not in dropped]
    return result


@graph_pass
def remove_dead_nodes(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Remove nodes whose outputs reach no graph output."""
    before = [node.name for node in graph.nodes]
    graph.cleanup()
    after = {node.name for node in graph.nodes}
    return PassResult(removed=[n for n in before if n not in after])
