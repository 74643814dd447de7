"""The batch pass on its own: a fixed leading dim made symbolic, Reshapes that copied it as a
literal made to copy it, everything else left; outputs unchanged at the fixed batch and
right at another."""

from __future__ import annotations

import numpy as np
from onnx import helper
from pass_harness import apply, build, const, randn, run, same_outputs

from rewriter.passes import PassOptions
from rewriter.passes.batch import make_batch_dynamic


def _flatten_at_batch_one():
    return build([helper.make_node("Reshape", ["x", "target"], ["y"])], {"x": [1, 2, 3]},
                 [const("target", np.array([1, -1], np.int64))])


def test_a_fixed_batch_becomes_symbolic_and_a_literal_batch_in_a_reshape_becomes_0():
    model = _flatten_at_batch_one()
    after, result, _ = apply(make_batch_dynamic, model)
    dims = after.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and result.count
    target = next(t for t in after.graph.initializer if t.name.startswith("target"))
    assert list(np.frombuffer(target.raw_data, np.int64)) == [0, -1]
    same_outputs(model, after, {"x": randn(1, 2, 3)})
    assert run(after, {"x": randn(4, 2, 3)})[0].shape == (4, 6)


def test_asked_not_to_the_pass_changes_nothing():
    _, result, _ = apply(make_batch_dynamic, _flatten_at_batch_one(), PassOptions(dynamic_batch=False))
    assert result.count == 0


def test_inputs_of_different_leading_dims_have_no_fixed_batch():
    model = build([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": [2, 3], "b": [3, 4]})
    after, result, _ = apply(make_batch_dynamic, model)
    assert result.count == 0 and after.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_a_reshape_whose_leading_dim_is_not_the_batch_keeps_its_literal():
    """[1, 6] -> [2, 3]: the 2 is no batch, so the target stays as written."""
    model = build([helper.make_node("Reshape", ["x", "target"], ["y"])], {"x": [1, 6]},
                  [const("target", np.array([2, 3], np.int64))])
    after, _, _ = apply(make_batch_dynamic, model)
    target = next(t for t in after.graph.initializer if t.name.startswith("target"))
    assert list(np.frombuffer(target.raw_data, np.int64)) == [2, 3]
