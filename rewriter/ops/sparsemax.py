"""Sparsemax: ``max(z - τ(z), 0)``, the Euclidean projection of ``z`` onto the simplex (TabNet's
attentive feature selection, sparse attention).

It is piecewise linear and continuous: wherever its *support* (the coordinates left
positive) stays the same, it is the linear map ``J_S = diag(s) - s sᵀ / |S|``. Along the
straight path from a reference ``z'`` to ``z`` the support changes at a few points, each
where one coordinate leaves or joins it; between them the path is linear. So the average
Jacobian over the path, ``Σ_segments length × J_S``, maps ``Δz`` exactly to ``Δy``, and is
the rule: exact (``Σ m Δz = Δy``) for any pair, and what integrated gradients would give for
this one function. The segments are found in closed form, all rows at once.

Exporters write sparsemax as its sorting algorithm (``TopK``, ``CumSum``, a count of the
support, ``GatherElements``, a division and a clamp at 0): ``match`` finds that clamp and
replaces what it computes with one ``shaprewrite.Sparsemax`` node; verification checks the
result against the source.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import helper

from ..modules import ExactRule, pair_path_rule
from . import DOMAIN, CustomOp, computes, reduce_last, register, sorted_with_ranks


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last dim."""
    return torch.clamp(z - _threshold(z), min=0)


def _threshold(z: torch.Tensor) -> torch.Tensor:
    """``τ(z)`` over the last dim (keeping it): the mean of the support's values minus ``1/|S|``."""
    ordered, _ = torch.sort(z, dim=-1, descending=True)
    cumulative = ordered.cumsum(-1)
    ks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    size = (1 + ks * ordered > cumulative).sum(-1, keepdim=True)
    return (cumulative.gather(-1, size - 1) - 1) / size.to(z.dtype)


