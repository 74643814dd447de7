"""The size guard on its own: it names the node that would compute too large a tensor, at the
check inputs' sizes, and changes nothing otherwise."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewriter import InputError
from rewriter.passes.base import PassOptions
from rewriter.passes.guard import refuse_oversized_values


def _graph(nodes, initializers=()):
    return gs.import_onnx(helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(initializers)),
        opset_imports=[helper.make_opsetid("", 17)]))


def _shape(name: str, dims: list[int]):
    return numpy_helper.from_array(np.array(dims, dtype=np.int64), name)


def test_a_constant_of_huge_shape_is_refused_naming_the_node():
    graph = _graph([helper.make_node("ConstantOfShape", ["shape"], ["big"], name="bomb"),
                    helper.make_node("Add", ["x", "big"], ["y"])], [_shape("shape", [750, 1000, 1000])])
    with pytest.raises(InputError, match="bomb") as caught:
        refuse_oversized_values(graph, PassOptions(max_tensor_bytes=1 << 30))
    assert caught.value.op_type == "ConstantOfShape" and "2.8 GiB" in str(caught.value)


def test_sizes_follow_the_check_inputs():
    """``Expand`` to ``[n, 4096, 4]``: 64 KiB at batch 1, 4 MiB at the check batch of 64."""
    graph = _graph([helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
                    helper.make_node("Shape", ["x"], ["n"], end=1),
                    helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
                    helper.make_node("Expand", ["u", "target"], ["y"], name="wide")],
                   [_shape("axes", [1]), _shape("rest", [4096, 4])])
    assert refuse_oversized_values(graph, PassOptions(max_tensor_bytes=1 << 20)).count == 0  # batch 1: 64 KiB
    with pytest.raises(InputError, match="wide"):
        refuse_oversized_values(graph, PassOptions(max_tensor_bytes=1 << 20,
                                                   feeds=[{"x": np.zeros((64, 4), np.float32)}]))


def test_an_ordinary_graph_passes_unchanged():
    graph = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")])
    nodes = list(graph.nodes)
    result = refuse_oversized_values(graph, PassOptions(feeds=[{"x": np.zeros((2, 4), np.float32)}]))
    assert result.count == 0 and list(graph.nodes) == nodes
