"""The constant-folding passes on their own: what they fold, what they leave, outputs unchanged."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from rewriter.passes.base import PassOptions
from rewriter.passes.constants import fold_constants, fold_large_constants


def _graph(nodes, initializers, width: int = 4):
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])], initializers),
        opset_imports=[helper.make_opsetid("", 17)])
    return model


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _ops(graph: gs.Graph) -> list[str]:
    return [node.op for node in graph.nodes]


def test_a_parameter_written_through_a_chain_is_folded_and_outputs_stay():
    scale = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "scale")
    shape = numpy_helper.from_array(np.array([4], dtype=np.int64), "shape")
    model = _graph([helper.make_node("Reshape", ["scale", "shape"], ["flat"]),
                    helper.make_node("Mul", ["x", "flat"], ["y"])], [scale, shape])
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    graph = gs.import_onnx(model)
    result = fold_constants(graph, PassOptions())
    assert _ops(graph) == ["Mul"] and result.removed
    np.testing.assert_array_equal(_run(gs.export_onnx(graph), x), _run(model, x))


def test_nothing_to_fold_leaves_the_graph_as_it_was():
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    model = _graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])], [w])
    graph = gs.import_onnx(model)
    nodes = list(graph.nodes)
    for fold in (fold_constants, fold_large_constants):
        result = fold(graph, PassOptions())
        assert result.count == 0 and list(graph.nodes) == nodes  # the same node objects: not re-imported


def test_a_value_too_large_for_the_first_fold_is_folded_by_the_second_within_the_limit():
    big = numpy_helper.from_array(np.full((4096, 4), 0.5, dtype=np.float32), "big")  # 16,384 elements
    model = _graph([helper.make_node("Tile", ["big", "reps"], ["tiled"]),
                    helper.make_node("ReduceSum", ["tiled", "axes"], ["row"], keepdims=1),
                    helper.make_node("Mul", ["x", "row"], ["y"])],
                   [big, numpy_helper.from_array(np.array([4, 1], dtype=np.int64), "reps"),
                    numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")])
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    graph = gs.import_onnx(model)
    fold_constants(graph, PassOptions())
    assert "Tile" in _ops(graph)  # onnxscript's default input limit is 8,192 elements
    assert fold_large_constants(graph, PassOptions(max_tensor_bytes=1 << 20)).removed
    assert _ops(graph) == ["Mul"]
    np.testing.assert_allclose(_run(gs.export_onnx(graph), x), _run(model, x), rtol=1e-6)
