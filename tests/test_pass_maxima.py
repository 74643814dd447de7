"""The maxima pass on its own: overlapping max pools marked exact, Max/Min of varying tensors
written with ReLU, everything else untouched, outputs unchanged."""

from __future__ import annotations

from onnx import helper
from pass_harness import apply, build, const, randn, same_outputs

from rewriter.passes.maxima import exact_maxima

IMAGE = {"x": ["n", 2, 6, 6]}


def test_an_overlapping_max_pool_becomes_exact_max_pool():
    model = build([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2])], IMAGE)
    after, result, ops = apply(exact_maxima, model)
    assert ops == ["ExactMaxPool"] and after.graph.node[0].domain == "shaprewrite" and result.count
    same_outputs(model, after, {"x": randn(2, 2, 6, 6)})


def test_a_max_pool_whose_windows_do_not_overlap_stays():
    model = build([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], IMAGE)
    _, result, ops = apply(exact_maxima, model)
    assert ops == ["MaxPool"] and result.count == 0


def test_max_of_two_inputs_is_written_with_a_relu():
    model = build([helper.make_node("Max", ["a", "b"], ["y"])], {"a": ["n", 5], "b": ["n", 5]})
    after, _, ops = apply(exact_maxima, model)
    assert "Max" not in ops and "Relu" in ops
    same_outputs(model, after, {"a": randn(3, 5), "b": randn(3, 5)})


def test_min_against_a_constant_is_left_alone():
    """A clamp against a constant is elementwise in one tensor: its rescale rule is exact."""
    model = build([helper.make_node("Min", ["a", "c"], ["y"])], {"a": ["n", 5]}, [const("c", randn(5))])
    _, result, ops = apply(exact_maxima, model)
    assert ops == ["Min"] and result.count == 0
