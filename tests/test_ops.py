"""Every converter against onnxruntime: one small graph per op and attribute variant.

``rewrite`` verifies its result against onnxruntime on the example batch and on a batch of
another size, so each case passing means the converter computes what the ONNX spec says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain import assert_round_trips
from onnx import TensorProto, helper
from onnx_graphs import const, model

from rewriter import rewrite

F32 = TensorProto.FLOAT
rng = np.random.default_rng(0)


def rand(*shape, positive: bool = False) -> np.ndarray:
    a = rng.normal(size=shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def case(op: str, shapes: list, attrs: dict | None = None, consts: dict | None = None, opset: int = 17,
         out_type: int = F32, extra_outputs: int = 0, inputs: list | None = None, out_shape: list | None = None):
    """A graph with one ``op`` node; ``shapes`` lists the runtime inputs (batch dim first,
    symbolic), ``consts`` maps input position -> constant value (None: optional input left empty)."""
    consts = consts or {}
    total = len(shapes) + len(consts)
    names, graph_inputs, inits = [], [], []
    runtime = iter(enumerate(shapes))
    for pos in range(total):
        if pos in consts:
            if consts[pos] is None:
                names.append("")
                continue
            names.append(f"c{pos}")
            inits.append(const(f"c{pos}", consts[pos]))
        else:
            i, shape = next(runtime)
            elem = F32 if not (inputs and inputs[i] is not None) else inputs[i]
            names.append(f"x{i}")
            graph_inputs.append(helper.make_tensor_value_info(f"x{i}", elem, ["n", *shape]))
    outs = ["y"] + [f"y{k}" for k in range(extra_outputs)]
    node = helper.make_node(op, names, outs, name=f"the_{op.lower()}", **(attrs or {}))
    outputs = [helper.make_tensor_value_info(o, out_type, out_shape) for o in outs]
    return model([node], graph_inputs, outputs, inits, opset=opset)


def positive(op: str):
    """``op`` after Abs + 0.5, for ops defined on positive numbers only."""
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Add", ["a", "half"], ["p"]),
             helper.make_node(op, ["p"], ["y"], name=f"the_{op.lower()}")]
    return model(nodes, [helper.make_tensor_value_info("x", F32, ["n", 5])], [helper.make_tensor_value_info("y", F32, None)],
                 [const("half", np.array(0.5, np.float32))])


def example_inputs(proto, batch: int = 3) -> list[torch.Tensor]:
    """Random inputs for a case's graph inputs (symbolic dims at ``batch``)."""
    inputs = []
    for vi in proto.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == F32:
            inputs.append(torch.randn(shape))
        else:
            inputs.append(torch.randint(0, 2, shape))
    return inputs


