"""ONNX graphs built by hand with onnx.helper, shaped like what other producers emit."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, inputs, outputs, initializers=(), opset: int = 17, name: str = "graph") -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    proto.ir_version = 8
    # Outputs declared without a shape get the inferred one: the checker requires a shape.
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return proto


def keras_like_cnn(batch: int | str = "unk__12", seed: int = 0) -> onnx.ModelProto:
    """What tf2onnx emits for a small Keras CNN: NHWC input transposed around a Conv, ReLU,
    a Reshape fed by shape arithmetic, and Dense layers as MatMul + Add."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        const("conv_w", rng.normal(size=(4, 3, 3, 3)).astype(f32) * 0.3),
        const("conv_b", rng.normal(size=(4,)).astype(f32) * 0.1),
        const("dense_w", rng.normal(size=(4 * 6 * 6, 8)).astype(f32) * 0.1),
        const("dense_b", rng.normal(size=(8,)).astype(f32) * 0.1),
        const("out_w", rng.normal(size=(8, 3)).astype(f32) * 0.3),
        const("out_b", rng.normal(size=(3,)).astype(f32) * 0.1),
        const("zero", np.array([0], dtype=np.int64)),
        const("one", np.array([1], dtype=np.int64)),
        const("minus_one", np.array([-1], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2], name="sequential/conv2d/Conv2D__6"),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="sequential/conv2d/BiasAdd"),
        helper.make_node("Relu", ["conv"], ["relu"], name="sequential/conv2d/Relu"),
        helper.make_node("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1], name="sequential/conv2d/Relu__8"),
        helper.make_node("Shape", ["nhwc"], ["shape"], name="sequential/flatten/Shape"),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch_dim"], name="sequential/flatten/strided_slice"),
        helper.make_node("Concat", ["batch_dim", "minus_one"], ["flat_shape"], axis=0, name="sequential/flatten/Reshape/shape"),
        helper.make_node("Reshape", ["nhwc", "flat_shape"], ["flat"], name="sequential/flatten/Reshape"),
        helper.make_node("MatMul", ["flat", "dense_w"], ["mm"], name="sequential/dense/MatMul"),
        helper.make_node("Add", ["mm", "dense_b"], ["dense"], name="sequential/dense/BiasAdd"),
        helper.make_node("Relu", ["dense"], ["dense_relu"], name="sequential/dense/Relu"),
        helper.make_node("MatMul", ["dense_relu", "out_w"], ["mm2"], name="sequential/dense_1/MatMul"),
        helper.make_node("Add", ["mm2", "out_b"], ["logits"], name="sequential/dense_1/BiasAdd"),
        helper.make_node("Softmax", ["logits"], ["dense_1"], axis=-1, name="sequential/dense_1/Softmax"),
    ]
    return model(nodes, [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [batch, 6, 6, 3])],
                 [helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, [batch, 3])], inits, opset=13,
                 name="tf2onnx")


def fixed_batch_mlp(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A graph exported with a fixed batch that bakes it into a Reshape target."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        const("w1", rng.normal(size=(12, 10)).astype(f32) * 0.3),
        const("b1", rng.normal(size=(10,)).astype(f32) * 0.1),
        const("w2", rng.normal(size=(10, 2)).astype(f32) * 0.3),
        const("flat", np.array([batch, 12], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten"),
        helper.make_node("Gemm", ["x2", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Sigmoid", ["h"], ["s"], name="act"),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="fc2"),
    ]
    return model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])], inits)


