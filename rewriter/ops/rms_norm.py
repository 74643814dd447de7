"""RMSNorm: ``x (mean(x²) + ε)^-1/2`` over the last dim (T5, LLaMA, Gemma, Mistral; LayerNorm
is the same map of the centred ``x``, see :mod:`.standardize`).

Its rule is the Jacobian averaged over the straight path from the reference to the input:
exact for any pair (``Σ m Δx = Δy``), and what integrated gradients gives for this one
function. Along the path ``p(t) = x' + tΔ`` the mean square is a quadratic
``s(t) = a (t - t₀)² + s₀``, so the average needs four integrals of powers of ``t`` against
``s^-1/2`` and ``s^-3/2``, all in closed form.

Why not the decomposition's rules (rescale the inverse square root, Shapley product with
``x``): where the reference row is near 0 (a zero or padding embedding, a zero baseline,
the output of a layer that is 0 at the reference) the inverse root there is ``ε^-1/2`` —
10⁶ for BERT's ``ε = 1e-12``. The product's rule then credits ``Δx`` with half of it and
the root with minus as much, terms that cancel only in exact arithmetic; through a few
such layers float32 keeps nothing of the difference (Gemma-2 against its pad token:
attributions of 10⁶ for an output change of 1). The path average there is about
``log(|x| / √ε) / |x|``: the attributions stay the size of what they explain.

Exporters write RMSNorm as ``Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), ε))))`` (or
with ``Div``, or ``x * x``); ONNX's ``RMSNormalization`` expands to it: ``match`` replaces
that computation with one ``shaprewrite.RMSNorm``; the weight's product stays linear.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import helper

from ..modules import ExactRule, pair_path_rule
from . import DOMAIN, CustomOp, reduce_last, register

# Gauss-Legendre on [0, 1]: exact to float64 rounding where s has no zero within 2 of the
# path (its complex roots are t₀ ± i√(s₀/a)); nearer, the closed form is used.
_NODES, _WEIGHTS = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(24))
_NODES, _WEIGHTS = (_NODES + 1) / 2, _WEIGHTS / 2


def _mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(-1, keepdim=True)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


def path_average_vjp(start: torch.Tensor, end: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    """``J̄ᵀ g`` for ``y(p) = p (mean(p²) + eps)^-1/2`` over the last dim, ``J̄`` its Jacobian
    averaged over the straight path from ``start`` to ``end``. In float64.

    ``J(p) = s^-1/2 I - s^-3/2 p pᵀ / n``; with ``p = m + τΔ`` (``m`` the path's point nearest
    0, ``τ = t - t₀``), ``J̄ᵀ g = g ∫s^-1/2 - (1/n)[(g·m) m ∫s^-3/2 + ((g·m)Δ + (g·Δ)m) ∫τ s^-3/2
    + (g·Δ) Δ ∫τ² s^-3/2]``. Substituting ``τ = w sinh u`` (``w² = s₀/a``) turns the four
    integrals into ``u``, ``tanh u``, ``-sech u`` and ``u - tanh u`` over the path's ends.
    Where ``s`` barely changes along the path those differences cancel, and the smooth
    integrands are summed by Gauss-Legendre instead."""
    dtype = grad.dtype
    x0, g = start.double(), grad.double()
    delta = end.double() - x0
    n = x0.shape[-1]
    a = _mean(delta * delta)
    moving = a > 0
    safe_a = torch.where(moving, a, 1.0)
    t0 = torch.where(moving, -_mean(x0 * delta) / safe_a, 0.0)
    m = x0 + t0 * delta
    s0 = _mean(m * m) + eps
    width_squared = torch.where(moving, s0 / safe_a, torch.inf)
    outside = torch.clamp(-t0, min=0) + torch.clamp(t0 - 1, min=0)
    smooth = outside * outside + width_squared >= 4

    g_m, g_delta = _dot(g, m), _dot(g, delta)

    # Smooth: quadrature in τ, the same decomposition around m.
    tau = _NODES.to(x0) - t0  # [..., nodes]
    s = a * tau * tau + s0
    weights = _WEIGHTS.to(x0)
    inv_root, inv_cube = s.rsqrt(), s.rsqrt() ** 3
    q_j0 = (weights * inv_root).sum(-1, keepdim=True)
    q_l0 = (weights * inv_cube).sum(-1, keepdim=True)
    q_l1 = (weights * tau * inv_cube).sum(-1, keepdim=True)
    q_l2 = (weights * tau * tau * inv_cube).sum(-1, keepdim=True)

    # Peaked: closed form.
    root_a = safe_a.sqrt()
    width = width_squared.clamp(max=1e300).sqrt()
    u0, u1 = torch.asinh(-t0 / width), torch.asinh((1 - t0) / width)
    c_j0 = (u1 - u0) / root_a
    c_l0 = (torch.tanh(u1) - torch.tanh(u0)) / (s0 * root_a)
    c_l1 = -(1 / torch.cosh(u1) - 1 / torch.cosh(u0)) / (safe_a * s0.sqrt())
    c_l2 = ((u1 - torch.tanh(u1)) - (u0 - torch.tanh(u0))) / (safe_a * root_a)

    j0, l0, l1, l2 = (torch.where(smooth, q, c) for q, c in
                      ((q_j0, c_j0), (q_l0, c_l0), (q_l1, c_l1), (q_l2, c_l2)))
    result = g * j0 - (g_m * m * l0 + (g_m * delta + g_delta * m) * l1 + g_delta * delta * l2) / n
    # eps 0 and a path through 0: the map jumps there and has no average; nothing is credited.
    return torch.nan_to_num(result, nan=0.0, posinf=0.0, neginf=0.0).to(dtype)


def pair_vjp(x: torch.Tensor, grad_output: torch.Tensor, eps: float) -> torch.Tensor:
    """Multipliers for a batch ``[rows; references]`` (see ``modules.pair_path_rule``)."""
    return pair_path_rule(lambda start, end, grad: path_average_vjp(start, end, grad, eps), x, grad_output)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(ExactRule):
    """``x (mean(x²) + eps)^-1/2`` over the last dim, with the path-averaged Jacobian as its
    rule (see the module notes)."""

    report_kind = "normalization"
    over_last_axis = True

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.eps)

    def deeplift_multipliers(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        return pair_vjp(x.detach(), grad_output, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def epsilon_constant() -> onnx.NodeProto:
    """``eps_f``: a Constant taking the calling node's ``epsilon``."""
    node = helper.make_node("Constant", [], ["eps_f"])
    ref = onnx.AttributeProto()
    ref.name, ref.ref_attr_name, ref.type = "value_float", "epsilon", onnx.AttributeProto.FLOAT
    node.attribute.append(ref)
    return node


