"""The cleanup passes on their own: identities and dead nodes go, outputs and names stay."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from rewriter.onnxkit.graph import toposorted
from rewriter.passes.base import PassOptions
from rewriter.passes.cleanup import drop_identities, remove_dead_nodes

X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def _model(nodes, initializers=(), outputs=("y",)):
    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs], list(initializers)),
        opset_imports=[helper.make_opsetid("", 17)])


def _run(model) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})


def _scalar(name: str, value: float):
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def test_identities_and_neutral_scalings_go_and_outputs_stay():
    model = _model([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                    helper.make_node("Identity", ["a"], ["b"], name="identity"),
                    helper.make_node("Mul", ["b", "one"], ["c"], name="times_one"),
                    helper.make_node("Add", ["c", "zero"], ["d"], name="plus_zero"),
                    helper.make_node("Dropout", ["d"], ["e"], name="dropout"),
                    helper.make_node("Tanh", ["e"], ["y"], name="tanh")],
                   [_scalar("one", 1.0), _scalar("zero", 0.0)])
    graph = gs.import_onnx(model)
    result = drop_identities(graph, PassOptions())
    assert [n.op for n in graph.nodes] == ["Relu", "Tanh"]
    assert sorted(result.removed) == ["dropout", "identity", "plus_zero", "times_one"]
    np.testing.assert_array_equal(_run(gs.export_onnx(graph))[0], _run(model)[0])


def test_what_is_not_neutral_or_writes_an_output_is_kept():
    model = _model([helper.make_node("Mul", ["x", "two"], ["a"], name="times_two"),
                    helper.make_node("Add", ["a", "zeros"], ["b"], name="plus_zero_vector"),  # broadcasts
                    helper.make_node("Identity", ["b"], ["y"], name="named_output"),
                    helper.make_node("Dropout", ["x"], ["z", "mask"], name="dropout_with_mask"),
                    helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT)],
                   [_scalar("two", 2.0), numpy_helper.from_array(np.zeros((2, 1, 4), np.float32), "zeros")],
                   outputs=("y", "m"))
    graph = gs.import_onnx(model)
    assert drop_identities(graph, PassOptions()).count == 0
    assert graph.outputs[0].name == "y"


def test_dead_nodes_go_and_live_ones_stay():
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="live"),
                    helper.make_node("Sigmoid", ["x"], ["unused"], name="dead"),
                    helper.make_node("Tanh", ["unused"], ["also_unused"], name="dead_too")])
    graph = gs.import_onnx(model)
    result = remove_dead_nodes(graph, PassOptions())
    assert sorted(result.removed) == ["dead", "dead_too"] and [n.name for n in graph.nodes] == ["live"]
    np.testing.assert_array_equal(_run(gs.export_onnx(graph))[0], _run(model)[0])


def test_nodes_are_sorted_only_when_out_of_order():
    """``toposorted`` leaves a sorted graph's node list as it is and sorts one where a node
    reads what a later node writes (a pass appends the nodes it adds)."""
    x = gs.Variable("x", np.float32, (2,))
    a, b, y = gs.Variable("a"), gs.Variable("b"), gs.Variable("y", np.float32, (2,))
    relu, neg, add = gs.Node("Relu", "relu", inputs=[x], outputs=[a]), gs.Node("Neg", "neg", inputs=[a], outputs=[b]), \
        gs.Node("Add", "add", inputs=[a, b], outputs=[y])
    ordered = gs.Graph(nodes=[relu, neg, add], inputs=[x], outputs=[y])
    before = ordered.nodes
    assert toposorted(ordered).nodes is before and [n.name for n in before] == ["relu", "neg", "add"]
    shuffled = gs.Graph(nodes=[add, relu, neg], inputs=[x], outputs=[y])
    assert [n.name for n in toposorted(shuffled).nodes] == ["relu", "neg", "add"]
