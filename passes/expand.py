"""Ops with no converter that ONNX itself defines as a function of other ops, expanded.

ONNX gives many newer ops a body of older ones (Attention, RMSNormalization,
RotaryEmbedding as context-dependent functions of their attributes and input types).
Where shaprewrite has no converter for such an op, its body replaces it, and every later
pass sees the pieces: the matrix products become Shapley products, the softmax an
ExactSoftmax, the normalisation's ``x / sqrt(mean(x^2) + eps)`` a product and rescaled
elementwise functions, so the expanded op is as exact as its pieces.
"""

from __future__ import annotations

import re

import onnx
import onnx.inliner
import onnx_graphsurgeon as gs

from ..naming import fresh_name
from ..onnxkit.facts import STANDARD_DOMAINS, opset_of
from ..onnxkit.functions import attach_functions
from ..onnxkit.weights import adopt, export_light
from .activations import DECOMPOSED
from .base import PassOptions, PassResult, graph_pass

_EXPANDED = "shaprewrite.expanded"  # the domain of the bodies while they are inlined
_CALL_SUFFIX = re.compile(r"__\d+$")  # the inliner's mark of which call a value belongs to


@graph_pass
def expand_function_ops(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Replace each standard op that has no converter by the body ONNX defines for it
    (when it defines one); its nodes are named after the op they expand."""
    from ..converters import (
        CONVERTERS,  # the converters import the ops, which import the passes: import on use
    )

    wanted = sorted({n.op for n in graph.nodes if (n.domain or "") in STANDARD_DOMAINS and n.op not in CONVERTERS
                     and n.op not in DECOMPOSED})
    result = PassResult()
    if not wanted:
        return result
    light = export_light(graph)
    model = light.proto
    attach_functions(model)
    calls = [n.name for n in model.graph.node if (n.domain or "") in STANDARD_DOMAINS and n.op_type in wanted]
    _spell_out_defaults(model, wanted)
    if not _call_bodies(model, wanted):
        return result
    expanded = onnx.inliner.inline_local_functions(model, convert_version=True)
    result.added = _name_expanded_nodes(expanded.graph, calls, {n.name for n in model.graph.node})
    remaining = {n.name for n in expanded.graph.node}
    result.removed = [name for name in calls if name not in remaining]
    if result.removed:
        adopt(graph, expanded, light.held)
    return result


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    graph = model.graph
    found = {vi.name: vi.type for vi in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        found.setdefault(init.name, onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims)))
    return found


def _call_bodies(model: onnx.ModelProto, ops: list[str]) -> int:
    """Turn each node of ``ops`` that ONNX defines a body for into a call of a model-local
    function holding that body (built for the node's attributes and input types where the
    body depends on them); how many. (ONNX's own inlining of schema bodies cannot type an
    optional input left out in the middle, as Attention's attn_mask often is.)"""
    opset = opset_of(model)
    types = _types(model)
    count = 0
    for node in model.graph.node:
        if (node.domain or "") not in STANDARD_DOMAINS or node.op_type not in ops:
            continue
        body = _body(node, opset, types)
        if body is None:
            continue
        body.domain, body.name = _EXPANDED, f"{node.op_type}_{count}"
        model.functions.append(body)
        node.domain, node.op_type = _EXPANDED, body.name
        count += 1
    if count:
        model.opset_import.append(onnx.helper.make_opsetid(_EXPANDED, 1))
    return count


def _body(node: onnx.NodeProto, opset: int, types: dict[str, onnx.TypeProto]) -> onnx.FunctionProto | None:
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return None
    body = onnx.FunctionProto()
    if schema.has_context_dependent_function:
        given = [(types.get(name) or onnx.TypeProto()).SerializeToString() if name else
                 onnx.TypeProto().SerializeToString() for name in node.input]
        try:
            body.ParseFromString(schema.get_context_dependent_function_with_opset_version(
                opset, node.SerializeToString(), given))
        except Exception:  # the builder rejects inputs it cannot type: keep the op
            return None
    elif schema.has_function:
        versions = [v for v in schema.function_opset_versions if v <= opset]
        if not versions:
            return None
        body.ParseFromString(schema.get_function_with_opset_version(max(versions)))
    else:
        return None
    return body if body.node else None


def _spell_out_defaults(model: onnx.ModelProto, ops: list[str]) -> None:
    """Write each default attribute the nodes to expand leave out: a body refers to the
    caller's attributes (``axes = @axes``), and the inliner drops a reference the caller
    does not set instead of taking the schema's default (MeanVarianceNormalization's
    axes)."""
    opset = opset_of(model)
    for node in model.graph.node:
        if (node.domain or "") not in STANDARD_DOMAINS or node.op_type not in ops:
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset)
        except onnx.defs.SchemaError:
            continue
        given = {a.name for a in node.attribute}
        for name, attribute in schema.attributes.items():
            default = attribute.default_value
            if name not in given and default is not None and default.type != onnx.AttributeProto.UNDEFINED:
                node.attribute.append(default)


def _name_expanded_nodes(graph: onnx.GraphProto, calls: list[str], taken: set[str]) -> list[str]:
    """The inliner leaves a body's nodes unnamed, in place of the call they expand, in
    order: name each run after its call and the value it computes (``attention_qk``)."""
    pending = iter(calls)
    current, previous_new, named = None, False, []
    for node in graph.node:
        new = not node.name
        if new and not previous_new:
            current = next(pending, current)
        previous_new = new
        if not new or current is None:
            continue
        computed = _CALL_SUFFIX.sub("", node.output[0] if node.output else node.op_type)
        base = f"{current}_{computed}"
        name = fresh_name(base, taken.__contains__)
        taken.add(name)
        node.name = name
        named.append(name)
    return named
