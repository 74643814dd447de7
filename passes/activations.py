"""Activation passes: fuse activations that exporters split into pieces, and decompose the
ones explainers do not know into pieces they do.

Why both directions are exact: DeepLIFT's rescale rule ``m = Δy/Δx`` is
exact for any elementwise function, but explainers apply it only to module classes they
know. A split activation (GELU as Div/Erf/Add/Mul/Mul, SiLU as Sigmoid·Mul) leaves a
product of two tensors that both depend on ``x``, which no rescale rule covers: fused back
into one node it becomes one module. Conversely SELU, CELU, the clip family, PReLU and Abs
are sums of scaled ReLUs/ELUs of affine maps of ``x``; written that way every piece has a
rule both SHAP and Captum ship, and the sum of the pieces' rescaled contributions equals
the rescale rule of the whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from ..naming import fresh_name
from ..onnxkit.graph import (
    DOMAIN,
    Builder,
    const_value,
    float_dtype,
    is_const,
    is_float,
    only_consumer,
    other_input,
    producer,
    replace_output,
    scalar_value,
)
from ..ops.fused_activations import GELU_ERF, GELU_TANH, HARD_SWISH, MISH, SILU
from .base import PassOptions, PassResult, graph_pass, replace_each

# -- matching ----------------------------------------------------------------------------


def _consumer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    node = only_consumer(tensor)
    return node if node is not None and node.op == op else None


def _times_x(tensor: gs.Tensor, x: gs.Tensor) -> list[gs.Node] | None:
    """The Mul that multiplies ``tensor`` by ``x``, as ``[mul]``."""
    mul = _consumer(tensor, "Mul")
    return [mul] if mul is not None and other_input(mul, tensor) is x else None


def _half_x_times(tensor: gs.Tensor, x: gs.Tensor) -> list[gs.Node] | None:
    """The nodes computing ``0.5 * x * tensor`` in any association, ending with the result."""
    first = _consumer(tensor, "Mul")
    if first is None:
        return None
    factor = other_input(first, tensor)
    if factor is x or is_const(factor, 0.5):
        second = _consumer(first.outputs[0], "Mul")
        if second is None:
            return None
        rest = other_input(second, first.outputs[0])
        if (factor is x and is_const(rest, 0.5)) or (factor is not x and rest is x):
            return [first, second]
        return None
    half = producer(factor)
    if half is not None and half.op == "Mul" and x in half.inputs and is_const(other_input(half, x), 0.5):
        return [half, first]
    return None


def _divided_by_root2(tensor: gs.Tensor) -> gs.Tensor | None:
    """``x`` when ``tensor`` is ``x / sqrt(2)`` or ``x * (1 / sqrt(2))``."""
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Div" and is_const(node.inputs[1], math.sqrt(2.0)):
        return node.inputs[0]
    if node.op == "Mul":
        for x, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            if is_const(c, 1 / math.sqrt(2.0)):
                return x
    return None


def _split_mul(node: gs.Node | None, value: float) -> gs.Tensor | None:
    """For ``node = t * value`` (either order), ``t``."""
    if node is None or node.op != "Mul":
        return None
    for t, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        if is_const(c, value, rtol=1e-4):
            return t
    return None


def _is_cube_of(tensor: gs.Tensor, x: gs.Tensor) -> bool:
    node = producer(tensor)
    if node is None:
        return False
    if node.op == "Pow":
        return node.inputs[0] is x and is_const(node.inputs[1], 3.0)
    if node.op == "Mul":
        a, b = node.inputs
        for square, single in ((a, b), (b, a)):
            sq = producer(square)
            if single is x and sq is not None and sq.op == "Mul" and list(sq.inputs) == [x, x]:
                return True
    return False


@dataclass(frozen=True)
class Fusion:
    """A split activation found: ``op`` of ``x`` computes what ``nodes`` compute; the last
    of them writes the result."""

    x: gs.Tensor
    op: str
    nodes: list[gs.Node]


@dataclass(frozen=True)
class Declined:
    """A near-match: the pattern's core is there, but the graph around it computes
    something else. Reported by the core node's name, so a user can see why it stayed split."""

    reason: str


Match = Fusion | Declined | None  # None: the node does not start this pattern at all


def _match_silu(node: gs.Node) -> Match:
    if node.op != "Sigmoid":
        return None
    x = node.inputs[0]
    tail = _times_x(node.outputs[0], x)
    return Fusion(x, SILU.name, [node, *tail]) if tail else None


