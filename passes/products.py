"""Products of two input-dependent tensors become Shapley products.

For a bilinear ``y = f(a, b)`` (elementwise product, matrix product, two-operand einsum) the
two-player Shapley rule is exact: ``Δy = f(Δa, (b + b')/2) + f((a + a')/2, Δb)``. Neither
explainer ships that rule, so such nodes become ``shaprewrite.Shapley*`` nodes, imported as
one ``ShapleyProduct`` module each, whose rule ``rewriter.explainers`` registers. A
product with a constant is linear and stays as it is. Division by an input-dependent
tensor is a product with its reciprocal (an elementwise module).

The rule pairs each input row with its reference row along dim 0, so each operand must
have the batch leading and static other dims; a product that does not is left alone
(and reported as approximate).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .base import PassOptions, PassResult, replace_each
from .graph import (
    DOMAIN,
    Builder,
    batch_dims,
    float_dtype,
    is_float,
    replace_output,
    varying_tensors,
)

_SHAPLEY = {"Mul": "ShapleyMul", "MatMul": "ShapleyMatMul", "Einsum": "ShapleyEinsum"}


def _batch_leading(tensor: gs.Tensor, batch: set) -> bool:
    """Known shape, static dims after the first, and a first dim that is the batch: the
    inputs' batch dim, or (with a symbolic batch) a dim inference could not name, as when
    the batch is merged with another dim."""
    shape = tensor.shape
    if not shape or not all(isinstance(d, int) for d in shape[1:]):
        return False
    first = shape[0]
    symbolic = any(isinstance(d, str) for d in batch)
    return first in batch or (symbolic and not isinstance(first, int))


def _product(graph: gs.Graph, node: gs.Node, varying: set[str], batch: set) -> list[str] | None:
    inputs = list(node.inputs)
    if len(inputs) != 2 or not all(t.name in varying and is_float(t) for t in inputs):
        return None
    if node.op not in ("Div", *_SHAPLEY) or not all(_batch_leading(t, batch) for t in inputs):
        return None
    b = Builder(graph, node.name, float_dtype(inputs[0]))
    a, other = inputs
    op = node.op
    attrs = {"equation": node.attrs["equation"]} if op == "Einsum" else {}
    if op == "Div":
        other = b.node("Reciprocal", [other], "reciprocal")
        op = "Mul"
    b.node(_SHAPLEY[op], [a, other], "product", attrs, output=replace_output(node), domain=DOMAIN)
    return b.added


def shapley_products(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Mul, Div, MatMul and Einsum of two input-dependent tensors -> Shapley products."""
    varying, batch = varying_tensors(graph), batch_dims(graph)
    return replace_each(graph, "shapley_products", lambda node: _product(graph, node, varying, batch))
