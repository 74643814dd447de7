"""``ShapleyPow``: ``a ** b`` where both the base and the exponent depend on the input (a
learned exponent, ``x ** sigmoid(w x)``). DeepLIFT's rescale rule covers one input; for
two, the exact split of ``Δy`` is the two-player Shapley value of each output element:

``c_a = ½ [(f(a, b') - f(a', b')) + (f(a, b) - f(a', b))]``, ``c_b = Δy - c_a``,

which credits each operand with its average effect over the two orders of switching the
operands from the reference to the input (``c_a + c_b = Δy`` exactly; ``c_a = 0`` when
``a`` does not change). The multipliers are ``c / Δ``, summed over broadcast elements.

Matched where a ``Pow`` node's two inputs are both computed at run time with static shapes
that share the leading (batch) dim; a constant exponent stays ``Pow``, whose rescale rule
is exact already.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import helper

from ..modules import ExactRule
from . import DOMAIN, CustomOp, register


class ShapleyPow(ExactRule):
    """``a ** b`` of two input-dependent tensors, packed side by side per batch row (see
    ``rewriter.functional.pack_operands``), with the two-player Shapley split as its rule."""

    report_kind = "product"

    def __init__(self, shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> None:
        super().__init__()
        self.shape_a, self.shape_b = tuple(shape_a), tuple(shape_b)

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size_a = math.prod(self.shape_a)
        return packed[:, :size_a].reshape(-1, *self.shape_a), packed[:, size_a:].reshape(-1, *self.shape_b)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return torch.pow(*self.unpack(packed))

    def deeplift_multipliers(self, packed: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        a, b = self.unpack(packed.detach())
        half = a.shape[0] // 2
        (a1, a0), (b1, b0) = (a[:half], a[half:]), (b[:half], b[half:])
        both, neither = torch.pow(a1, b1), torch.pow(a0, b0)
        only_a, only_b = torch.pow(a1, b0), torch.pow(a0, b1)
        share_a = ((only_a - neither) + (both - only_b)) / 2
        share_b = (both - neither) - share_a
        def multipliers(grad: torch.Tensor) -> torch.Tensor:
            m_a, m_b = _per_operand(grad * share_a, a1 - a0), _per_operand(grad * share_b, b1 - b0)
            return torch.cat([m_a.reshape(half, -1), m_b.reshape(half, -1)], 1)

        # Each half's gradient arrives separately; both take the pair's multipliers.
        return torch.cat([multipliers(grad_output[:half]), multipliers(grad_output[half:])])

    def extra_repr(self) -> str:
        return f"a={self.shape_a}, b={self.shape_b}"


def _per_operand(credit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``credit`` (output-shaped) summed onto the operand's broadcast elements, over its
    change; 0 where the operand did not change (its credit is 0 there)."""
    extra = credit.dim() - delta.dim()
    summed = credit.sum(dim=tuple(range(1, 1 + extra))) if extra else credit
    dims = tuple(i for i, (have, want) in enumerate(zip(summed.shape, delta.shape)) if i and want == 1 and have != 1)
    summed = summed.sum(dim=dims, keepdim=True) if dims else summed
    usable = delta.abs() >= 1e-12
    return torch.where(usable, summed / torch.where(usable, delta, 1.0), 0.0)


def _body(opset: int) -> list[onnx.NodeProto]:
    return [helper.make_node("Pow", ["X", "B"], ["Y"])]


def _convert(ctx):
    from .. import functional

    shapes = [list(ctx.info(i).shape or ()) for i in (0, 1)]
    ctx.require(all(isinstance(d, int) for s in shapes for d in s[1:]) and (ctx.batch_axis(0) or 0) == 0,
                "ShapleyPow needs static operand shapes besides a leading batch dim")
    module = ShapleyPow(shapes[0][1:], shapes[1][1:])
    return ctx.module(module, ctx.call(functional.pack_operands, ctx.input(0), ctx.input(1)))


def _match(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    """A ``Pow`` of two run-time values of the same rank, static but for a shared leading dim."""
    if node.op != "Pow" or node.domain not in ("", None) or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if not all(isinstance(t, gs.Variable) and t.shape and t.dtype is not None and np.dtype(t.dtype).kind == "f"
               for t in (a, b)):
        return None
    if len(a.shape) != len(b.shape) or a.shape[0] != b.shape[0] or not all(
            isinstance(d, int) for d in (*a.shape[1:], *b.shape[1:])):
        return None
    node.op, node.domain = SHAPLEY_POW.name, DOMAIN
    return [node.name]


SHAPLEY_POW = register(CustomOp("ShapleyPow", _body, _convert, inputs=("X", "B"), match=_match))
