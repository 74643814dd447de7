"""Make a fixed batch dim dynamic, so a model exported with batch 1 runs on any batch.

SHAP runs batches of twice the background size, so a rewritten model must accept any
batch. Files exported with a fixed batch (often 1) declare it on their inputs and bake it
into Reshape targets (``[1, -1]``). This pass renames the leading input dim to a symbol
and rewrites each Reshape that copies the batch through a literal into one that copies it
with ONNX's ``0`` ("same as the input"). Verification at another batch size then checks
that nothing else depended on the literal.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..onnxkit.facts import BATCH, dim_of
from ..onnxkit.shapes import inferred_types
from ..onnxkit.weights import export_light
from .base import PassOptions, PassResult, graph_pass


def _fixed_batch(graph: gs.Graph) -> int | None:
    """The leading dim all graph inputs share, when it is fixed; None otherwise."""
    dims = set()
    for tensor in graph.inputs:
        if not tensor.shape:
            return None
        dims.add(tensor.shape[0])
    if len(dims) != 1:
        return None
    (dim,) = dims
    return dim if isinstance(dim, int) else None


def _inferred_leading_dims(graph: gs.Graph) -> dict[str, object]:
    """Leading dim of every tensor, by ONNX shape inference on the graph as it is now."""
    types = inferred_types(export_light(graph).proto)
    dims: dict[str, object] = {}
    for name, tp in types.items():
        shape = tp.tensor_type.shape if tp.HasField("tensor_type") else None
        if shape is not None and shape.dim:
            first = shape.dim[0]
            dims[name] = dim_of(first)
    return dims


@graph_pass
def make_batch_dynamic(graph: gs.Graph, options: PassOptions) -> PassResult:
    result = PassResult()
    batch = _fixed_batch(graph) if options.dynamic_batch else None
    if batch is None:
        return result
    for tensor in graph.inputs:
        tensor.shape = [BATCH, *tensor.shape[1:]]
    for tensor in graph.tensors().values():
        # Recorded shapes describe the fixed batch; let inference recompute them.
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs:
            tensor.shape = None
    result.changed.extend(t.name for t in graph.inputs)
    reshapes = [n for n in graph.nodes if n.op == "Reshape" and isinstance(n.inputs[1], gs.Constant)
                and not n.attrs.get("allowzero", 0)]
    pending = set(id(n) for n in reshapes)
    while pending:
        leading = _inferred_leading_dims(graph)
        fixed_now = []
        for node in reshapes:
            if id(node) not in pending:
                continue
            target = node.inputs[1].values
            if leading.get(node.inputs[0].name) != BATCH or target.ndim != 1 or target.size == 0 \
                    or int(target[0]) != batch:
                continue
            new_target = np.array(target, dtype=np.int64)
            new_target[0] = 0
            node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_dynamic_batch", new_target)
            fixed_now.append(node)
        if not fixed_now:
            break
        for node in fixed_now:
            pending.discard(id(node))
            result.changed.append(node.name)
    return result
