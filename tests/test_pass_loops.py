"""The loop pass on its own: a Loop with a constant trip count becomes its body repeated, the
carried value threaded through; a loop whose trip count is computed is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from pass_harness import apply, build, const, randn, same_outputs

from rewriter.errors import ConversionError
from rewriter.passes.loops import unroll_loops


def _body():
    """v -> tanh(v * w + x): x read from the outer graph, w a constant of the body."""
    nodes = [helper.make_node("Identity", ["cond"], ["cond_out"]),
             helper.make_node("Mul", ["v", "w"], ["scaled"]), helper.make_node("Add", ["scaled", "x"], ["summed"]),
             helper.make_node("Tanh", ["summed"], ["v_out"])]
    return helper.make_graph(
        nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["n", 4])],
        [const("w", np.full(4, 0.5, np.float32))])


def _loop(trips_from_input: bool = False):
    trips = "t" if trips_from_input else "trips"
    nodes = [helper.make_node("Loop", [trips, "keep", "x"], ["y"], name="the_loop", body=_body())]
    inits = [const("keep", np.array(True))] + ([] if trips_from_input else [const("trips", np.array(3, np.int64))])
    model = build(nodes, {"x": ["n", 4]}, inits)
    if trips_from_input:
        model.graph.input.append(helper.make_tensor_value_info("t", TensorProto.INT64, []))
    return model


def test_a_loop_of_three_trips_becomes_its_body_three_times():
    model = _loop()
    after, result, ops = apply(unroll_loops, model)
    assert "Loop" not in ops and ops.count("Tanh") == 3 and result.removed == ["the_loop"]
    same_outputs(model, after, {"x": randn(2, 4)})


def test_a_loop_whose_trip_count_is_an_input_is_refused_by_name():
    with pytest.raises(ConversionError, match="the_loop"):
        apply(unroll_loops, _loop(trips_from_input=True))
