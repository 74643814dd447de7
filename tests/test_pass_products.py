"""The products pass on its own: a product of two input-dependent tensors marked for the
Shapley rule, a product with a constant left linear, outputs unchanged."""

from __future__ import annotations

from onnx import helper
from pass_harness import apply, build, const, randn, same_outputs

from rewriter.passes.products import shapley_products


def test_a_product_of_two_varying_tensors_becomes_shapley_mul():
    model = build([helper.make_node("Mul", ["a", "b"], ["y"])], {"a": ["n", 4], "b": ["n", 4]})
    after, result, ops = apply(shapley_products, model)
    assert ops == ["ShapleyMul"] and result.count
    same_outputs(model, after, {"a": randn(3, 4), "b": randn(3, 4)})


def test_a_matmul_of_two_varying_tensors_becomes_shapley_matmul():
    model = build([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": ["n", 2, 3], "b": ["n", 3, 4]})
    after, _, ops = apply(shapley_products, model)
    assert ops == ["ShapleyMatMul"]
    same_outputs(model, after, {"a": randn(2, 2, 3), "b": randn(2, 3, 4)})


def test_a_product_with_a_constant_stays_linear():
    model = build([helper.make_node("Mul", ["a", "w"], ["y"])], {"a": ["n", 4]}, [const("w", randn(4))])
    _, result, ops = apply(shapley_products, model)
    assert ops == ["Mul"] and result.count == 0


def test_a_product_of_a_tensor_with_its_shape_stays():
    """Shape arithmetic carries no input values: multiplying by a size is linear."""
    nodes = [helper.make_node("Shape", ["a"], ["s"], start=1), helper.make_node("Cast", ["s"], ["f"], to=1),
             helper.make_node("Mul", ["a", "f"], ["y"])]
    model = build(nodes, {"a": ["n", 1]})
    _, result, ops = apply(shapley_products, model)
    assert "ShapleyMul" not in ops and result.count == 0
