"""The shape passes on their own: shapes inferred for what a pass added, shapes measured at
two batch sizes with the batch recognised wherever it goes, and no node changed."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnx import helper
from pass_harness import build, randn

from rewriter.onnxkit.shapes import refresh_shapes
from rewriter.passes import PassOptions
from rewriter.passes.shapes import measure_shapes


def _transposed():
    """x [n, 3] -> Transpose: the batch moves to the last axis."""
    return build([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), helper.make_node("Relu", ["t"], ["y"])],
                 {"x": ["n", 3]})


def test_refresh_infers_the_shapes_of_values_without_one():
    graph = gs.import_onnx(_transposed())
    refresh_shapes(graph)
    assert graph.tensors()["t"].shape == [3, "n"]


def test_measured_shapes_find_the_batch_on_the_axis_it_moved_to():
    graph = gs.import_onnx(_transposed())
    nodes = list(graph.nodes)
    feeds = [{"x": randn(2, 3)}, {"x": randn(3, 3)}]
    result = measure_shapes(graph, PassOptions(feeds=feeds))
    assert graph.tensors()["t"].shape == [3, "n"] and "measured at batch 2 and 3" in result.note
    assert list(graph.nodes) == nodes and result.count == 0


def test_without_inputs_the_note_says_shapes_come_from_inference():
    result = measure_shapes(gs.import_onnx(_transposed()), PassOptions())
    assert "inferred by ONNX" in result.note


def test_a_graph_onnxruntime_cannot_run_keeps_inferred_shapes_and_says_why():
    model = build([helper.make_node("Relu", ["x"], ["y"])], {"x": ["n", 3]})
    graph = gs.import_onnx(model)
    result = measure_shapes(graph, PassOptions(feeds=[{"x": randn(2, 4)}, {"x": randn(3, 4)}]))  # wrong width
    assert "inferred by ONNX" in result.note and "onnxruntime could not run" in result.note


def test_values_inference_knows_in_numbers_and_the_batch_are_not_measured():
    graph = gs.import_onnx(_transposed())
    refresh_shapes(graph)
    result = measure_shapes(graph, PassOptions(feeds=[{"x": randn(2, 3)}, {"x": randn(3, 3)}]))
    assert "inferred by ONNX" in result.note and graph.tensors()["t"].shape == [3, "n"]


def test_only_what_inference_left_unknown_is_measured():
    """Flatten at axis 0 makes ``3*n`` elements, a product inference cannot write."""
    graph = gs.import_onnx(build([helper.make_node("Relu", ["x"], ["r"]),
                                  helper.make_node("Flatten", ["r"], ["f"], axis=0),
                                  helper.make_node("Neg", ["f"], ["y"])], {"x": ["n", 3]}))
    refresh_shapes(graph)
    assert graph.tensors()["f"].shape[1] not in (3, "n")  # a symbol of its own
    result = measure_shapes(graph, PassOptions(feeds=[{"x": randn(2, 3)}, {"x": randn(3, 3)}]))
    assert graph.tensors()["f"].shape == [1, "3*n"] and graph.tensors()["r"].shape == ["n", 3]
    assert "(2 values)" in result.note  # f, and y: a graph output is always measured
