"""The expanding pass on its own: a standard op with no converter replaced by the body ONNX
defines for it, its nodes named after it; ops with a converter left alone."""

from __future__ import annotations

from onnx import helper
from pass_harness import apply, build, randn, same_outputs

from rewriter.passes.expand import expand_function_ops


def test_mean_variance_normalization_is_replaced_by_its_body():
    model = build([helper.make_node("MeanVarianceNormalization", ["x"], ["y"], name="mvn", axes=[0, 2, 3])],
                  {"x": ["n", 3, 4, 4]}, opset=13)
    after, result, ops = apply(expand_function_ops, model)
    assert "MeanVarianceNormalization" not in ops and result.removed == ["mvn"]
    assert result.added and all(name.startswith("mvn") for name in result.added)
    same_outputs(model, after, {"x": randn(2, 3, 4, 4)}, atol=1e-5)


def test_an_op_with_a_converter_is_not_expanded():
    model = build([helper.make_node("Softplus", ["x"], ["y"])], {"x": ["n", 4]})
    _, result, ops = apply(expand_function_ops, model)
    assert ops == ["Softplus"] and result.count == 0


def test_an_op_a_later_pass_rewrites_is_not_expanded():
    """Selu has no converter, but decompose_activations writes it exactly with an ELU; its
    ONNX body (Exp, Where) would leave products no explainer rule covers."""
    model = build([helper.make_node("Selu", ["x"], ["y"])], {"x": ["n", 4]})
    _, result, ops = apply(expand_function_ops, model)
    assert ops == ["Selu"] and result.count == 0
