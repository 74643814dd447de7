"""Entmax-1.5: ``[z/2 - τ(z)]₊²`` with ``τ`` making it sum to 1 (TabNet's ``mask_type="entmax"``,
sparse attention). Between sparsemax and softmax: sparse, but smooth where sparsemax kinks.

Where its support ``S`` stays the same its Jacobian is ``diag(s) - s sᵀ / Σs`` with
``s = √y`` (Peters, Niculae and Martins, 2019), and it stays continuous where a coordinate
leaves the support (``s`` reaches 0 there). The rule is that Jacobian averaged over the
straight path from the reference: composite Gauss-Legendre over the path, then the one
correction along ``Δz`` that makes ``Σ m Δz = Δy`` hold to float64 rounding (the quadrature
is accurate to about 1e-6 of ``Δy`` where the support changes; the correction takes what is
left). Computed in float64.

Exporters write it as its sorting algorithm: a max shift and halving, ``TopK``, cumulative
sums of the sorted values and their squares, the threshold, a clamp at 0 and a square.
``match`` checks by evaluation that such a piece computes entmax-1.5 (sparsemax's has the
same outline), and replaces it with one ``shaprewrite.Entmax15`` of twice the halved input.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import helper

from ..modules import ExactRule, pair_path_rule
from . import DOMAIN, CustomOp, computes, reduce_last, register, sorted_with_ranks
from .sparsemax import sorted_threshold

_PANELS = 16
_NODES, _WEIGHTS = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(6))


def entmax15(z: torch.Tensor) -> torch.Tensor:
    """Entmax-1.5 over the last dim."""
    x = (z - z.amax(-1, keepdim=True)) / 2
    ordered, _ = torch.sort(x, dim=-1, descending=True)
    ranks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    mean = ordered.cumsum(-1) / ranks
    mean_square = (ordered * ordered).cumsum(-1) / ranks
    spread = ranks * (mean_square - mean * mean)
    tau = mean - torch.clamp((1 - spread) / ranks, min=0).sqrt()
    size = (tau <= ordered).sum(-1, keepdim=True)
    return torch.clamp(x - tau.gather(-1, size - 1), min=0) ** 2


def _vjp(z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    s = entmax15(z).sqrt()
    return s * grad - s * (s * grad).sum(-1, keepdim=True) / s.sum(-1, keepdim=True)


def path_average_vjp(start: torch.Tensor, end: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``J̄ᵀ g`` for entmax-1.5 over the last dim, ``J̄`` its Jacobian averaged over the straight
    path from ``start`` to ``end`` (see the module notes). In float64."""
    dtype = grad.dtype
    start, end, grad = start.double(), end.double(), grad.double()
    delta = end - start
    total = torch.zeros_like(grad)
    nodes, weights = (_NODES.to(start) + 1) / 2, _WEIGHTS.to(start) / 2
    for panel in range(_PANELS):
        for t, w in zip((panel + nodes) / _PANELS, weights / _PANELS):
            total = total + w * _vjp(start + t * delta, grad)
    change = (grad * (entmax15(end) - entmax15(start))).sum(-1, keepdim=True)
    length = (delta * delta).sum(-1, keepdim=True)
    missing = change - (total * delta).sum(-1, keepdim=True)
    total = total + torch.where(length > 0, missing / torch.where(length > 0, length, 1.0), 0.0) * delta
    return total.to(dtype)


class Entmax15(ExactRule):
    """Entmax-1.5 over the last dim, with the path-averaged Jacobian as its rule (see the
    module notes)."""

    report_kind = "entmax"
    over_last_axis = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return entmax15(z)

    def deeplift_multipliers(self, z: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        return pair_path_rule(path_average_vjp, z.detach(), grad_output)


def _body(opset: int) -> list[onnx.NodeProto]:
    """Entmax-1.5 over the last axis in standard ops, the algorithm of :func:`entmax15`."""
    make = helper.make_node
    return [
        make("Constant", [], ["last"], value_ints=[-1]),
        make("Constant", [], ["one_i"], value_ints=[1]),
        make("Constant", [], ["one_f"], value_float=1.0),
        make("CastLike", ["one_f", "X"], ["one"]),
        make("Constant", [], ["two_f"], value_float=2.0),
        make("CastLike", ["two_f", "X"], ["two"]),
        reduce_last(opset, "ReduceMax", "X", "top"),
        make("Sub", ["X", "top"], ["from_top"]),
        make("Div", ["from_top", "two"], ["half"]),
        *sorted_with_ranks(opset, "half"),
        make("CumSum", ["ordered", "axis"], ["sums"]),
        make("Mul", ["ordered", "ordered"], ["squares"]),
        make("CumSum", ["squares", "axis"], ["square_sums"]),
        make("Div", ["sums", "ranks"], ["mean"]),
        make("Div", ["square_sums", "ranks"], ["mean_square"]),
        make("Mul", ["mean", "mean"], ["mean_squared"]),
        make("Sub", ["mean_square", "mean_squared"], ["variance"]),
        make("Mul", ["ranks", "variance"], ["spread"]),
        make("Sub", ["one", "spread"], ["room"]),
        make("Div", ["room", "ranks"], ["per_rank"]),
        make("Relu", ["per_rank"], ["kept"]),
        make("Sqrt", ["kept"], ["root"]),
        make("Sub", ["mean", "root"], ["taus"]),
        make("Greater", ["taus", "ordered"], ["outside"]),
        make("Not", ["outside"], ["inside"]),
        make("CastLike", ["inside", "X"], ["inside_f"]),
        reduce_last(opset, "ReduceSum", "inside_f", "size"),
        make("Cast", ["size"], ["size_i"], to=onnx.TensorProto.INT64),
        make("Sub", ["size_i", "one_i"], ["last_kept"]),
        make("GatherElements", ["taus", "last_kept"], ["tau"], axis=-1),
        make("Sub", ["half", "tau"], ["shifted"]),
        make("Relu", ["shifted"], ["clamped"]),
        make("Mul", ["clamped", "clamped"], ["Y"]),
    ]


def _convert(ctx):
    return ctx.module(Entmax15(), ctx.input(0))


def _squared(node: gs.Node) -> gs.Tensor | None:
    """What ``node`` squares (``Pow(·, 2)`` or ``Mul(c, c)``), if it does."""
    from ..onnxkit.graph import scalar_value

    if node.op == "Pow" and scalar_value(node.inputs[1]) == 2.0:
        return node.inputs[0]
    if node.op == "Mul" and node.inputs[0] is node.inputs[1]:
        return node.inputs[0]
    return None


def _match(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    """``clamp(x - τ, 0)²`` computed by sorting that is entmax-1.5 of ``2x``: one Entmax15."""
    clamped = _squared(node)
    if clamped is None or len(clamped.inputs) != 1:
        return None
    x = sorted_threshold(clamped.inputs[0])
    if x is None or not computes(graph, x, node.outputs[0], lambda v: entmax15(2 * v)):
        return None
    output = node.outputs[0]
    node.outputs.clear()
    name = f"{node.name}_entmax15"
    doubled = gs.Variable(f"{name}_input", dtype=x.dtype, shape=x.shape)
    two = gs.Constant(f"{name}_two", np.array(2.0, dtype=np.float32))
    graph.nodes.append(gs.Node("Mul", f"{name}_double", inputs=[x, two], outputs=[doubled]))
    graph.nodes.append(gs.Node("Entmax15", name, {}, [doubled], [output], domain=DOMAIN))
    return [f"{name}_double", name]


ENTMAX15 = register(CustomOp("Entmax15", _body, _convert, match=_match))