def _match_hardswish(node: gs.Node) -> Match:
    if node.op != "HardSigmoid":
        return None
    x = node.inputs[0]
    tail = _times_x(node.outputs[0], x)
    if not tail:
        return None
    alpha, beta = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)
    if not math.isclose(alpha, 1 / 6, rel_tol=1e-5) or not math.isclose(beta, 0.5):
        return Declined(f"HardSigmoid(alpha={alpha:g}, beta={beta:g}) times x is HardSwish only at alpha 1/6, beta 1/2")
    return Fusion(x, HARD_SWISH.name, [node, *tail])


def _match_mish(node: gs.Node) -> Match:
    if node.op != "Tanh":
        return None
    softplus = producer(node.inputs[0])
    if softplus is None or softplus.op != "Softplus":
        return None
    x = softplus.inputs[0]
    tail = _times_x(node.outputs[0], x)
    if not tail:
        return None
    if only_consumer(softplus.outputs[0]) is not node:
        return Declined("x * tanh(softplus(x)) is Mish, but the softplus is also read elsewhere")
    return Fusion(x, MISH.name, [softplus, node, *tail])


def _match_gelu_erf(node: gs.Node) -> Match:
    if node.op != "Erf":
        return None
    x = _divided_by_root2(node.inputs[0])
    add = _consumer(node.outputs[0], "Add")
    if x is None or add is None or not is_const(other_input(add, node.outputs[0]), 1.0):
        return None
    tail = _half_x_times(add.outputs[0], x)
    if not tail:
        return Declined("1 + erf(x / sqrt 2) is not multiplied by 0.5 * x alone, so it is not GELU")
    return Fusion(x, GELU_ERF.name, [producer(node.inputs[0]), node, add, *tail])


def _match_gelu_tanh(node: gs.Node) -> Match:
    if node.op != "Tanh":
        return None
    scaled = producer(node.inputs[0])
    inner = _split_mul(scaled, math.sqrt(2.0 / math.pi))
    add_inner = producer(inner) if inner is not None else None
    if add_inner is None or add_inner.op != "Add":
        return None
    for x, term in ((add_inner.inputs[0], add_inner.inputs[1]), (add_inner.inputs[1], add_inner.inputs[0])):
        cube = _split_mul(producer(term), 0.044715)
        if cube is not None and _is_cube_of(cube, x):
            break
    else:
        return None
    add = _consumer(node.outputs[0], "Add")
    tail = _half_x_times(add.outputs[0], x) if add is not None and is_const(other_input(add, node.outputs[0]), 1.0) \
        else None
    if not tail:
        return Declined("tanh(sqrt(2/pi) (x + 0.044715 x^3)) is not followed by 0.5 * x * (1 + .) alone, "
                        "so it is not GELU")
    return Fusion(x, GELU_TANH.name, [scaled, node, add, *tail])


def _match_softplus_log(node: gs.Node) -> Match:
    """``log(1 + exp(x))``."""
    if node.op != "Exp":
        return None
    add = _consumer(node.outputs[0], "Add")
    if add is None or not is_const(other_input(add, node.outputs[0]), 1.0):
        return None
    log = _consumer(add.outputs[0], "Log")
    return Fusion(node.inputs[0], "Softplus", [node, add, log]) if log else None


def _match_softplus_threshold(node: gs.Node) -> Match:
    """torch's softplus as the dynamo exporter writes it at beta 1:
    ``where(x*1 > threshold, x, softplus(x*1) / 1)`` (the branches agree to float precision),
    or with the scalings by 1 already folded away: ``where(x > threshold, x, softplus(x))``."""
    if node.op != "Softplus":
        return None
    scale = producer(node.inputs[0])
    x = _split_mul(scale, 1.0)
    pieces = [scale, node] if x is not None else [node]
    x = node.inputs[0] if x is None else x
    div = _consumer(node.outputs[0], "Div")
    if div is not None and is_const(div.inputs[1], 1.0):
        pieces.append(div)
        result = div.outputs[0]
    else:
        result = node.outputs[0]
    where = _consumer(result, "Where")
    greater = producer(where.inputs[0]) if where is not None else None
    if where is None or where.inputs[1] is not x or where.inputs[2] is not result \
            or greater is None or greater.op != "Greater" or greater.inputs[0] is not node.inputs[0]:
        if len(pieces) == 1:
            return None  # a plain Softplus: nothing to fuse
        return Declined("softplus(x * 1) / 1 is not guarded by where(x > threshold, x, .) as torch's "
                        "softplus at beta 1 is")
    threshold = scalar_value(greater.inputs[1])
    if threshold is None or threshold < 15:  # above 15, softplus(x) and x agree in float32
        return Declined(f"where(x > {threshold}, x, softplus(x)) differs from softplus below x = 15")
    return Fusion(x, "Softplus", [*pieces, greater, where])


