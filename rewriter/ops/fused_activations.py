"""The activations exporters split into pieces and the ``fuse_activations`` pass
(``passes/activations.py``) puts back together: SiLU, Mish, HardSwish and the two GELUs.
Split, each is a product of two tensors that depend on ``x`` (no rescale rule covers it);
fused, each is one elementwise module, for which DeepLIFT's rescale rule is exact and which
SHAP and Captum both know. Their bodies are the pieces themselves, so a fused graph stays
valid ONNX."""

from __future__ import annotations

import functools
import math

import onnx
from onnx import helper
from torch import nn

from . import CustomOp, register


def _scalar(name: str, value: float) -> list[onnx.NodeProto]:
    """A float constant cast to the type of ``X``."""
    return [helper.make_node("Constant", [], [f"{name}_f"], value_float=value),
            helper.make_node("CastLike", [f"{name}_f", "X"], [name])]


def _gelu_tail(inner: str) -> list[onnx.NodeProto]:
    """``0.5 * X * (1 + inner)``."""
    return [*_scalar("one", 1.0), *_scalar("half", 0.5), helper.make_node("Add", [inner, "one"], ["gate"]),
            helper.make_node("Mul", ["X", "half"], ["half_x"]), helper.make_node("Mul", ["half_x", "gate"], ["Y"])]


_BODIES: dict[str, list[onnx.NodeProto]] = {
    "Silu": [helper.make_node("Sigmoid", ["X"], ["s"]), helper.make_node("Mul", ["X", "s"], ["Y"])],
    "Mish": [helper.make_node("Softplus", ["X"], ["sp"]), helper.make_node("Tanh", ["sp"], ["t"]),
             helper.make_node("Mul", ["X", "t"], ["Y"])],
    "HardSwish": [helper.make_node("HardSigmoid", ["X"], ["h"], alpha=1 / 6, beta=0.5),
                  helper.make_node("Mul", ["X", "h"], ["Y"])],
    "GeluErf": [*_scalar("root2", math.sqrt(2.0)), helper.make_node("Div", ["X", "root2"], ["u"]),
                helper.make_node("Erf", ["u"], ["e"]), *_gelu_tail("e")],
    "GeluTanh": [*_scalar("c", math.sqrt(2.0 / math.pi)), *_scalar("k", 0.044715), *_scalar("three", 3.0),
                 helper.make_node("Pow", ["X", "three"], ["cube"]), helper.make_node("Mul", ["cube", "k"], ["kc"]),
                 helper.make_node("Add", ["X", "kc"], ["inner"]), helper.make_node("Mul", ["inner", "c"], ["scaled"]),
                 helper.make_node("Tanh", ["scaled"], ["t"]), *_gelu_tail("t")],
}
_MODULES = {"Silu": nn.SiLU, "Mish": nn.Mish, "HardSwish": nn.Hardswish, "GeluErf": nn.GELU,
            "GeluTanh": functools.partial(nn.GELU, approximate="tanh")}


def _op(name: str) -> CustomOp:
    def convert(ctx):
        from ..converters.activations import leaf

        return leaf(ctx, _MODULES[name]())

    return register(CustomOp(name, lambda opset: _BODIES[name], convert))


SILU, MISH, HARD_SWISH, GELU_ERF, GELU_TANH = (_op(name) for name in _MODULES)
