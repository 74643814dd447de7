"""ONNX files from other producers: import, any batch size, exact explanations, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from explain import captum_relative_delta, shap_relative_error
from onnx import TensorProto, helper
from onnx_graphs import const, fixed_batch_mlp, keras_like_cnn, model

from rewriter import InputError, UnsupportedOpError, rewrite

EXACT = 1e-4


def run_ort(proto: onnx.ModelProto, *inputs: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feed)[0]


def test_keras_style_graph_imports_and_explains_exactly():
    proto = keras_like_cnn()
    rewritten, report = rewrite(proto, report=True)
    x = torch.randn(5, 6, 6, 3)
    np.testing.assert_allclose(rewritten(x).detach().numpy(), run_ort(proto, x), atol=1e-5, rtol=1e-4)
    assert report.source == "onnx"
    assert shap_relative_error(rewritten, torch.randn(8, 6, 6, 3), torch.randn(3, 6, 6, 3)) < EXACT
    # The output softmax: Captum's own softmax rule is not additive, ExactSoftmax's is.
    assert captum_relative_delta(rewritten, torch.randn(3, 6, 6, 3), torch.randn(3, 6, 6, 3)) < EXACT


@pytest.mark.parametrize("make", [fixed_batch_mlp, lambda: keras_like_cnn(batch=1)], ids=["mlp", "keras_cnn"])
def test_fixed_batch_one_runs_at_any_batch(make):
    proto = make()
    rewritten, report = rewrite(proto, report=True)
    batch_pass = next(p for p in report.passes if p.name == "make_batch_dynamic")
    assert batch_pass.changed, "the batch pass should have made the input dynamic"
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    for n in (1, 2, 17):
        x = torch.randn(n, *shape)
        expected = np.concatenate([run_ort(proto, x[i:i + 1]) for i in range(n)])
        np.testing.assert_allclose(rewritten(x).detach().numpy(), expected, atol=1e-5, rtol=1e-4)
    background, inputs = torch.randn(6, *shape), torch.randn(2, *shape)
    assert shap_relative_error(rewritten, background, inputs) < EXACT


def test_fixed_batch_model_is_exact_under_captum():
    rewritten = rewrite(fixed_batch_mlp(batch=1))
    assert captum_relative_delta(rewritten, torch.randn(2, 3, 4), torch.randn(2, 3, 4)) < EXACT


def test_static_batch_option_keeps_the_fixed_batch():
    proto = fixed_batch_mlp(batch=1)
    rewritten, report = rewrite(proto, dynamic_batch=False, report=True)
    assert not next(p for p in report.passes if p.name == "make_batch_dynamic").changed
    with pytest.raises(InputError, match=r"rewritten for \[1, 3, 4\]"):
        rewritten(torch.randn(3, 3, 4))


def test_unsupported_ops_are_all_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("EyeLike", ["a"], ["b"], name="first_eye"),
        helper.make_node("EyeLike", ["b"], ["c"], name="second_eye"),
        helper.make_node("RandomNormalLike", ["c"], ["y"], name="the_random"),
    ]
    with pytest.raises(UnsupportedOpError) as info:
        rewrite(model(nodes, [x], [y]))
    assert info.value.ops == {"EyeLike": "first_eye", "RandomNormalLike": "the_random"}
    assert "EyeLike" in str(info.value) and "the_random" in str(info.value)
    assert "no converter for these standard ops" in info.value.fix


def test_local_functions_are_inlined():
    f32 = np.float32
    body = [helper.make_node("Mul", ["a", "s"], ["m"]), helper.make_node("Relu", ["m"], ["r"])]
    scale = helper.make_function("custom", "ScaledRelu", ["a", "s"], ["r"], body,
                                 opset_imports=[helper.make_opsetid("", 17)])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("ScaledRelu", ["x", "s"], ["y"], domain="custom", name="f")],
                              "g", [x], [y], [const("s", np.array([2.0, -1.0, 0.5], dtype=f32))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
                              functions=[scale])
    proto.ir_version = 8
    rewritten = rewrite(proto)
    inp = torch.randn(4, 3)
    torch.testing.assert_close(rewritten(inp), torch.relu(inp * torch.tensor([2.0, -1.0, 0.5])))
