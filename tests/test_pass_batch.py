"""The batch pass on its own: a fixed leading dim made symbolic, Reshapes that copied it as a
literal made to copy it, everything else left; outputs unchanged at the fixed batch and
right at another."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper
from pass_harness import apply, build, const, randn, run, same_outputs

from rewriter.batching import BatchBaked, any_batch
from rewriter.onnxkit.shapes import refresh_shapes
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


# -- a graph exported at a prime batch, made batch-free ---------------------------------------

ROWS = 97


def _batch_free(model):
    graph = gs.import_onnx(model)
    refresh_shapes(graph)  # an exporter records them
    changed = any_batch(graph, ROWS)
    graph.cleanup().toposort()
    return gs.export_onnx(graph, do_type_check=False), changed


def test_reshape_and_expand_targets_follow_the_batch_after_a_static_export():
    """Heads merged into the batch (``[4*97, 3]``), the batch copied on its axis where -1 is
    taken, and a token expanded to one row per example (a ViT's class token)."""
    nodes = [helper.make_node("Reshape", ["x", "merged"], ["heads"], name="merge"),
             helper.make_node("Reshape", ["x", "flat"], ["flat_x"], name="flatten", allowzero=1),
             helper.make_node("Expand", ["token", "rows"], ["tokens"], name="expand")]
    model = build(nodes, {"x": [ROWS, 4, 3]}, [const("merged", np.array([4 * ROWS, 3], np.int64)),
                                                const("flat", np.array([ROWS, -1], np.int64)),
                                                const("token", randn(1, 1, 3)),
                                                const("rows", np.array([ROWS, 1, 1], np.int64))],
                  outputs=("heads", "flat_x", "tokens"))
    after, changed = _batch_free(model)
    assert sorted(changed) == ["expand", "flatten", "merge"]
    assert after.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    heads_rows = after.graph.output[0].type.tensor_type.shape.dim[0]
    assert heads_rows.dim_param == "4*batch"  # four rows per example, as measuring would write it
    for rows in (2, 5):
        x = randn(rows, 4, 3)
        heads, flat, tokens = run(after, {"x": x})
        np.testing.assert_array_equal(heads, x.reshape(4 * rows, 3))
        np.testing.assert_array_equal(flat, x.reshape(rows, 12))
        assert tokens.shape == (rows, 1, 3)


def test_a_constant_with_a_row_per_example_keeps_the_batch_baked_in():
    nodes = [helper.make_node("Add", ["x", "offsets"], ["y"], name="add")]
    model = build(nodes, {"x": [ROWS, 3]}, [const("offsets", randn(ROWS, 3))])
    with pytest.raises(BatchBaked, match="offsets"):
        _batch_free(model)


def test_the_batch_in_two_entries_of_a_shape_is_refused_by_node():
    nodes = [helper.make_node("Reshape", ["x", "target"], ["y"], name="odd")]
    model = build(nodes, {"x": [ROWS, ROWS]}, [const("target", np.array([ROWS, 1, ROWS], np.int64))])
    with pytest.raises(BatchBaked, match="'odd'"):
        _batch_free(model)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_a_range_over_the_batch_takes_its_limit_from_the_batch_at_run_time(dtype):
    """``x[arange(batch)]`` (GPT-2's last-token pick): the limit, a scalar, follows the batch
    in the constant's own integer type."""
    nodes = [helper.make_node("Range", ["zero", "limit", "one"], ["rows"], name="arange"),
             helper.make_node("Gather", ["x", "rows"], ["y"], name="pick", axis=0)]
    model = build(nodes, {"x": [ROWS, 3]}, [const("zero", np.array(0, dtype)), const("limit", np.array(ROWS, dtype)),
                                            const("one", np.array(1, dtype))])
    after, changed = _batch_free(model)
    assert changed == ["arange"]
    for rows in (2, 5):
        x = randn(rows, 3)
        np.testing.assert_array_equal(run(after, {"x": x})[0], x)


def test_a_float_holding_the_batch_is_not_seen_here():
    """What no rule can see (a float computed from the batch in Python) stays: verification
    at other batches finds it (see test_pipeline)."""
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"], name="scale")]
    model = build(nodes, {"x": [ROWS, 3]}, [const("scale", np.array(float(ROWS), np.float32))])
    after, changed = _batch_free(model)
    assert changed == [] and run(after, {"x": np.ones((2, 3), np.float32)})[0][0, 0] == ROWS