def _match_softsign(node: gs.Node) -> Match:
    """``x / (1 + |x|)``."""
    if node.op != "Abs":
        return None
    x = node.inputs[0]
    add = _consumer(node.outputs[0], "Add")
    if add is None or not is_const(other_input(add, node.outputs[0]), 1.0):
        return None
    div = _consumer(add.outputs[0], "Div")
    if div is None or div.inputs[0] is not x or div.inputs[1] is not add.outputs[0]:
        return Declined("1 + |x| does not divide x, so it is not softsign")
    return Fusion(x, "Softsign", [node, add, div])


# Softplus first: Mish is matched on top of a fused Softplus.
_FUSIONS: list[Callable[[gs.Node], Match]] = [
    _match_softplus_log, _match_softplus_threshold, _match_softsign, _match_silu, _match_hardswish,
    _match_mish, _match_gelu_erf, _match_gelu_tanh]

# Fused ops with a standard ONNX op at every opset the tool reads; the rest are functions.
_STANDARD = {"Softplus", "Softsign"}


def _fused_name(nodes: list[gs.Node]) -> str:
    """The pattern's own name: the last node's, when the exporter named it after the torch
    op; otherwise the name all pattern nodes share (their module's path)."""
    last = nodes[-1]
    if not last.name.split("_")[-1].isdigit() and not last.name.lower().endswith(last.op.lower()):
        return last.name
    tokens = [n.name.split("_") for n in nodes]
    shared = []
    for column in zip(*tokens):
        if len(set(column)) != 1:
            break
        shared.append(column[0])
    return "_".join(shared) if shared else last.name


