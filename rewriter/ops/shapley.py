"""Shapley products: ``ShapleyMul``, ``ShapleyMatMul`` and ``ShapleyEinsum``, a product of two
tensors that both depend on the input (a gate times its input, attention's scores times
values). DeepLIFT has no rule for such a product; its exact one splits ``Δy`` between the two
operands as the Shapley values of the two-player game do: ``Δy = f(Δa, b̄) + f(ā, Δb)``, with
``ā, b̄`` the means of each operand's row and reference.

Produced by the ``shapley_products`` pass (``passes/products.py``), which renames each
product of two input-dependent values to its op; the body is the product itself. Imported as
one :class:`ShapleyProduct` module over both operands packed per batch row.
"""

from __future__ import annotations

import math

import onnx
import torch
from onnx import helper

from ..modules import ExactRule, pair_mean
from . import CustomOp, register


class ShapleyProduct(ExactRule):
    """``y = f(a, b)`` for a bilinear ``f`` of two input-dependent tensors.

    ``f`` is an elementwise product, a matrix product or a two-operand einsum. Explainers
    hook one input per module, so ``a`` and ``b`` arrive packed side by side, each
    flattened per batch row (see ``rewriter.functional.pack_operands``); ``shape_a`` and
    ``shape_b`` are their shapes after the batch dim. Outside explanation this is exactly
    ``f(a, b)`` with ordinary gradients; under SHAP or Captum the registered rule uses
    :meth:`deeplift_multipliers`.
    """

    report_kind = "product"

    def __init__(self, op: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...], equation: str | None = None):
        super().__init__()
        self.op, self.equation = op, equation
        self.shape_a, self.shape_b = tuple(shape_a), tuple(shape_b)

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size_a = math.prod(self.shape_a)
        return packed[:, :size_a].reshape(-1, *self.shape_a), packed[:, size_a:].reshape(-1, *self.shape_b)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.op == "mul":
            return a * b
        if self.op == "matmul":
            return torch.matmul(a, b)
        return torch.einsum(self.equation, a, b)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.combine(*self.unpack(packed))

    def deeplift_multipliers(self, packed: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        """Multipliers for the packed input of a batch ``[inputs; references]``.

        ``Δy = f(Δa, b̄) + f(ā, Δb)`` with ``ā, b̄`` the means of each input row and its
        reference row, so ``a``'s multiplier is the gradient of ``f(a, b̄)`` and ``b``'s that
        of ``f(ā, b)``; both halves of the batch get the same multipliers.
        """
        a, b = self.unpack(packed.detach())
        a_mean, b_mean = pair_mean(a), pair_mean(b)
        with torch.enable_grad():
            a_var, b_var = a_mean.clone().requires_grad_(), b_mean.clone().requires_grad_()
            (grad_a,) = torch.autograd.grad(self.combine(a_var, b_mean), a_var, grad_output)
            (grad_b,) = torch.autograd.grad(self.combine(a_mean, b_var), b_var, grad_output)
        return torch.cat([grad_a.reshape(a.shape[0], -1), grad_b.reshape(b.shape[0], -1)], 1)

    def extra_repr(self) -> str:
        op = f"einsum '{self.equation}'" if self.op == "einsum" else self.op
        return f"{op}, a={self.shape_a}, b={self.shape_b}"


def _equation_ref() -> onnx.AttributeProto:
    """The body's Einsum takes the calling node's ``equation``."""
    attr = onnx.AttributeProto()
    attr.name = attr.ref_attr_name = "equation"
    attr.type = onnx.AttributeProto.STRING
    return attr


def _body(op: str):
    def body(opset: int) -> list[onnx.NodeProto]:
        node = helper.make_node(op, ["X", "B"], ["Y"])
        if op == "Einsum":
            node.attribute.append(_equation_ref())
        return [node]

    return body


def _convert(kind: str):
    def convert(ctx):
        """One ShapleyProduct module over both operands packed per batch row. An operand
        pair with the batch on another (shared) axis has it moved to the front and back
        around the product, which commutes with moving a batch axis of both operands."""
        from .. import functional

        shapes = [list(ctx.info(i).shape or ()) for i in (0, 1)]
        axis = ctx.batch_axis(0) or 0
        ctx.require(axis == (ctx.batch_axis(1) or 0) and all(shapes),
                    "a Shapley product needs both operands' batch on the same axis")
        operands = [ctx.input(0), ctx.input(1)]
        if axis:
            operands = [ctx.method("movedim", t, axis, 0) for t in operands]
            shapes = [[s[axis], *s[:axis], *s[axis + 1:]] for s in shapes]
        ctx.require(all(isinstance(d, int) for s in shapes for d in s[1:]),
                    "a Shapley product needs static operand shapes besides the batch dim")
        product = ShapleyProduct(kind, shapes[0][1:], shapes[1][1:], ctx.attr("equation"))
        result = ctx.module(product, ctx.call(functional.pack_operands, *operands))
        return ctx.method("movedim", result, 0, axis) if axis else result

    return convert


SHAPLEY_MUL = register(CustomOp("ShapleyMul", _body("Mul"), _convert("mul"), inputs=("X", "B")))
SHAPLEY_MATMUL = register(CustomOp("ShapleyMatMul", _body("MatMul"), _convert("matmul"), inputs=("X", "B")))
SHAPLEY_EINSUM = register(CustomOp("ShapleyEinsum", _body("Einsum"), _convert("einsum"), inputs=("X", "B"),
                                   attributes=("equation",)))