def i64(*values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


CASES = {
    # elementwise arithmetic
    "add_broadcast": case("Add", [[3, 4]], consts={1: rand(4)}),
    "sub_scalar": case("Sub", [[3]], consts={1: np.array(1.5, np.float32)}),
    "mul_two_inputs": case("Mul", [[3], [3]]),
    "div_const": case("Div", [[3]], consts={1: rand(3, positive=True)}),
    "div_const_by_input": case("Div", [[3]], consts={0: rand(3)}),
    "pow_square": case("Pow", [[3]], consts={1: np.array(2.0, np.float32)}),
    "neg": case("Neg", [[3]]),
    "sum3": case("Sum", [[3], [3], [3]]),
    "mean2": case("Mean", [[3], [3]]),
    "max_const": case("Max", [[4]], consts={1: np.array([0.1], np.float32)}),
    "min_pair": case("Min", [[4], [4]]),
    "where": case("Where", [[4], [4]], consts={0: np.array([True, False, True, False])}),
    # activations
    **{f"act_{op.lower()}": case(op, [[5]], opset=18) for op in (
        "Relu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Exp", "Erf", "Abs", "Sin", "Cos", "Atan",
        "Floor", "Ceil", "Sign", "HardSwish", "Mish")},
    **{f"positive_{op.lower()}": positive(op) for op in ("Log", "Sqrt", "Reciprocal")},
    "leaky_relu": case("LeakyRelu", [[5]], {"alpha": 0.2}),
    "elu": case("Elu", [[5]], {"alpha": 0.7}),
    "selu_default": case("Selu", [[5]]),
    "selu_custom": case("Selu", [[5]], {"alpha": 1.5, "gamma": 1.1}),
    "celu": case("Celu", [[5]], {"alpha": 2.0}),
    "hard_sigmoid_onnx": case("HardSigmoid", [[5]], {"alpha": 0.2, "beta": 0.5}),
    "hard_sigmoid_torch": case("HardSigmoid", [[5]], {"alpha": 1 / 6, "beta": 0.5}),
    "thresholded_relu": case("ThresholdedRelu", [[5]], {"alpha": 0.3}),
    "gelu_tanh": case("Gelu", [[5]], {"approximate": "tanh"}, opset=20),
    "prelu_channel": case("PRelu", [[3, 4, 4]], consts={1: rand(3, 1, 1)}),
    "prelu_full": case("PRelu", [[3, 4]], consts={1: rand(3, 4)}),
    "clip_relu6": case("Clip", [[5]], consts={1: np.array(0.0, np.float32), 2: np.array(6.0, np.float32)}),
    "clip_low_only": case("Clip", [[5]], consts={1: np.array(-0.5, np.float32)}),
    "softmax_axis1": case("Softmax", [[3, 4]], {"axis": 1}),
    "log_softmax": case("LogSoftmax", [[4]]),
    # layers
    "conv_asym_pads": case("Conv", [[2, 7, 7]], {"pads": [0, 1, 1, 2], "strides": [2, 1]},
                           consts={1: rand(3, 2, 3, 3), 2: rand(3)}),
    "conv_same_upper_stride": case("Conv", [[2, 7, 7]], {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                                   consts={1: rand(4, 2, 3, 3)}),
    "conv1d_grouped_dilated": case("Conv", [[4, 9]], {"group": 2, "dilations": [2]}, consts={1: rand(6, 2, 3)}),
    "conv_transpose": case("ConvTranspose", [[3, 4, 4]], {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                                           "output_padding": [1, 1]}, consts={1: rand(3, 2, 3, 3)}),
    "conv_transpose_asym": case("ConvTranspose", [[3, 4, 4]], {"strides": [2, 2], "pads": [0, 1, 1, 0]},
                                consts={1: rand(3, 2, 3, 3), 2: rand(2)}),
    "gemm_transb": case("Gemm", [[4]], {"transB": 1, "alpha": 0.5, "beta": 2.0}, consts={1: rand(3, 4), 2: rand(3)}),
    "gemm_no_trans": case("Gemm", [[4]], consts={1: rand(4, 3), 2: rand(1, 3)}),
    "matmul_const": case("MatMul", [[2, 4]], consts={1: rand(4, 3)}),
    "matmul_two_inputs": case("MatMul", [[2, 4], [4, 3]]),
    "batchnorm": case("BatchNormalization", [[3, 4, 4]],
                      consts={1: rand(3), 2: rand(3), 3: rand(3), 4: rand(3, positive=True)}),
    "batchnorm_1d": case("BatchNormalization", [[3]],
                         consts={1: rand(3), 2: rand(3), 3: rand(3), 4: rand(3, positive=True)}),
    "layernorm": case("LayerNormalization", [[3, 4]], {"axis": -1}, consts={1: rand(4), 2: rand(4)}),
    "layernorm_two_axes": case("LayerNormalization", [[3, 4]], {"axis": 1}, consts={1: rand(3, 4)}),
    "instancenorm": case("InstanceNormalization", [[3, 5, 5]], consts={1: rand(3), 2: rand(3)}),
    "groupnorm": case("GroupNormalization", [[4, 3, 3]], {"num_groups": 2}, consts={1: rand(4), 2: rand(4)},
                      opset=21, out_shape=["n", 4, 3, 3]),
    # pooling and reductions
    "maxpool_overlap_pad": case("MaxPool", [[2, 7, 7]], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                         "pads": [1, 1, 1, 1]}),
    "maxpool_ceil": case("MaxPool", [[2, 7, 7]], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "maxpool_asym": case("MaxPool", [[2, 6, 6]], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}),
    "avgpool_exclude_pad": case("AveragePool", [[2, 7, 7]], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "avgpool_include_pad": case("AveragePool", [[2, 7, 7]], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                             "count_include_pad": 1, "strides": [2, 2]}),
    "avgpool_asym_same": case("AveragePool", [[2, 6, 6]], {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}),
    "global_avg": case("GlobalAveragePool", [[3, 4, 4]]),
    "global_max": case("GlobalMaxPool", [[3, 4, 4]]),
    "reduce_mean_18": case("ReduceMean", [[3, 4]], {"keepdims": 0}, consts={1: i64(-1)}, opset=18),
    "reduce_mean_13": case("ReduceMean", [[3, 4]], {"axes": [1]}, opset=13),
    "reduce_sum": case("ReduceSum", [[3, 4]], consts={1: i64(1, 2)}),
    "reduce_max": case("ReduceMax", [[3, 4]], {"axes": [2]}, opset=13),
    "reduce_l2": case("ReduceL2", [[3, 4]], {"axes": [2]}, opset=13),
    "reduce_sum_square": case("ReduceSumSquare", [[3, 4]], {"axes": [1]}, opset=13),
    "reduce_prod": case("ReduceProd", [[3, 4]], {"axes": [1, 2]}, opset=13),
    "argmax": case("ArgMax", [[5]], {"axis": 1}, out_type=TensorProto.INT64),
    # shape and layout
    "reshape_zero": case("Reshape", [[3, 4]], consts={1: i64(0, -1)}),
    "flatten_axis2": case("Flatten", [[3, 2, 2]], {"axis": 2}),
    "transpose": case("Transpose", [[3, 4, 5]], {"perm": [0, 2, 3, 1]}),
    "concat": case("Concat", [[3], [2]], {"axis": 1}),
    "split_sizes": case("Split", [[6]], {"axis": 1}, consts={1: i64(2, 4)}, extra_outputs=1),
    "split_even_18": case("Split", [[7]], {"axis": 1, "num_outputs": 3}, opset=18, extra_outputs=2),
    "slice_steps": case("Slice", [[8, 6]], consts={1: i64(1, -1), 2: i64(7, -7), 3: i64(1, 2), 4: i64(2, -2)}),
    "slice_clamped": case("Slice", [[8]], consts={1: i64(-100), 2: i64(2**62), 3: i64(1)}),
    "gather_scalar": case("Gather", [[5, 3]], {"axis": 1}, consts={1: np.array(-1, np.int64)}),
    "gather_matrix": case("Gather", [[5, 3]], {"axis": 1}, consts={1: i64(0, 4, -2, 1).reshape(2, 2)}),
    "gather_elements": case("GatherElements", [[3, 2], [3, 2]], {"axis": 1}, inputs=[None, TensorProto.INT64]),
    "squeeze": case("Squeeze", [[1, 3]], consts={1: i64(1)}),
    "unsqueeze_many": case("Unsqueeze", [[3]], consts={1: i64(1, 3)}),
    "expand": case("Expand", [[1, 3]], consts={1: i64(1, 4, 3)}),
    "tile": case("Tile", [[2]], consts={1: i64(1, 3)}),
    "pad_reflect": case("Pad", [[2, 5, 5]], {"mode": "reflect"}, consts={1: i64(0, 0, 1, 2, 0, 0, 2, 1)}),
    "pad_constant_axes": case("Pad", [[2, 5]], consts={1: i64(1, 2), 2: np.array(0.5, np.float32), 3: i64(-1)},
                              opset=18),
    "resize_nearest_asym": case("Resize", [[2, 3, 3]], {"mode": "nearest", "coordinate_transformation_mode":
                                                        "asymmetric", "nearest_mode": "floor"},
                                consts={1: None, 2: np.array([1, 1, 2, 2], np.float32)}),
    "resize_nearest_half_pixel_down": case("Resize", [[2, 6, 6]], {"mode": "nearest"},
                                           consts={1: None, 2: np.array([1, 1, 0.5, 0.5], np.float32)}),
    "resize_linear_half_pixel": case("Resize", [[2, 3, 4]], {"mode": "linear"},
                                     consts={1: None, 2: np.array([1, 1, 2, 1.5], np.float32)}),
    "resize_linear_align_sizes": case("Resize", [[2, 3, 4]], {"mode": "linear", "coordinate_transformation_mode":
                                                              "align_corners", "axes": [2, 3]},
                                      consts={1: None, 2: None, 3: i64(5, 7)}, opset=18),
    "resize_cubic": case("Resize", [[2, 4, 4]], {"mode": "cubic"},
                         consts={1: None, 2: np.array([1, 1, 2, 2], np.float32)}),
    "depth_to_space": case("DepthToSpace", [[8, 2, 2]], {"blocksize": 2, "mode": "CRD"}),
    "space_to_depth": case("SpaceToDepth", [[2, 4, 4]], {"blocksize": 2}),
    "cumsum_reverse": case("CumSum", [[5]], {"reverse": 1, "exclusive": 1}, consts={1: i64(1)}),
    "trilu": case("Trilu", [[4, 4]], {"upper": 0}),
    # Col2Im (torch's fold, timm's VOLO): 3 channels of 2x2 blocks over a 5x5 image, stride 1.
    "col2im": case("Col2Im", [[12, 16]], consts={1: np.array([5, 5], np.int64), 2: np.array([2, 2], np.int64)},
                   opset=18),
    "col2im_strided_padded": case("Col2Im", [[12, 9]], {"strides": [2, 2], "pads": [1, 0, 0, 1],
                                                        "dilations": [1, 1]},
                                  consts={1: np.array([5, 5], np.int64), 2: np.array([2, 2], np.int64)}, opset=18),
    "einsum": case("Einsum", [[3, 4], [4, 2]], {"equation": "bij,bjk->bik"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_converter_matches_onnxruntime(name):
    rewritten, report = rewrite(CASES[name], dims={"n": 3}, report=True)
    assert all(entry["ok"] for entry in report.verification)
    assert_round_trips(rewritten, *example_inputs(CASES[name]))


def test_shape_arithmetic_becomes_plain_size_calls():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exporters write a flatten with a
    dynamic batch, reads back as one reshape over ``x.size(0)``: no tensor shape ops left."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
        helper.make_node("Div", ["n1", "two"], ["half"]),
        helper.make_node("Concat", ["half", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    proto = model(nodes, [helper.make_tensor_value_info("x", F32, ["n", 3, 4])],
                  [helper.make_tensor_value_info("y", F32, None)],
                  [const("zero", np.array(0, np.int64)), const("axis0", i64(0)), const("two", i64(2)),
                   const("minus_one", i64(-1))])
    rewritten = rewrite(proto, dims={"n": 4})
    code = rewritten.code
    assert "onnx_shape" not in code and "onnx_reshape" not in code and "torch.cat" not in code, code
    assert ".size(0)" in code
    x = torch.randn(6, 3, 4)
    torch.testing.assert_close(rewritten(x), x.reshape(3, -1))


def _scalar_graph(body: list, consts: dict) -> object:
    """``body`` over input ``x`` [n, 3, 4] and 0-d constants: how exporters write
    ``arange(x.size(1))`` and friends, constants next to run-time values."""
    inits = [const(name, value) for name, value in consts.items()]
    return model(body, [helper.make_tensor_value_info("x", F32, ["n", 3, 4])],
                 [helper.make_tensor_value_info("y", F32, None)], inits)


SCALAR_CASES = {
    # start and delta are 0-d constants, the limit a run-time size
    "range_to_a_size": _scalar_graph([
        helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Range", ["start", "n", "step"], ["r"]), helper.make_node("Cast", ["r"], ["f"], to=F32),
        helper.make_node("Reshape", ["f", "column"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
        {"zero": np.array(0, np.int64), "start": np.array(0, np.int64), "step": np.array(1, np.int64),
         "column": i64(-1, 1, 1)}),
    # a 0-d constant expanded to a run-time shape
    "expand_a_scalar": _scalar_graph([
        helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Expand", ["two", "s"], ["e"]),
        helper.make_node("Mul", ["x", "e"], ["y"])], {"two": np.array(2.0, np.float32)}),
    "constant_of_a_shape": _scalar_graph([
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ConstantOfShape", ["s"], ["k"], value=helper.make_tensor("v", F32, [1], [0.5])),
        helper.make_node("Add", ["x", "k"], ["y"])], {}),
    "where_between_scalars": _scalar_graph([
        helper.make_node("Greater", ["x", "zero"], ["g"]), helper.make_node("Where", ["g", "one", "minus"], ["w"]),
        helper.make_node("Mul", ["x", "w"], ["y"])],
        {"zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32), "minus": np.array(-0.5, np.float32)}),
    "scalar_first_comparison": _scalar_graph([
        helper.make_node("Less", ["zero", "x"], ["g"]), helper.make_node("Cast", ["g"], ["f"], to=F32),
        helper.make_node("Add", ["x", "f"], ["y"])], {"zero": np.array(0.0, np.float32)}),
}


@pytest.mark.parametrize("name", sorted(SCALAR_CASES))
def test_zero_dim_constants_beside_runtime_values(name):
    """The importer hands 0-d constants to torch as tensors of their ONNX type, so every
    helper sees what ONNX gives it (a batch-dependent Range once crashed on `.item()`)."""
    rewritten, report = rewrite(SCALAR_CASES[name], dims={"n": 3}, report=True)
    assert all(entry["ok"] for entry in report.verification)