def keras_mixed_float16_cnn(seed: int = 0) -> onnx.ModelProto:
    """What tf2onnx emits for a Keras ``mixed_float16`` CNN: float32 input and output,
    casts to float16 around a float16 convolution and dense layer."""
    rng = np.random.default_rng(seed)
    f16 = np.float16
    inits = [
        const("conv_w", (rng.normal(size=(4, 3, 3, 3)) * 0.3).astype(f16)),
        const("conv_b", (rng.normal(size=(4,)) * 0.1).astype(f16)),
        const("dense_w", (rng.normal(size=(4 * 6 * 6, 3)) * 0.1).astype(f16)),
        const("dense_b", (rng.normal(size=(3,)) * 0.1).astype(f16)),
        const("flat", np.array([-1, 4 * 6 * 6], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Cast", ["input_1"], ["x16"], to=TensorProto.FLOAT16, name="model/conv2d/Cast"),
        helper.make_node("Transpose", ["x16"], ["nchw"], perm=[0, 3, 1, 2], name="model/conv2d/Conv2D__6"),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="model/conv2d/BiasAdd"),
        helper.make_node("Relu", ["conv"], ["relu"], name="model/conv2d/Relu"),
        helper.make_node("Reshape", ["relu", "flat"], ["flat16"], name="model/flatten/Reshape"),
        helper.make_node("MatMul", ["flat16", "dense_w"], ["mm"], name="model/dense/MatMul"),
        helper.make_node("Add", ["mm", "dense_b"], ["logits16"], name="model/dense/BiasAdd"),
        helper.make_node("Cast", ["logits16"], ["logits"], to=TensorProto.FLOAT, name="model/dense/Cast"),
    ]
    return model(nodes, [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__9", 6, 6, 3])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["unk__9", 3])], inits, opset=13,
                 name="tf2onnx")


def keras_multi_head_attention(seq: int = 5, dim: int = 8, heads: int = 2, seed: int = 0) -> onnx.ModelProto:
    """What tf2onnx emits for a Keras ``MultiHeadAttention`` self-attention block and a
    mean-pooled head: Dense projections as MatMul + Add, head splits as Reshapes whose
    targets are computed from ``Shape`` (batch and sequence read at run time), Transposes,
    two MatMuls and a Softmax. The batch is symbolic; the sequence length is static."""
    rng = np.random.default_rng(seed)
    f32, head_dim = np.float32, dim // heads
    inits = [const(f"{p}_w", (rng.normal(size=(dim, dim)) * 0.4).astype(f32)) for p in "qkvo"]
    inits += [const(f"{p}_b", (rng.normal(size=(dim,)) * 0.1).astype(f32)) for p in "qkvo"]
    inits += [
        const("head_w", (rng.normal(size=(dim, 3)) * 0.4).astype(f32)),
        const("zero", np.array(0, np.int64)), const("one", np.array(1, np.int64)),
        const("axis0", np.array([0], np.int64)), const("heads_dims", np.array([heads, head_dim], np.int64)),
        const("model_dim", np.array([dim], np.int64)), const("scale", np.array(head_dim ** -0.5, f32)),
        const("seq_axis", np.array([1], np.int64)),
    ]
    prefix = "model/multi_head_attention"
    nodes = [
        helper.make_node("Shape", ["query"], ["shape"], name=f"{prefix}/Shape"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0, name=f"{prefix}/strided_slice"),
        helper.make_node("Gather", ["shape", "one"], ["length"], axis=0, name=f"{prefix}/strided_slice_1"),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"], name=f"{prefix}/Unsqueeze"),
        helper.make_node("Unsqueeze", ["length", "axis0"], ["length1"], name=f"{prefix}/Unsqueeze_1"),
        helper.make_node("Concat", ["batch1", "length1", "heads_dims"], ["split_shape"], axis=0,
                         name=f"{prefix}/Reshape/shape"),
        helper.make_node("Concat", ["batch1", "length1", "model_dim"], ["merge_shape"], axis=0,
                         name=f"{prefix}/Reshape_3/shape"),
    ]
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            helper.make_node("MatMul", ["query", f"{p}_w"], [f"{p}_mm"], name=f"{prefix}/{p}/MatMul"),
            helper.make_node("Add", [f"{p}_mm", f"{p}_b"], [f"{p}_dense"], name=f"{prefix}/{p}/BiasAdd"),
            helper.make_node("Reshape", [f"{p}_dense", "split_shape"], [f"{p}_heads"], name=f"{prefix}/{p}/Reshape"),
            helper.make_node("Transpose", [f"{p}_heads"], [f"{p}_t"], perm=perm, name=f"{prefix}/{p}/transpose"),
        ]
    nodes += [
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores"], name=f"{prefix}/einsum/Einsum"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name=f"{prefix}/Mul"),
        helper.make_node("Softmax", ["scaled"], ["weights"], axis=3, name=f"{prefix}/softmax/Softmax"),
        helper.make_node("MatMul", ["weights", "v_t"], ["context"], name=f"{prefix}/einsum_1/Einsum"),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3], name=f"{prefix}/transpose_1"),
        helper.make_node("Reshape", ["context_t", "merge_shape"], ["merged"], name=f"{prefix}/Reshape_3"),
        helper.make_node("MatMul", ["merged", "o_w"], ["o_mm"], name=f"{prefix}/attention_output/MatMul"),
        helper.make_node("Add", ["o_mm", "o_b"], ["attended"], name=f"{prefix}/attention_output/BiasAdd"),
        helper.make_node("ReduceMean", ["attended"], ["pooled"], axes=[1], keepdims=0, name="model/pool/Mean"),
        helper.make_node("MatMul", ["pooled", "head_w"], ["logits"], name="model/dense/MatMul"),
    ]
    return model(nodes, [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["unk__7", seq, dim])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["unk__7", 3])], inits, opset=13,
                 name="tf2onnx")