def path_average_vjp(start: torch.Tensor, end: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``J̄ᵀ g``: the sparsemax Jacobian averaged over the straight path from ``start`` to
    ``end`` (last dim), applied to ``grad``. Between the points where a coordinate leaves or
    joins the support the support is constant, so the average is exact: a coordinate's
    ``y_j(t) = z_j(t) - τ(t)`` is concave along a line, so it crosses 0 at most twice.
    Computed in float64: in float32 the crossings' rounding left errors of 1e-3 of ``Δy``."""
    dtype = grad.dtype
    start, end, grad = start.double(), end.double(), grad.double()
    delta = end - start
    t = torch.zeros(start.shape[:-1] + (1,), dtype=start.dtype, device=start.device)
    total = torch.zeros_like(grad)
    for _ in range(2 * start.shape[-1] + 2):
        running = t < 1
        if not running.any():
            break
        # The support just after t (a point past t, before any crossing that close).
        ahead = start + torch.clamp(t + 1e-6, max=1.0) * delta
        support = (ahead - _threshold(ahead) > 0).to(start.dtype)
        size = support.sum(-1, keepdim=True)
        level = ((start * support).sum(-1, keepdim=True) - 1) / size  # τ along the segment: level + t * slope
        slope = (delta * support).sum(-1, keepdim=True) / size
        rate, height = delta - slope, start - level
        leaving = (support > 0) & (rate < 0)
        joining = (support == 0) & (rate > 0)
        crossing = torch.where(leaving | joining, -height / torch.where(rate == 0, 1.0, rate), torch.inf)
        crossing = torch.where(crossing > t + 1e-9, crossing, torch.inf)
        upto = torch.clamp(crossing.min(-1, keepdim=True).values, max=1.0)
        length = torch.where(running, upto - t, 0.0)
        projected = support * grad - support * (support * grad).sum(-1, keepdim=True) / size
        total = total + length * projected
        t = torch.where(running, upto, t)
    return total.to(dtype)


class Sparsemax(ExactRule):
    """Sparsemax over the last dim, with the path-averaged Jacobian as its rule (see the
    module notes)."""

    report_kind = "sparsemax"
    over_last_axis = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return sparsemax(z)

    def deeplift_multipliers(self, z: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        return pair_path_rule(path_average_vjp, z.detach(), grad_output)


def _body(opset: int) -> list[onnx.NodeProto]:
    """Sparsemax over the last axis in standard ops: sort, cumulative sum, the support's
    size, the threshold, a clamp at 0."""
    return [
        helper.make_node("Constant", [], ["last"], value_ints=[-1]),
        helper.make_node("Constant", [], ["one_i"], value_ints=[1]),
        helper.make_node("Constant", [], ["one_f"], value_float=1.0),
        helper.make_node("CastLike", ["one_f", "X"], ["one"]),
        *sorted_with_ranks(opset, "X"),
        helper.make_node("CumSum", ["ordered", "axis"], ["cumulative"]),
        helper.make_node("Mul", ["ranks", "ordered"], ["k_times"]),
        helper.make_node("Add", ["k_times", "one"], ["bound"]),
        helper.make_node("Greater", ["bound", "cumulative"], ["in_support"]),
        helper.make_node("CastLike", ["in_support", "X"], ["in_support_f"]),
        reduce_last(opset, "ReduceSum", "in_support_f", "size"),
        helper.make_node("Cast", ["size"], ["size_i"], to=onnx.TensorProto.INT64),
        helper.make_node("Sub", ["size_i", "one_i"], ["last_kept"]),
        helper.make_node("GatherElements", ["cumulative", "last_kept"], ["kept_sum"], axis=-1),
        helper.make_node("Sub", ["kept_sum", "one"], ["excess"]),
        helper.make_node("Div", ["excess", "size"], ["tau"]),
        helper.make_node("Sub", ["X", "tau"], ["shifted"]),
        helper.make_node("Relu", ["shifted"], ["Y"]),
    ]


def _convert(ctx):
    return ctx.module(Sparsemax(), ctx.input(0))


def _ancestors(tensor: gs.Tensor, limit: int = 40) -> list[gs.Node]:
    """The nodes computing ``tensor``, nearest first, at most ``limit``."""
    found, pending, seen = [], [tensor], set()
    while pending and len(found) < limit:
        current = pending.pop(0)
        for node in current.inputs:
            if id(node) not in seen:
                seen.add(id(node))
                found.append(node)
                pending.extend(t for t in node.inputs if isinstance(t, gs.Variable))
    return found


def clamped_at_zero(node: gs.Node) -> gs.Tensor | None:
    """What ``node`` clamps at 0 (``Relu``, ``Clip(·, 0)``, ``Max(·, 0)``), if it does."""
    from ..onnxkit.graph import scalar_value

    if node.op == "Relu":
        return node.inputs[0]
    if node.op == "Clip" and len(node.inputs) >= 2 and scalar_value(node.inputs[1]) == 0.0 and (
            len(node.inputs) < 3 or not node.inputs[2].name):
        return node.inputs[0]
    if node.op == "Max" and len(node.inputs) == 2:  # torch.clamp(·, min=0) from the dynamo exporter
        for value, bound in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            if scalar_value(bound) == 0.0:
                return value
    return None


def sorted_threshold(node: gs.Node) -> gs.Variable | None:
    """``z`` where ``node`` computes ``clamp(z - τ, 0)`` with ``τ`` from ``TopK(z)`` over the last
    axis (all of it, largest first) and a cumulative sum: the shape of sparsemax's and
    entmax's sorting algorithms."""
    clamped = clamped_at_zero(node)
    if clamped is None or len(clamped.inputs) != 1 or clamped.inputs[0].op != "Sub":
        return None
    z, tau = clamped.inputs[0].inputs
    above = _ancestors(tau)
    sorts = [n for n in above if n.op == "TopK" and n.inputs[0] is z and n.attrs.get("largest", 1) == 1]
    if not sorts or not any(n.op == "CumSum" and sorts[0].outputs[0] in _values_behind(n) for n in above):
        return None
    rank = len(z.shape) if z.shape is not None else None
    return z if rank is not None and sorts[0].attrs.get("axis", -1) in (-1, rank - 1) else None


def _match(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    """``clamp(z - τ, 0)`` computed by sorting that is sparsemax of ``z``: one Sparsemax."""
    z = sorted_threshold(node)
    if z is None or not computes(graph, z, node.outputs[0], sparsemax):
        return None
    output = node.outputs[0]
    node.outputs.clear()
    name = f"{node.name}_sparsemax"
    graph.nodes.append(gs.Node("Sparsemax", name, {}, [z], [output], domain=DOMAIN))
    return [name]


def _values_behind(node: gs.Node) -> list[gs.Tensor]:
    return [t for n in [node, *_ancestors(node.outputs[0], 8)] for t in n.inputs]


SPARSEMAX = register(CustomOp("Sparsemax", _body, _convert, match=_match))
