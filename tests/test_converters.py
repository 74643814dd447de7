"""The importer alone, one converter at a time: each one-node graph of ``test_ops`` imported
with no pass before it, run against onnxruntime; and every registered converter reached so.

``test_ops`` runs the same graphs through the whole ``rewrite()``, where passes rewrite many
ops before the importer sees them; here nothing stands between the graph and the converter.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx_graphs import const, model
from test_ops import CASES, case, example_inputs, i64, rand

from rewriter.converters import CONVERTERS, op_key
from rewriter.importer import import_onnx
from rewriter.onnxkit.functions import attach_functions
from rewriter.onnxkit.graph import DOMAIN

BOOL, I64, F32 = TensorProto.BOOL, TensorProto.INT64, TensorProto.FLOAT


def _ops(proto: onnx.ModelProto) -> set[str]:
    return {op_key(node.domain, node.op_type) for node in proto.graph.node}


def _two_nodes(first: onnx.NodeProto, second: onnx.NodeProto, width: int = 4, out_type: int = F32,
               inits=(), opset: int = 17) -> onnx.ModelProto:
    """x [n, width] -> ``first`` -> ``second`` -> y: ops whose input or output is no float tensor."""
    return model([first, second], [helper.make_tensor_value_info("x", F32, ["n", width])],
                 [helper.make_tensor_value_info("y", out_type, None)], list(inits), opset=opset)


def _ours(op: str, shapes=((4,),), **attrs) -> onnx.ModelProto:
    """One node of shaprewrite's own domain on inputs [n, *shape], its body attached as a
    model-local function."""
    node = helper.make_node(op, [f"x{i}" for i in range(len(shapes))], ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(f"x{i}", F32, ["n", *shape])
                                           for i, shape in enumerate(shapes)],
                              [helper.make_tensor_value_info("y", F32, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    attach_functions(proto)
    return onnx.shape_inference.infer_shapes(proto)


def _sequence(*nodes) -> onnx.ModelProto:
    """Split x [n, 4] into a sequence, read an item back, concatenate, count: y and count."""
    return model(list(nodes), [helper.make_tensor_value_info("x", F32, ["n", 4])],
                 [helper.make_tensor_value_info("y", F32, None), helper.make_tensor_value_info("count", I64, None)],
                 [const("one", np.array(1, np.int64))], opset=17)


def _recurrent(op: str, gates: int) -> onnx.ModelProto:
    """x [3 steps, n, 4 features] -> ``op`` with 3 hidden units -> its last hidden state."""
    hidden, features = 3, 4
    node = helper.make_node(op, ["x", "w", "r", "b"], ["", "y"], hidden_size=hidden)
    return model([node], [helper.make_tensor_value_info("x", F32, [3, "n", features])],
                 [helper.make_tensor_value_info("y", F32, None)],
                 [const("w", rand(1, gates * hidden, features)), const("r", rand(1, gates * hidden, hidden)),
                  const("b", rand(1, 2 * gates * hidden))])


def _compare(op: str, out_type: int = BOOL) -> onnx.ModelProto:
    return case(op, [[4], [4]], out_type=out_type)


_BINARY_BOOL = [helper.make_node("Greater", ["x", "zero"], ["a"]), helper.make_node("Less", ["x", "half"], ["b"])]

EXTRA = {
    **{f"{op.lower()}": case(op, [[4]]) for op in ("Acos", "Acosh", "Asin", "Asinh", "Atanh", "Cosh", "Sinh", "Tan",
                                                  "Round", "Identity")},
    **{f"{op.lower()}": _compare(op) for op in ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual")},
    **{f"{op.lower()}": model([*_BINARY_BOOL, helper.make_node(op, ["a", "b"], ["y"])],
                              [helper.make_tensor_value_info("x", F32, ["n", 4])],
                              [helper.make_tensor_value_info("y", BOOL, None)],
                              [const("zero", np.array(0, np.float32)), const("half", np.array(0.5, np.float32))])
       for op in ("And", "Or", "Xor")},
    "not": _two_nodes(helper.make_node("Greater", ["x", "zero"], ["a"]), helper.make_node("Not", ["a"], ["y"]),
                      out_type=BOOL, inits=[const("zero", np.array(0, np.float32))]),
    "isinf": _two_nodes(helper.make_node("Div", ["x", "zero"], ["a"]), helper.make_node("IsInf", ["a"], ["y"]),
                        out_type=BOOL, inits=[const("zero", np.array(0, np.float32))]),
    "isnan": _two_nodes(helper.make_node("Log", ["x"], ["a"]), helper.make_node("IsNaN", ["a"], ["y"]), out_type=BOOL),
    "mod_fmod": case("Mod", [[4]], {"fmod": 1}, consts={1: np.array([1.5, -2.0, 0.7, 3.0], np.float32)}),
    "argmin": case("ArgMin", [[5]], {"axis": 1, "keepdims": 0}, out_type=I64),
    "reduce_l1": case("ReduceL1", [[3, 4]], {"axes": [2]}, opset=13),
    "reduce_log_sum": case("ReduceLogSum", [[3]], {"axes": [1]}, opset=13),
    "reduce_log_sum_exp": case("ReduceLogSumExp", [[3, 4]], {"axes": [1]}, opset=13),
    "reduce_min": case("ReduceMin", [[3, 4]], {"axes": [2]}, opset=13),
    "cast": case("Cast", [[4]], {"to": I64}, out_type=I64),
    "cast_like": case("CastLike", [[4]], consts={1: np.array([1], np.int32)}, out_type=TensorProto.INT32),
    "constant": _two_nodes(helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(rand(4), "c")),
                           helper.make_node("Add", ["x", "c"], ["y"])),
    "constant_of_shape": _two_nodes(helper.make_node("Shape", ["x"], ["s"]),
                                    helper.make_node("ConstantOfShape", ["s"], ["y"],
                                                     value=onnx.numpy_helper.from_array(np.array([2.5], np.float32)))),
    "size": case("Size", [[4]], out_type=I64),
    "range": _two_nodes(helper.make_node("Size", ["x"], ["s"]), helper.make_node("Range", ["zero", "s", "two"], ["y"]),
                        out_type=I64, inits=[const("zero", np.array(0, np.int64)), const("two", np.array(2, np.int64))]),
    "dropout": case("Dropout", [[4]], opset=13),
    "nonzero": _two_nodes(helper.make_node("Greater", ["x", "zero"], ["a"]), helper.make_node("NonZero", ["a"], ["y"]),
                          out_type=I64, inits=[const("zero", np.array(0, np.float32))]),
    "one_hot": case("OneHot", [[3]], {"axis": -1}, consts={1: np.array(4, np.int64), 2: np.array([0.0, 1.0], np.float32)},
                    inputs=[I64]),
    "topk": model([helper.make_node("TopK", ["x", "k"], ["y", "indices"], axis=1)],
                  [helper.make_tensor_value_info("x", F32, ["n", 5])],
                  [helper.make_tensor_value_info("y", F32, None), helper.make_tensor_value_info("indices", I64, None)],
                  [const("k", i64(2))]),
    "hardmax": case("Hardmax", [[5]], opset=13),
    "gather_nd": case("GatherND", [[3], [1]], inputs=[None, I64], opset=13),
    "scatter_elements": case("ScatterElements", [[4], [2], [2]], {"axis": 1, "reduction": "add"},
                             inputs=[None, I64, None], opset=16),
    "scatter_nd": case("ScatterND", [[4], [1], [4]], {"reduction": "add"}, inputs=[None, I64, None], opset=16),
    "det": case("Det", [[3, 3]]),
    "grid_sample": case("GridSample", [[2, 4, 4], [3, 3, 2]], {"align_corners": 0}, opset=16),
    "lp_pool": case("LpPool", [[2, 5, 5]], {"kernel_shape": [2, 2], "p": 2}),
    "upsample": case("Upsample", [[2, 3, 3]], {"mode": "nearest"}, consts={1: np.array([1, 1, 2, 2], np.float32)},
                     opset=9),
    "shrink": case("Shrink", [[5]], {"bias": 0.3, "lambd": 0.4}),
    "sequences": _sequence(helper.make_node("SplitToSequence", ["x", "one"], ["seq"], axis=1),
                           helper.make_node("SequenceAt", ["seq", "one"], ["item"]),
                           helper.make_node("SequenceConstruct", ["x", "item"], ["pair"]),
                           helper.make_node("ConcatFromSequence", ["pair"], ["y"], axis=1),
                           helper.make_node("SequenceLength", ["seq"], ["count"])),
    "dft": case("DFT", [[6, 1]], {"onesided": 1}, consts={1: np.array(8, np.int64)}, opset=17),
    "stft": case("STFT", [[16, 1]], {"onesided": 1}, consts={1: np.array(4, np.int64),
                                                             2: np.hanning(8).astype(np.float32)}, opset=17),
    "lstm": _recurrent("LSTM", 4),
    "gru": _recurrent("GRU", 3),
    "rnn": _recurrent("RNN", 1),
    **{f"ours_{op.lower()}": _ours(op) for op in ("GeluErf", "GeluTanh", "HardSwish", "Mish", "Silu")},
    "ours_standardize": _ours("Standardize", epsilon=1e-5),
    "ours_rms_norm": _ours("RMSNorm", epsilon=1e-6),
    "ours_sparsemax": _ours("Sparsemax", ((6,),)),
    "ours_shapley_pow": _ours("ShapleyPow", ((4,), (4,))),
    "ours_entmax15": _ours("Entmax15", ((6,),)),
    "ours_shapley_mul": _ours("ShapleyMul", ((4,), (4,))),
    "ours_shapley_matmul": _ours("ShapleyMatMul", ((2, 3), (3, 4))),
    "ours_shapley_einsum": _ours("ShapleyEinsum", ((2, 3), (3, 4)), equation="bij,bjk->bik"),
    "ours_exact_max_pool": _ours("ExactMaxPool", ((2, 5, 5),), kernel_shape=[3, 3], strides=[1, 1]),
}

# The cases whose every op has a converter (the rest are ops only the passes handle).
DIRECT = {name: proto for name, proto in {**CASES, **EXTRA}.items() if _ops(proto) <= set(CONVERTERS)}


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_the_converter_alone_matches_onnxruntime(name):
    proto = DIRECT[name]
    module = import_onnx(proto)
    inputs = example_inputs(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {vi.name: t.numpy() for vi, t in zip(proto.graph.input, inputs)})
    with torch.no_grad():
        got = module(*inputs)
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-5)


def test_every_converter_is_reached_by_a_one_node_graph():
    reached = set().union(*(_ops(proto) for proto in DIRECT.values()))
    assert sorted(set(CONVERTERS) - reached) == []
