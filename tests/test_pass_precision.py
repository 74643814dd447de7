"""The precision pass on its own: float16 weights, inputs, outputs and casts made float32, the
casts that became no-ops dropped, a float32 graph left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pass_harness import apply, randn, run

from rewriter.passes.precision import upcast_half_precision


def _half_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(randn(4, 3).astype(np.float16), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Cast", ["m"], ["c"], to=TensorProto.FLOAT16),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", 3])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_half_precision_graph_becomes_float32_and_loses_its_no_op_cast():
    model = _half_model()
    after, result, ops = apply(upcast_half_precision, model)
    assert ops == ["MatMul", "Relu"] and "x" in result.changed
    assert after.graph.initializer[0].data_type == TensorProto.FLOAT
    assert after.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = randn(2, 4)
    want = run(model, {"x": x.astype(np.float16)})[0].astype(np.float32)
    np.testing.assert_allclose(run(after, {"x": x})[0], want, rtol=1e-2, atol=1e-2)


def test_a_float32_graph_is_left_alone():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "f",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    _, result, ops = apply(upcast_half_precision, helper.make_model(graph))
    assert ops == ["Relu"] and result.count == 0


def _hidden_half(where: str) -> onnx.ModelProto:
    """A float32 graph but for one place half precision hides: a cast's target, a Constant
    node's value, a bfloat16 input."""
    x_type = TensorProto.BFLOAT16 if where == "input" else TensorProto.FLOAT
    if where == "cast":
        nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                 helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
    elif where == "constant":
        nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float16))),
                 helper.make_node("Cast", ["c"], ["c32"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "c32"], ["y"])]
    else:
        nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "hidden", [helper.make_tensor_value_info("x", x_type, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("where", ["cast", "constant", "input"])
def test_half_precision_is_found_wherever_it_hides(where):
    """The pass reads the graph for half types without exporting it; each place counts."""
    after, result, ops = apply(upcast_half_precision, _hidden_half(where))
    assert result.count > 0
    assert all(node.attribute[0].i == TensorProto.FLOAT for node in after.graph.node if node.op_type == "Cast")
    assert after.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = randn(2, 4)
    want = {"cast": x, "constant": x + 1, "input": np.maximum(x, 0)}[where]
    np.testing.assert_allclose(run(after, {"x": x})[0], want, rtol=1e-3, atol=1e-3)
