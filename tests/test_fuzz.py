"""Fuzzing: mutated small ONNX models give a verified model or one of our typed errors,
never another exception and never a hang."""

from __future__ import annotations

import onnx
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_graphs import fixed_batch_mlp, keras_like_cnn

from rewriter import ShapRewriteError, rewrite
from rewriter.result import ExplainableModule

SEEDS = [keras_like_cnn().SerializeToString(), fixed_batch_mlp(batch=2).SerializeToString()]


def _mutate(data: bytes, draw) -> bytes:
    model = onnx.load_from_string(data)
    graph = model.graph
    kind = draw(st.sampled_from(["drop_node", "duplicate_node", "attribute", "dim", "dtype", "swap_inputs"]))
    if kind == "drop_node" and len(graph.node) > 1:
        del graph.node[draw(st.integers(0, len(graph.node) - 1))]
    elif kind == "duplicate_node":
        graph.node.append(graph.node[draw(st.integers(0, len(graph.node) - 1))])
    elif kind == "swap_inputs":
        node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
        if len(node.input) > 1:
            node.input[0], node.input[1] = node.input[1], node.input[0]
    elif kind == "attribute":
        nodes = [n for n in graph.node if n.attribute]
        if nodes:
            attr = draw(st.sampled_from(nodes)).attribute[0]
            value = draw(st.integers(-3, 40))
            if attr.ints:
                attr.ints[draw(st.integers(0, len(attr.ints) - 1))] = value
            elif attr.type == onnx.AttributeProto.INT:
                attr.i = value
            elif attr.type == onnx.AttributeProto.FLOAT:
                attr.f = float(value)
    elif kind == "dim" and graph.input[0].type.tensor_type.shape.dim:
        dims = graph.input[0].type.tensor_type.shape.dim
        dims[draw(st.integers(0, len(dims) - 1))].dim_value = draw(st.integers(0, 64))
    elif kind == "dtype":
        target = draw(st.sampled_from([onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE,
                                       onnx.TensorProto.BOOL]))
        if draw(st.booleans()) or not graph.initializer:
            graph.input[0].type.tensor_type.elem_type = target
        else:
            graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))].data_type = target
    return model.SerializeToString()


@st.composite
def mutated_models(draw) -> bytes:
    data = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 2))):
        data = _mutate(data, draw)
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data) - 1))]  # a file cut short
    return data


@settings(max_examples=60, deadline=20000, derandomize=True, suppress_health_check=list(HealthCheck))
@given(mutated_models())
def test_mutated_models_give_a_model_or_a_typed_error(data):
    try:
        module = rewrite(data, dims={"unk__12": 2})
    except ShapRewriteError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    assert isinstance(module, ExplainableModule)
    graph_input = onnx.load_from_string(data).graph.input[0]  # it parsed, so it loads
    shape = [d.dim_value or 2 for d in graph_input.type.tensor_type.shape.dim]
    if graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
        module(torch.randn(*shape))
