"""ONNX ops added for breadth that can be nonlinear, explained exactly where their pieces are
(Attention and RMSNormalization expanded into ONNX's own body for them, LRN, LpPool,
LpNormalization, Shrink, GridSample on a fixed grid), and reported approximate where
they are not (Hardmax)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx_graphs import const, model

from rewriter import rewrite
from rewriter.check import self_check

EXACT = 1e-4
F32 = TensorProto.FLOAT
rng = np.random.default_rng(0)


def weights(*shape) -> np.ndarray:
    return (rng.normal(size=shape) * 0.5).astype(np.float32)


def after_projection(op_nodes: list, width: int, out_shape: list, opset: int, inits=(), features: int = 6):
    """x [n, features] -> a projection to ``width`` features -> the op's nodes (reading
    ``h``, writing ``y``)."""
    nodes = [helper.make_node("MatMul", ["x", "proj"], ["h"], name="projection"), *op_nodes]
    return model(nodes, [helper.make_tensor_value_info("x", F32, ["n", features])],
                 [helper.make_tensor_value_info("y", F32, ["n", *out_shape])],
                 [const("proj", weights(features, width)), *inits], opset=opset)


def image_op(op_nodes: list, out_shape: list, opset: int, inits=(), batch: int | str = "n"):
    """x [n, 3, 6, 6] -> a 1x1 convolution to 4 channels -> the op's nodes."""
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["h"], name="conv"), *op_nodes]
    return model(nodes, [helper.make_tensor_value_info("x", F32, [batch, 3, 6, 6])],
                 [helper.make_tensor_value_info("y", F32, [batch, *out_shape])],
                 [const("conv_w", weights(4, 3, 1, 1)), *inits], opset=opset)


def attention() -> onnx.ModelProto:
    """x [n, 5, 8] projected to Q, K, V [n, 5, 8] (2 heads), ONNX Attention (opset 24)."""
    nodes = [helper.make_node("MatMul", ["x", f"w_{p}"], [p], name=f"proj_{p}") for p in "qkv"]
    nodes.append(helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=2, kv_num_heads=2,
                                  name="attention"))
    return model(nodes, [helper.make_tensor_value_info("x", F32, ["n", 5, 8])],
                 [helper.make_tensor_value_info("y", F32, ["n", 5, 8])],
                 [const(f"w_{p}", weights(8, 8)) for p in "qkv"], opset=24)


CASES = {
    "attention": (attention, (5, 8)),
    "rms_normalization": (lambda: after_projection(
        [helper.make_node("RMSNormalization", ["h", "scale"], ["y"], axis=-1, name="rms")], 5, [5], 23,
        [const("scale", weights(5) + 1)]), (6,)),
    "lrn": (lambda: image_op([helper.make_node("LRN", ["h"], ["y"], size=3, alpha=0.5, beta=0.75, bias=1.0,
                                               name="lrn")], [4, 6, 6], 13), (3, 6, 6)),
    "lp_pool": (lambda: image_op([helper.make_node("LpPool", ["h"], ["y"], kernel_shape=[3, 3], strides=[1, 1],
                                                   p=3, name="lp_pool")], [4, 4, 4], 22), (3, 6, 6)),
    "lp_normalization": (lambda: after_projection(
        [helper.make_node("LpNormalization", ["h"], ["y"], axis=-1, p=2, name="lp_norm")], 5, [5], 22), (6,)),
    "shrink": (lambda: after_projection(
        [helper.make_node("Shrink", ["h"], ["y"], bias=0.2, lambd=0.4, name="shrink")], 5, [5], 13), (6,)),
    "grid_sample_fixed_grid": (lambda: image_op(
        [helper.make_node("GridSample", ["h", "grid"], ["y"], align_corners=0, name="sample")], [4, 5, 5], 22,
        [const("grid", (rng.uniform(-1, 1, size=(1, 5, 5, 2))).astype(np.float32))], batch=1), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_nonlinear_onnx_ops_are_exact(name):
    make, shape = CASES[name]
    proto = make()
    rewritten, report = rewrite(proto, dims={"n": 3}, report=True, dynamic_batch=shape is not None)
    assert report.verified and report.approximate == [], report.approximate
    if shape is None:  # the grid fixes the batch at 1: verified, and linear in the data
        return
    torch.manual_seed(2)
    errors = self_check(rewritten, (torch.randn(10, *shape),), (torch.randn(3, *shape),))
    assert errors["shap"] < EXACT and errors["captum"] < EXACT, errors


def test_hardmax_is_reported_approximate():
    proto = after_projection([helper.make_node("Hardmax", ["h"], ["y"], axis=-1, name="hard")], 5, [5], 13)
    _, report = rewrite(proto, dims={"n": 3}, report=True)
    assert report.verified and report.approximate == ["hard"]
