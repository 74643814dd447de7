"""The activation passes on their own: split activations fused back into one node, the ones
explainers lack written with ReLU/ELU, near-misses left alone, outputs unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper
from pass_harness import apply, build, const, randn, same_outputs

from rewriter.passes import PassOptions
from rewriter.passes.activations import decompose_activations, fuse_activations

X = {"x": ["n", 6]}


def test_sigmoid_times_x_becomes_one_silu():
    model = build([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])], X)
    after, result, ops = apply(fuse_activations, model)
    assert ops == ["Silu"] and result.count
    same_outputs(model, after, {"x": randn(3, 6)})


def test_gelu_written_with_erf_becomes_one_node():
    nodes = [helper.make_node("Div", ["x", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    model = build(nodes, X, [const("root2", np.float32(math.sqrt(2))), const("one", np.float32(1)),
                             const("half", np.float32(0.5))])
    after, _, ops = apply(fuse_activations, model)
    assert ops == ["GeluErf"]
    same_outputs(model, after, {"x": randn(3, 6)})


def test_a_sigmoid_read_elsewhere_too_stays_for_that_reader():
    """The product still becomes one SiLU (no product of two varying tensors is left); the
    sigmoid's value, an output of its own, is still computed."""
    model = build([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])], X,
                  outputs=("y", "s"))
    after, _, ops = apply(fuse_activations, model)
    assert sorted(ops) == ["Sigmoid", "Silu"]
    same_outputs(model, after, {"x": randn(3, 6)})


def test_sigmoid_times_another_tensor_is_not_silu():
    model = build([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "z"], ["y"])],
                  {"x": ["n", 6], "z": ["n", 6]})
    _, result, ops = apply(fuse_activations, model)
    assert ops == ["Sigmoid", "Mul"] and result.count == 0


def test_selu_celu_and_hard_sigmoid_are_written_with_elu_and_relu():
    nodes = [helper.make_node("Selu", ["x"], ["a"]), helper.make_node("Celu", ["a"], ["b"], alpha=0.7),
             helper.make_node("HardSigmoid", ["b"], ["y"], alpha=0.3, beta=0.4)]
    model = build(nodes, X, opset=17)
    after, result, ops = apply(decompose_activations, model)
    assert not {"Selu", "Celu", "HardSigmoid"} & set(ops) and {"Elu", "Relu"} <= set(ops)
    assert len(result.removed) == 3
    same_outputs(model, after, {"x": randn(4, 6) * 3})


def test_clip_stays_unless_asked_and_becomes_relus_when_asked():
    model = build([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], X,
                  [const("lo", np.float32(0)), const("hi", np.float32(6))])
    assert apply(decompose_activations, model)[2] == ["Clip"]
    after, _, ops = apply(decompose_activations, model, PassOptions(decompose_clips=True))
    assert "Clip" not in ops and "Relu" in ops
    same_outputs(model, after, {"x": randn(4, 6) * 5})


def test_prelu_with_a_constant_slope_becomes_two_relus():
    model = build([helper.make_node("PRelu", ["x", "slope"], ["y"])], X, [const("slope", randn(6))])
    after, _, ops = apply(decompose_activations, model)
    assert "PRelu" not in ops and ops.count("Relu") == 2
    same_outputs(model, after, {"x": randn(4, 6)})


def test_a_hard_sigmoid_with_other_slopes_times_x_is_left_with_its_reason():
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], name="gate", alpha=0.2),
             helper.make_node("Mul", ["h", "x"], ["y"])]
    _, result, ops = apply(fuse_activations, build(nodes, X))
    assert ops == ["HardSigmoid", "Mul"] and result.count == 0
    assert "alpha=0.2" in result.declined["gate"] and "1/6" in result.declined["gate"]


def test_gelu_core_times_another_tensor_is_declined_not_fused():
    """``0.5 * z * (1 + erf(x / sqrt 2))`` gates ``z`` by ``x``: not GELU, and the report says why."""
    nodes = [helper.make_node("Div", ["x", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["z", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    model = build(nodes, {"x": ["n", 6], "z": ["n", 6]}, [const("root2", np.float32(math.sqrt(2))),
                                                          const("one", np.float32(1)), const("half", np.float32(0.5))])
    _, result, ops = apply(fuse_activations, model)
    assert "GeluErf" not in ops and set(result.declined) == {"erf"}
    assert "not GELU" in result.declined["erf"]
    assert result.as_dict()["declined"] == result.declined


def test_a_declined_core_that_another_rule_fuses_is_not_reported():
    """Mish's Tanh is no GELU-tanh core, and a fused Mish leaves nothing declined."""
    nodes = [helper.make_node("Softplus", ["x"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("Mul", ["t", "x"], ["y"])]
    _, result, ops = apply(fuse_activations, build(nodes, X))
    assert ops == ["Mish"] and result.declined == {}


def test_mish_whose_softplus_is_read_elsewhere_is_declined():
    nodes = [helper.make_node("Softplus", ["x"], ["s"]), helper.make_node("Tanh", ["s"], ["t"], name="tanh"),
             helper.make_node("Mul", ["t", "x"], ["y"]), helper.make_node("Neg", ["s"], ["n"])]
    model = build(nodes, X, outputs=("y", "n"))
    after, result, ops = apply(fuse_activations, model)
    assert "Mish" not in ops and "read elsewhere" in result.declined["tanh"]
    same_outputs(model, after, {"x": randn(3, 6)})


@pytest.mark.parametrize("threshold, fused", [(20.0, True), (1.0, False)])
def test_softplus_guarded_by_where_is_fused_only_at_a_threshold_where_they_agree(threshold, fused):
    """``where(x > t, x, softplus(x))`` is torch's softplus with its scalings by 1 folded
    away, for a large ``t``; at ``t = 1`` it is another function and is declined."""
    nodes = [helper.make_node("Softplus", ["x"], ["s"], name="softplus"),
             helper.make_node("Greater", ["x", "t"], ["g"]), helper.make_node("Where", ["g", "x", "s"], ["y"])]
    model = build(nodes, {"x": ["n", 5]}, [const("t", np.float32(threshold))])
    after, result, ops = apply(fuse_activations, model)
    same_outputs(model, after, {"x": 8 * randn(3, 5)})
    assert (ops == ["Softplus"]) is fused
    assert ("softplus" in result.declined) is not fused
