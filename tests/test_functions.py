"""Model-local functions for shaprewrite's own ops: attached for exactly the ops a graph uses,
once, so onnxruntime runs the graph; and each body computes what its converter does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from rewriter.importer import import_onnx
from rewriter.onnxkit.functions import attach_functions
from rewriter.onnxkit.graph import DOMAIN
from rewriter.ops import load


def _model(op: str) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], domain=DOMAIN)], op,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_only_the_ops_used_get_a_function_and_the_domain_is_imported_once():
    model = _model("Silu")
    attach_functions(model)
    attach_functions(model)  # again: nothing doubled
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, "Silu")]
    assert [o.domain for o in model.opset_import].count(DOMAIN) == 1


def test_a_graph_without_our_ops_is_left_as_it_is():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])])
    model = helper.make_model(graph)
    attach_functions(model)
    assert not model.functions and all(o.domain != DOMAIN for o in model.opset_import)


@pytest.mark.parametrize("op", sorted(name for name, op in load().items() if op.inputs == ("X",) and not op.attributes))
def test_each_body_computes_what_the_converter_does(op):
    model = _model(op)
    attach_functions(model)
    x = (np.random.default_rng(0).standard_normal((3, 5)) * 3).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    got = import_onnx(onnx.shape_inference.infer_shapes(model))(torch.from_numpy(x))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-5)
