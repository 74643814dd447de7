"""Standardize: ``(x - mean x) (var x + ε)^-1/2`` over the last dim, the nonlinear part of
LayerNorm, InstanceNorm and GroupNorm (``passes.normalization`` reshapes other axes to the
last and keeps the affine part apart, linear).

It is RMSNorm (:mod:`.rms_norm`) of the centred ``x``, and centring is a linear projection
``P``, so its rule is RMSNorm's path-averaged Jacobian between the centred reference and
input, projected: ``Pᵀ J̄ᵀ g``. The forward pass stays one fused ``layer_norm``.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from onnx import helper

from ..modules import ExactRule
from . import CustomOp, reduce_last, register
from .rms_norm import epsilon_constant, pair_vjp


class Standardize(ExactRule):
    """``(x - mean(x)) / sqrt(var(x) + eps)`` over the last dim (see the module notes)."""

    report_kind = "normalization"
    over_last_axis = True

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], None, None, self.eps)

    def deeplift_multipliers(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        multipliers = pair_vjp(x - x.mean(-1, keepdim=True), grad_output, self.eps)
        return multipliers - multipliers.mean(-1, keepdim=True)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def _body(opset: int) -> list[onnx.NodeProto]:
    return [helper.make_node("Constant", [], ["last"], value_ints=[-1]), reduce_last(opset, "ReduceMean", "X", "mean"),
            helper.make_node("Sub", ["X", "mean"], ["c"]), helper.make_node("Mul", ["c", "c"], ["sq"]),
            reduce_last(opset, "ReduceMean", "sq", "var"), epsilon_constant(), helper.make_node("CastLike", ["eps_f", "X"], ["eps"]),
            helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
            helper.make_node("Div", ["c", "std"], ["Y"])]


def _convert(ctx):
    return ctx.module(Standardize(ctx.attr("epsilon", 1e-5)), ctx.input(0))


STANDARDIZE = register(CustomOp("Standardize", _body, _convert, attributes=("epsilon",)))
