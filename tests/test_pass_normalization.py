"""The normalization passes on their own: LayerNorm, GroupNorm and LogSoftmax written as the
exact pieces, a norm with run-time scale left alone, outputs unchanged."""

from __future__ import annotations

import numpy as np
from onnx import helper
from pass_harness import apply, build, const, randn, same_outputs

from rewriter.passes.normalization import decompose_log_softmax, decompose_normalization


def test_layer_norm_becomes_standardize_and_an_affine_map():
    model = build([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)], {"x": ["n", 3, 8]},
                  [const("g", randn(8)), const("b", randn(8))])
    after, result, ops = apply(decompose_normalization, model)
    assert "LayerNormalization" not in ops and "Standardize" in ops and result.count
    same_outputs(model, after, {"x": randn(2, 3, 8)}, atol=1e-5)


def test_group_norm_of_opset_18_spreads_its_per_group_scale():
    model = build([helper.make_node("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=2)],
                  {"x": ["n", 4, 3, 3]}, [const("g", randn(2)), const("b", randn(2))], opset=18)
    after, _, ops = apply(decompose_normalization, model)
    assert "GroupNormalization" not in ops
    same_outputs(model, after, {"x": randn(2, 4, 3, 3)}, atol=1e-5)


def test_log_softmax_becomes_a_shift_and_a_log_of_sums():
    model = build([helper.make_node("LogSoftmax", ["x"], ["y"], axis=-1)], {"x": ["n", 5]}, opset=13)
    after, result, ops = apply(decompose_log_softmax, model)
    assert "LogSoftmax" not in ops and result.count
    same_outputs(model, after, {"x": randn(3, 5) * 4}, atol=1e-5)


def test_log_softmax_over_the_batch_axis_is_left_alone():
    model = build([helper.make_node("LogSoftmax", ["x"], ["y"], axis=0)], {"x": ["n", 5]}, opset=13)
    _, result, ops = apply(decompose_log_softmax, model)
    assert ops == ["LogSoftmax"] and result.count == 0


def test_layer_norm_whose_scale_is_computed_at_run_time_is_standardized_too():
    """The scale is then a run-time factor of the standardized value (a product the
    products pass marks), not folded into constants."""
    model = build([helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=-1)],
                  {"x": ["n", 8], "g": [8]})
    after, result, ops = apply(decompose_normalization, model)
    assert "LayerNormalization" not in ops and "Standardize" in ops and result.count
    same_outputs(model, after, {"x": randn(2, 8), "g": np.abs(randn(8))}, atol=1e-5)
