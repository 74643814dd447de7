"""Recurrent layers whose ``sequence_lens`` give every row the full length drop them.

Packing code computes the lengths at run time even when they are one number for every row:
pytorch-forecasting's LSTM, given lengths that are all the window's length, writes
``ones``/``full`` shaped like the batch, a ``where`` between them, a sort (``TopK``) and a
cast. Nothing there depends on the input's values, but the values are sized by the batch, so
constant folding cannot take them, and the recurrent converter refuses lengths it cannot
read. This pass evaluates such a chain to its one value: where it is the sequence's full
length the lengths change nothing, and the layer loses them.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from ..onnxkit.graph import const_value
from .base import PassOptions, PassResult, graph_pass

_RECURRENT = {"LSTM", "GRU", "RNN"}
# Ops whose output holds only values of their first input, however it is shaped or picked.
_SAME_VALUES = {"Identity", "Expand", "Tile", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Slice",
                "Gather", "GatherElements", "TopK", "Cast"}
_COMPARE = {"Greater": np.greater, "Less": np.less, "Equal": np.equal, "GreaterOrEqual": np.greater_equal,
            "LessOrEqual": np.less_equal, "Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
            "Max": np.maximum, "Min": np.minimum}


def uniform_value(tensor: gs.Tensor, depth: int = 32) -> np.generic | None:
    """The one value every element of ``tensor`` holds, computed through ops that keep a
    tensor uniform (whatever its shape); None where that cannot be told."""
    found = const_value(tensor)
    if found is not None:
        flat = np.asarray(found).reshape(-1)
        return flat[0] if flat.size and np.all(flat == flat[0]) else None
    if depth == 0 or len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    if node.op == "ConstantOfShape":
        value = node.attrs.get("value")
        return np.float32(0) if value is None else np.asarray(value.values).reshape(-1)[0]
    if node.op == "Gather" and node.inputs[0].inputs and node.inputs[0].inputs[0].op == "Shape":
        return _static_dim(node.inputs[0].inputs[0], const_value(node.inputs[1]))
    if node.op in _SAME_VALUES and tensor is node.outputs[0]:
        value = uniform_value(node.inputs[0], depth - 1)
        if value is not None and node.op == "Cast":
            return np.asarray(value).astype(helper.tensor_dtype_to_np_dtype(node.attrs["to"]))[()]
        return value
    if node.op == "Where":
        condition, *choices = (uniform_value(t, depth - 1) for t in node.inputs)
        if condition is not None:
            return choices[0] if condition else choices[1]
        return choices[0] if choices[0] is not None and choices[0] == choices[1] else None
    if node.op in _COMPARE:
        values = [uniform_value(t, depth - 1) for t in node.inputs]
        return None if None in values else _COMPARE[node.op](*values)[()]
    return None


def _static_dim(shape: gs.Node, index) -> np.int64 | None:
    """``Shape(t)[index]`` where that dim of ``t`` is a number (a sequence length beside a
    symbolic batch)."""
    dims, start = shape.inputs[0].shape, shape.attrs.get("start", 0)
    if index is None or np.asarray(index).size != 1 or not dims:
        return None
    dim = dims[start + int(np.asarray(index).reshape(()))]
    return np.int64(dim) if isinstance(dim, int) else None


def _full_length(node: gs.Node) -> int | None:
    """The sequence length of the layer's input (dim 0, or 1 with ``layout=1``), if static."""
    shape = node.inputs[0].shape
    axis = 1 if node.attrs.get("layout", 0) else 0
    return shape[axis] if shape and isinstance(shape[axis], int) else None


@graph_pass
def drop_full_sequence_lengths(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Recurrent layers whose sequence_lens are their full length in every row: the
    lengths removed (see the module notes)."""
    result = PassResult()
    for node in graph.nodes:
        if node.op not in _RECURRENT or len(node.inputs) < 5 or not node.inputs[4].name:
            continue
        if const_value(node.inputs[4]) is not None:
            continue  # constant lengths: the converter reads them
        length, value = _full_length(node), uniform_value(node.inputs[4])
        if length is not None and value is not None and int(value) == length:
            node.inputs[4] = gs.Variable.empty()
            result.changed.append(node.name)
    if result.changed:
        graph.cleanup()
    return result
