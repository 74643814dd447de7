"""Products of two input-dependent tensors become Shapley products.

For a bilinear ``y = f(a, b)`` (elementwise product, matrix product, two-operand einsum) the
two-player Shapley rule is exact: ``Δy = f(Δa, (b + b')/2) + f((a + a')/2, Δb)``. Neither
explainer ships that rule, so such nodes become ``shaprewrite.Shapley*`` nodes, imported as
one ``ShapleyProduct`` module each, whose rule ``rewriter.registration`` registers. A
product with a constant is linear and stays as it is. Division by an input-dependent
tensor is a product with its reciprocal (an elementwise module).

The rule pairs each input row with its reference row along dim 0, so each operand must
have static dims besides the batch, and the batch leading or on the same axis of both
(the importer moves it to the front around the product); a product that does not is
left alone (and reported as approximate).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..onnxkit.graph import (
    DOMAIN,
    Builder,
    batch_dims,
    float_dtype,
    is_float,
    replace_output,
    varying_tensors,
)
from ..ops.shapley import SHAPLEY_EINSUM, SHAPLEY_MATMUL, SHAPLEY_MUL
from .base import PassOptions, PassResult, graph_pass, replace_each

_SHAPLEY = {"Mul": SHAPLEY_MUL.name, "MatMul": SHAPLEY_MATMUL.name, "Einsum": SHAPLEY_EINSUM.name}


def _batch_axis(tensor: gs.Tensor, batch: set) -> int | None:
    """Which axis of ``tensor`` is the batch, when its other dims are static; None when
    unknown. With a symbolic batch: the one axis named like it, or 0 for a leading
    symbolic dim that is the batch merged with another (``"2*batch"``, heads into batch).
    With a fixed batch: 0 when the leading dim is it."""
    shape = tensor.shape
    if not shape:
        return None
    symbols = {d for d in batch if isinstance(d, str)}
    if not symbols:
        axis = 0 if shape[0] in batch else None
    else:
        named = [axis for axis, d in enumerate(shape) if d in symbols]
        axis = named[0] if len(named) == 1 else (0 if not named and isinstance(shape[0], str) else None)
    if axis is None or not all(isinstance(d, int) for i, d in enumerate(shape) if i != axis):
        return None
    return axis


def _pairable(op: str, tensors: list[gs.Tensor], batch: set) -> bool:
    """Whether the rule can pair each operand's rows with their reference rows: the batch
    leading in both, or on the same axis of operands of one rank (moved to the front around
    the product), outside a matrix product's last two axes."""
    axes = [_batch_axis(t, batch) for t in tensors]
    if None in axes:
        return False
    if axes == [0, 0]:
        return True
    rank = len(tensors[0].shape)
    return (axes[0] == axes[1] and len(tensors[1].shape) == rank and op != "Einsum"
            and (op != "MatMul" or axes[0] < rank - 2))


def _product(graph: gs.Graph, node: gs.Node, varying: set[str], batch: set) -> list[str] | None:
    inputs = list(node.inputs)
    if len(inputs) != 2 or not all(t.name in varying and is_float(t) for t in inputs):
        return None
    if node.op not in ("Div", *_SHAPLEY) or not _pairable(node.op, inputs, batch):
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


@graph_pass
def shapley_products(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Mul, Div, MatMul and Einsum of two input-dependent tensors -> Shapley products."""
    varying, batch = varying_tensors(graph), batch_dims(graph)
    return replace_each(graph, lambda node: _product(graph, node, varying, batch))
