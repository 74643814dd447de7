"""Bodies of the fused ops in the ``shaprewrite`` domain, as ONNX model-local functions.

A fused activation stays a valid ONNX node: shape inference and onnxruntime see through
the function body, and the importer maps the node to one torch module.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from .facts import opset_of
from .graph import DOMAIN


def _scalar(name: str, value: float, like: str) -> list[onnx.NodeProto]:
    """A float constant cast to the type of ``like``."""
    return [helper.make_node("Constant", [], [f"{name}_f"], value_float=value),
            helper.make_node("CastLike", [f"{name}_f", like], [name])]


def _gelu_tail(inner: str) -> list[onnx.NodeProto]:
    """``0.5 * X * (1 + inner)``."""
    return [*_scalar("one", 1.0, "X"), *_scalar("half", 0.5, "X"),
            helper.make_node("Add", [inner, "one"], ["gate"]),
            helper.make_node("Mul", ["X", "half"], ["half_x"]),
            helper.make_node("Mul", ["half_x", "gate"], ["Y"])]


def _equation_ref() -> onnx.AttributeProto:
    """The body's Einsum takes the calling node's ``equation``."""
    attr = onnx.AttributeProto()
    attr.name = attr.ref_attr_name = "equation"
    attr.type = onnx.AttributeProto.STRING
    return attr


def _einsum() -> onnx.NodeProto:
    node = helper.make_node("Einsum", ["X", "B"], ["Y"])
    node.attribute.append(_equation_ref())
    return node


BODIES: dict[str, list[onnx.NodeProto]] = {
    "Silu": [helper.make_node("Sigmoid", ["X"], ["s"]), helper.make_node("Mul", ["X", "s"], ["Y"])],
    "Mish": [helper.make_node("Softplus", ["X"], ["sp"]), helper.make_node("Tanh", ["sp"], ["t"]),
             helper.make_node("Mul", ["X", "t"], ["Y"])],
    "HardSwish": [helper.make_node("HardSigmoid", ["X"], ["h"], alpha=1 / 6, beta=0.5),
                  helper.make_node("Mul", ["X", "h"], ["Y"])],
    "GeluErf": [*_scalar("root2", math.sqrt(2.0), "X"), helper.make_node("Div", ["X", "root2"], ["u"]),
                helper.make_node("Erf", ["u"], ["e"]), *_gelu_tail("e")],
    "GeluTanh": [*_scalar("c", math.sqrt(2.0 / math.pi), "X"), *_scalar("k", 0.044715, "X"),
                 *_scalar("three", 3.0, "X"), helper.make_node("Pow", ["X", "three"], ["cube"]),
                 helper.make_node("Mul", ["cube", "k"], ["kc"]), helper.make_node("Add", ["X", "kc"], ["inner"]),
                 helper.make_node("Mul", ["inner", "c"], ["scaled"]), helper.make_node("Tanh", ["scaled"], ["t"]),
                 *_gelu_tail("t")],
    # Products of two input-dependent tensors (passes/products.py): the op itself.
    "ShapleyMul": [helper.make_node("Mul", ["X", "B"], ["Y"])],
    "ShapleyMatMul": [helper.make_node("MatMul", ["X", "B"], ["Y"])],
    "ShapleyEinsum": [_einsum()],
}
_TWO_INPUTS = {"ShapleyMul", "ShapleyMatMul", "ShapleyEinsum"}
_POOL_ATTRIBUTES = {"kernel_shape": onnx.AttributeProto.INTS, "strides": onnx.AttributeProto.INTS,
                    "pads": onnx.AttributeProto.INTS, "dilations": onnx.AttributeProto.INTS,
                    "ceil_mode": onnx.AttributeProto.INT, "auto_pad": onnx.AttributeProto.STRING}


def _exact_max_pool(opset: int) -> list[onnx.NodeProto]:
    """MaxPool itself, taking the calling node's attributes."""
    node = helper.make_node("MaxPool", ["X"], ["Y"])
    for name, kind in _POOL_ATTRIBUTES.items():
        ref = onnx.AttributeProto()
        ref.name = ref.ref_attr_name = name
        ref.type = kind
        node.attribute.append(ref)
    return [node]


_OPSET_BODIES = {"ExactMaxPool": _exact_max_pool}
_ATTRIBUTES = {"ShapleyEinsum": ["equation"], "ExactMaxPool": list(_POOL_ATTRIBUTES)}


def function_proto(name: str, opset: int) -> onnx.FunctionProto:
    from ..ops import load

    registered = load().get(name)
    if registered is not None:
        return registered.function(opset)
    inputs = ["X", "B"] if name in _TWO_INPUTS else ["X"]
    body = _OPSET_BODIES[name](opset) if name in _OPSET_BODIES else BODIES[name]
    return helper.make_function(DOMAIN, name, inputs, ["Y"], body, opset_imports=[helper.make_opsetid("", opset)],
                                attributes=_ATTRIBUTES.get(name, []))


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