def _body(opset: int) -> list[onnx.NodeProto]:
    return [helper.make_node("Constant", [], ["last"], value_ints=[-1]),
            helper.make_node("Mul", ["X", "X"], ["sq"]), reduce_last(opset, "ReduceMean", "sq", "ms"), epsilon_constant(),
            helper.make_node("CastLike", ["eps_f", "X"], ["eps"]), helper.make_node("Add", ["ms", "eps"], ["se"]),
            helper.make_node("Sqrt", ["se"], ["root"]), helper.make_node("Div", ["X", "root"], ["Y"])]


def _convert(ctx):
    return ctx.module(RMSNorm(ctx.attr("epsilon", 1e-6)), ctx.input(0))


def _producer(tensor: gs.Tensor, *ops: str) -> gs.Node | None:
    """The node computing ``tensor`` when it is one of ``ops``."""
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op in ops:
        return tensor.inputs[0]
    return None


def _squares(tensor: gs.Tensor, x: gs.Tensor) -> bool:
    """``tensor`` is ``x²`` (``Pow(x, 2)`` or ``Mul(x, x)``)."""
    from ..onnxkit.graph import scalar_value

    node = _producer(tensor, "Pow", "Mul")
    if node is None:
        return False
    if node.op == "Pow":
        return node.inputs[0] is x and scalar_value(node.inputs[1]) == 2.0
    return node.inputs[0] is x and node.inputs[1] is x


def _mean_over_last(node: gs.Node, x: gs.Tensor) -> bool:
    from ..onnxkit.graph import const_value

    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        value = const_value(node.inputs[1])
        axes = None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    rank = len(x.shape) if x.shape is not None else None
    return (rank is not None and axes is not None and len(axes) == 1 and axes[0] in (-1, rank - 1)
            and node.attrs.get("keepdims", 1) == 1)


def _roots(node: gs.Node) -> list[tuple[gs.Tensor, gs.Node]]:
    """``(x, Sqrt node)`` for each way ``node`` reads as ``x / sqrt(·)`` or ``x * sqrt(·)^-1``."""
    if node.op == "Div" and len(node.inputs) == 2:
        root = _producer(node.inputs[1], "Sqrt")
        return [(node.inputs[0], root)] if root else []
    if node.op != "Mul" or len(node.inputs) != 2:
        return []
    found = []
    for x, other in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        reciprocal = _producer(other, "Reciprocal")
        root = reciprocal and _producer(reciprocal.inputs[0], "Sqrt")
        if root:
            found.append((x, root))
    return found


def _match(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    """``x / sqrt(mean(x²) + ε)`` or ``x * sqrt(mean(x²) + ε)^-1`` over the last axis, ``ε`` a
    positive constant: one RMSNorm of ``x``."""
    from ..onnxkit.graph import scalar_value

    for x, root in _roots(node):
        add = _producer(root.inputs[0], "Add")
        for mean_of, eps in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])) if add else ():
            mean, epsilon = _producer(mean_of, "ReduceMean"), scalar_value(eps)
            if (mean is None or epsilon is None or not epsilon > 0 or not _mean_over_last(mean, x)
                    or not _squares(mean.inputs[0], x)):
                continue
            output = node.outputs[0]
            node.outputs.clear()
            name = f"{node.name}_rms_norm"
            graph.nodes.append(gs.Node("RMSNorm", name, {"epsilon": float(epsilon)}, [x], [output], domain=DOMAIN))
            return [name]
    return None


RMS_NORM = register(CustomOp("RMSNorm", _body, _convert, attributes=("epsilon",), match=_match))