@graph_pass
def fuse_activations(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Replace split activations (GELU, SiLU, Mish, HardSwish, Softplus, Softsign) by one
    node; near-matches are left split, each with its reason in the result."""
    result = PassResult()
    consumed: set[int] = set()  # pattern nodes already replaced (dead until the cleanup)
    fused: list[tuple[gs.Node, str]] = []
    declined: dict[int, tuple[str, str]] = {}
    for fuse in _FUSIONS:
        for node in list(graph.nodes):
            match = None if id(node) in consumed else fuse(node)
            if isinstance(match, Declined):
                declined.setdefault(id(node), (node.name, match.reason))
            if not isinstance(match, Fusion) or any(id(n) in consumed for n in match.nodes):
                continue
            consumed.update(id(n) for n in match.nodes)
            name = _fused_name(match.nodes)
            node = gs.Node(match.op, f"{name}__fused", {}, [match.x], [replace_output(match.nodes[-1])],
                           domain=None if match.op in _STANDARD else DOMAIN)
            graph.nodes.append(node)
            fused.append((node, name))
    # A core one rule declined may be part of what another fused.
    result.declined = dict(found for key, found in declined.items() if key not in consumed)
    if not fused:
        return result
    before = [n.name for n in graph.nodes]
    graph.cleanup()  # the patterns' nodes go, unless something else reads them
    after = {n.name for n in graph.nodes}
    result.removed = [name for name in before if name not in after and not name.endswith("__fused")]
    # Named only now, so each can take the name of the pattern node it replaces.
    taken = after - {node.name for node, _ in fused}
    for node, name in fused:
        node.name = fresh_name(name, taken.__contains__)
        taken.add(node.name)
        result.added.append(node.name)
    return result


# -- decomposition -----------------------------------------------------------------------


def _relu_of_shift(b: Builder, x: gs.Tensor, shift: float, suffix: str) -> gs.Tensor:
    """``Relu(x - shift)``, without the Sub when ``shift`` is 0."""
    if shift != 0.0:
        x = b.node("Sub", [x, b.const(shift, f"{suffix}_shift")], f"{suffix}_sub")
    return b.node("Relu", [x], suffix)


def _clip(b: Builder, x: gs.Tensor, lo: float | None, hi: float | None, out: gs.Variable) -> None:
    """``clip(x, lo, hi) = lo + Relu(x - lo) - Relu(x - hi)``; one ReLU when one-sided."""
    if lo is not None and hi is not None:
        inside = [_relu_of_shift(b, x, lo, "relu_lo"), _relu_of_shift(b, x, hi, "relu_hi")]
        if lo == 0.0:
            b.node("Sub", inside, "sub", output=out)
        else:
            b.node("Add", [b.node("Sub", inside, "sub"), b.const(lo, "lo")], "add_lo", output=out)
    elif lo == 0.0:
        b.node("Relu", [x], "relu_lo", output=out)
    elif lo is not None:
        b.node("Add", [_relu_of_shift(b, x, lo, "relu_lo"), b.const(lo, "lo")], "add_lo", output=out)
    else:
        b.node("Sub", [x, _relu_of_shift(b, x, hi, "relu_hi")], "sub_hi", output=out)


def _clip_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return node.attrs.get("min"), node.attrs.get("max")
    bounds = []
    for i in (1, 2):
        tensor = node.inputs[i] if len(node.inputs) > i else None
        if tensor is None or (isinstance(tensor, gs.Variable) and not tensor.name):
            bounds.append(None)
            continue
        value = scalar_value(tensor)
        if value is None:
            return None  # a bound computed at run time: leave the Clip alone
        bounds.append(value)
    return bounds[0], bounds[1]


def _decompose(graph: gs.Graph, node: gs.Node) -> list[str] | None:
    """Rewrite one node in place; the names of the added nodes, or None to leave it."""
    if node.op not in DECOMPOSED or not node.inputs or not is_float(node.inputs[0]):
        return None
    x = node.inputs[0]
    b = Builder(graph, node.name, float_dtype(x))
    if node.op == "Selu":
        alpha = node.attrs.get("alpha", 1.6732632423543772)
        gamma = node.attrs.get("gamma", 1.0507009873554805)
        elu = b.node("Elu", [x], "elu", {"alpha": float(alpha)})
        b.node("Mul", [elu, b.const(gamma, "gamma")], "scale", output=replace_output(node))
    elif node.op == "Celu":
        alpha = float(node.attrs.get("alpha", 1.0))
        shrunk = b.node("Mul", [x, b.const(1.0 / alpha, "inv_alpha")], "shrink")
        elu = b.node("Elu", [shrunk], "elu", {"alpha": 1.0})
        b.node("Mul", [elu, b.const(alpha, "alpha")], "scale", output=replace_output(node))
    elif node.op == "Clip":
        bounds = _clip_bounds(node)
        if bounds is None or bounds == (None, None):
            return None
        _clip(b, x, bounds[0], bounds[1], replace_output(node))
    elif node.op == "HardSigmoid":
        alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
        affine = b.node("Add", [b.node("Mul", [x, b.const(alpha, "alpha")], "scale"), b.const(beta, "beta")], "shift")
        _clip(b, affine, 0.0, 1.0, replace_output(node))
    elif node.op == "PRelu":
        # A slope computed at run time (fed as an input) makes the product a Shapley one.
        slope = const_value(node.inputs[1])
        negative = b.node("Relu", [b.node("Neg", [x], "neg")], "relu_neg")
        scaled = b.node("Mul", [negative, b.const(slope, "slope") if slope is not None else node.inputs[1]],
                        "slope_mul")
        b.node("Sub", [b.node("Relu", [x], "relu_pos"), scaled], "sub", output=replace_output(node))
    elif node.op == "Abs":
        negative = b.node("Relu", [b.node("Neg", [x], "neg")], "relu_neg")
        b.node("Add", [b.node("Relu", [x], "relu_pos"), negative], "add", output=replace_output(node))
    return b.added


# Ops this pass writes with ReLU/ELU: they need no converter (expand_function_ops leaves them).
DECOMPOSED = {"Selu", "Celu", "Clip", "HardSigmoid", "PRelu", "Abs"}


@graph_pass
def decompose_activations(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Write SELU, CELU, HardSigmoid, PReLU, Abs (and, when asked, Clip: ReLU6, Hardtanh)
    with ReLU/ELU."""
    return replace_each(graph, lambda node: None if (
        node.op == "Clip" and not options.decompose_clips) else _decompose(graph, node))
