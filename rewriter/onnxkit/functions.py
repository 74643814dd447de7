"""The project's own ops (domain ``shaprewrite``) as ONNX model-local functions.

An op of ours stays a valid ONNX node: shape inference and onnxruntime see through its
function body (declared in the op's file, see ``rewriter.ops``), and the importer maps the
node to one torch module."""

from __future__ import annotations

import onnx
from onnx import helper

from .facts import opset_of
from .graph import DOMAIN


def function_proto(name: str, opset: int) -> onnx.FunctionProto:
    from ..ops import load

    return load()[name].function(opset)


def attach_functions(model: onnx.ModelProto) -> None:
    """Add the function bodies (and the domain import) for every fused op the graph uses."""
    used = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    if not used:
        return
    opset = opset_of(model, default=17)
    present = {(f.domain, f.name) for f in model.functions}
    model.functions.extend(function_proto(name, opset) for name in used if (DOMAIN, name) not in present)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
