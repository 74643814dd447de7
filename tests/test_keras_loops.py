"""Keras recurrent layers converted by tf2onnx (files made by ``tests/data/tf2onnx/generate.py``).

tf2onnx writes Keras's GRU and SimpleRNN as a ``Loop`` whose maximum trip count is the
sequence length and whose condition is computed in the body from the iteration counters and
constants: nothing depends on the input, so the condition is evaluated step by step and the
loop unrolled. Keras's LSTM becomes ONNX's LSTM op, unrolled by its converter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rewriter import rewrite

FILES = Path(__file__).resolve().parent / "data" / "tf2onnx"


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn", "lstm_gru_dense"])
def test_a_keras_recurrent_model_is_unrolled_verified_and_exact(name):
    rows = torch.randn(4, 7, 3, generator=torch.Generator().manual_seed(0))
    background = torch.randn(8, 7, 3, generator=torch.Generator().manual_seed(1))
    module, report = rewrite(FILES / f"keras_{name}.onnx", rows, report=True, check=True, check_background=background)
    document = report.as_dict()
    assert document["verification"]["verified"] and document["exact"], document["not_exact_because"]
    assert document["shap_additivity_error"] < 1e-4 and document["captum_additivity_error"] < 1e-4
    assert not any(entry.get("module") == "Loop" for entry in document["nodes"])
    assert module(torch.randn(9, 7, 3)).shape == (9, 2)  # any batch


def test_a_loop_whose_condition_reads_the_input_is_still_refused():
    """The counters' path may not read a value computed from the input."""
    import onnx
    from onnx import TensorProto, helper

    from rewriter import ConversionError

    body = helper.make_graph(
        [helper.make_node("ReduceSum", ["state"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "limit"], ["keep"]),
         helper.make_node("Add", ["state", "one"], ["next"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("state", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("keep", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor("limit", TensorProto.FLOAT, [], [10.0]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body, name="the_loop")], "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor("trips", TensorProto.INT64, [], [5]), helper.make_tensor("go", TensorProto.BOOL, [], [True])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    with pytest.raises(ConversionError, match="depends on the input") as caught:
        rewrite(model, dims={"n": 3})
    assert caught.value.node == "the_loop"
