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


def recurrent_layer(op: str = "LSTM", *, hidden: int = 4, features: int = 3, seq: int = 5, batch: int | str = "N",
                    direction: str = "forward", layout: int = 0, peepholes: bool = False, clip: float | None = None,
                    activations: list[str] | None = None, alphas: list[float] | None = None,
                    betas: list[float] | None = None, linear_before_reset: int | None = None,
                    sequence_lens: list[int] | None = None, initial_state: bool = False,
                    outputs: tuple[str, ...] = ("Y", "Y_h"), opset: int = 14, seed: int = 0) -> onnx.ModelProto:
    """One ONNX LSTM, GRU or RNN node with the attributes other producers write; its
    outputs each feed a graph output (Y_h and Y_c flattened to [batch, dirs * hidden])."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    dirs = 2 if direction == "bidirectional" else 1
    f32 = np.float32
    inits = [const("W", (rng.normal(size=(dirs, gates * hidden, features)) * 0.5).astype(f32)),
             const("R", (rng.normal(size=(dirs, gates * hidden, hidden)) * 0.5).astype(f32)),
             const("B", (rng.normal(size=(dirs, 2 * gates * hidden)) * 0.2).astype(f32))]
    # Inputs are batch first, as explainers need; sequence-first layers get transposed ones.
    names = ["x" if layout else "x_seq_first", "W", "R", "B"]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, features])]
    nodes = [] if layout else [helper.make_node("Transpose", ["x"], ["x_seq_first"], perm=[1, 0, 2])]
    if sequence_lens is not None:
        inits.append(const("lens", np.array(sequence_lens, np.int32)))
    names.append("lens" if sequence_lens is not None else "")
    for state in ("h0", "c0")[:2 if op == "LSTM" else 1]:
        if initial_state:
            inputs.append(helper.make_tensor_value_info(state, TensorProto.FLOAT, [batch, dirs, hidden]))
            if not layout:
                nodes.append(helper.make_node("Transpose", [state], [f"{state}_dir_first"], perm=[1, 0, 2]))
        names.append((state if layout else f"{state}_dir_first") if initial_state else "")
    if peepholes:
        inits.append(const("P", (rng.normal(size=(dirs, 3 * hidden)) * 0.5).astype(f32)))
        names.append("P")
    while names and not names[-1]:
        names.pop()
    attrs = {"hidden_size": hidden, "direction": direction}
    if opset >= 14:
        attrs["layout"] = layout
    for key, value in (("clip", clip), ("activations", activations), ("activation_alpha", alphas),
                       ("activation_beta", betas), ("linear_before_reset", linear_before_reset)):
        if value is not None:
            attrs[key] = value
    node_outputs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")[:3 if op == "LSTM" else 2]]
    while not node_outputs[-1]:
        node_outputs.pop()
    nodes.append(helper.make_node(op, names, node_outputs, name=f"encoder/{op.lower()}", **attrs))
    graph_outputs = []
    for o in outputs:
        flat = f"{o}_flat"
        if o == "Y":
            # [seq, dirs, batch, hidden] (layout 1: [batch, seq, dirs, hidden]) -> batch first, flattened
            perm = [2, 0, 1, 3] if layout == 0 else [0, 1, 2, 3]
            nodes.append(helper.make_node("Transpose", [o], [f"{o}_t"], perm=perm))
        else:
            nodes.append(helper.make_node("Transpose", [o], [f"{o}_t"], perm=[1, 0, 2] if layout == 0 else [0, 1, 2]))
        nodes.append(helper.make_node("Flatten", [f"{o}_t"], [flat], axis=1))
        graph_outputs.append(helper.make_tensor_value_info(flat, TensorProto.FLOAT, None))
    return model(nodes, inputs, graph_outputs, inits, opset=opset, name=f"{op.lower()}_layer")


def keras_rnn_loop(seq: int = 4, features: int = 3, hidden: int = 5, seed: int = 0) -> onnx.ModelProto:
    """A Keras SimpleRNN as tf2onnx writes it when it does not emit the RNN op: a Loop over
    the time steps with a constant trip count, the input read by the iteration number from
    the outer scope, the hidden state carried and each step's state scanned out."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    body_nodes = [
        helper.make_node("Gather", ["x_seq", "i"], ["x_t"], axis=0, name="while/strided_slice"),
        helper.make_node("MatMul", ["x_t", "kernel"], ["xk"], name="while/MatMul"),
        helper.make_node("MatMul", ["h_in", "recurrent_kernel"], ["hr"], name="while/MatMul_1"),
        helper.make_node("Add", ["xk", "hr"], ["s"], name="while/add"),
        helper.make_node("Add", ["s", "bias"], ["pre"], name="while/BiasAdd"),
        helper.make_node("Tanh", ["pre"], ["h_out"], name="while/Tanh"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="while/cond"),
        helper.make_node("Identity", ["h_out"], ["scan_out"], name="while/scan"),
    ]
    body = helper.make_graph(
        body_nodes, "while_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", hidden])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", hidden]),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, ["N", hidden])])
    inits = [const("kernel", (rng.normal(size=(features, hidden)) * 0.5).astype(f32)),
             const("recurrent_kernel", (rng.normal(size=(hidden, hidden)) * 0.5).astype(f32)),
             const("bias", (rng.normal(size=(hidden,)) * 0.1).astype(f32)),
             const("trips", np.array(seq, np.int64)), const("keep_going", np.array(True)),
             const("dense", (rng.normal(size=(hidden, 2)) * 0.5).astype(f32)),
             const("h_shape_tail", np.array([hidden], np.int64)), const("zero", np.array([0], np.int64)),
             const("one", np.array([1], np.int64))]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["x_seq"], perm=[1, 0, 2], name="simple_rnn/transpose"),
        helper.make_node("Shape", ["input_1"], ["shape"], name="simple_rnn/Shape"),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"], name="simple_rnn/strided_slice"),
        helper.make_node("Concat", ["batch", "h_shape_tail"], ["h_shape"], axis=0, name="simple_rnn/zeros/packed"),
        helper.make_node("ConstantOfShape", ["h_shape"], ["h0"], name="simple_rnn/zeros",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Loop", ["trips", "keep_going", "h0"], ["h_last", "states"], body=body, name="simple_rnn/while"),
        helper.make_node("MatMul", ["h_last", "dense"], ["logits"], name="dense/MatMul"),
    ]
    return model(nodes, [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", seq, features])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits, opset=13,
                 name="tf2onnx")
