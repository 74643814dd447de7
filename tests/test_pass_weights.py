"""Large weights kept out of serialized copies: the light exports the passes work with, the
onnxruntime sessions fed the values themselves, and a rewrite that holds each weight once."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

import rewriter
from rewriter.onnxkit.weights import (
    LARGE_BYTES,
    export_light,
    hold_apart,
    import_light,
    light_copy,
    ort_session,
)

WIDTH = 640  # a 640 x 640 float32 weight is 1.6 MB, over LARGE_BYTES
RNG = np.random.default_rng(0)


def _mlp() -> onnx.ModelProto:
    w1 = (RNG.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    w2 = (RNG.standard_normal((WIDTH, 3)) / np.sqrt(WIDTH)).astype(np.float32)
    return helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="second")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]),
        opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_weights_themselves_are_over_the_threshold():
    assert WIDTH * WIDTH * 4 >= LARGE_BYTES > WIDTH * 3 * 4


def test_a_light_export_holds_the_large_weight_apart_and_leaves_the_graph_as_it_was():
    model = _mlp()
    graph = gs.import_onnx(model)
    light = export_light(graph)
    assert set(light.held) == {"w1"} and light.proto.ByteSize() < 20_000  # w2 (7.7 kB) stays inside
    placeholder = next(t for t in light.proto.graph.initializer if t.name == "w1")
    assert placeholder.data_location == TensorProto.EXTERNAL and list(placeholder.dims) == [WIDTH, WIDTH]
    # The graph's constant has its values back, and a full export still equals the source.
    x = RNG.standard_normal((2, WIDTH)).astype(np.float32)
    np.testing.assert_array_equal(_run(gs.export_onnx(graph), x), _run(model, x))


def test_onnxruntime_runs_a_light_export_on_the_held_values():
    model = _mlp()
    light = export_light(gs.import_onnx(model))
    x = RNG.standard_normal((4, WIDTH)).astype(np.float32)
    session = ort_session(light.proto, held=light.held, extra_outputs=["h"])
    y, h = session.run(["y", "h"], {"x": x})
    np.testing.assert_allclose(y, _run(model, x), rtol=1e-5, atol=1e-6)  # kernels may sum in another order
    assert h.shape == (4, WIDTH)


def test_checker_and_shape_inference_take_the_light_copy_as_inputs():
    light = export_light(gs.import_onnx(_mlp())).proto
    as_inputs, large = light_copy(light, as_inputs=True)
    assert large == [] and "w1" in {vi.name for vi in as_inputs.graph.input}
    onnx.checker.check_model(as_inputs)
    inferred = onnx.shape_inference.infer_shapes(as_inputs, strict_mode=True)
    h = next(vi for vi in inferred.graph.value_info if vi.name == "h")
    assert [d.dim_value for d in h.type.tensor_type.shape.dim][1:] == [WIDTH]


def test_an_edited_light_export_comes_back_reading_the_same_constants():
    graph = gs.import_onnx(_mlp())
    light = export_light(graph)
    # An edit as a pass makes it on the exported model: rename the first node.
    light.proto.graph.node[0].name = "renamed"
    back = import_light(light.proto, light.held)
    first = next(node for node in back.nodes if node.name == "renamed")
    assert first.inputs[1] is light.held["w1"] and first.inputs[1].outputs == [first]


def test_a_held_apart_source_reads_its_weight_when_asked_into_an_array_the_module_can_share():
    model = _mlp()
    light, large = light_copy(model, as_inputs=True)
    prepared = hold_apart(light, large)
    assert [t.name for t in prepared.proto.graph.initializer if t.data_location == TensorProto.EXTERNAL] == ["w1"]
    values = prepared.held["w1"].values
    assert values.flags.writeable and values.flags.owndata
    np.testing.assert_array_equal(values, numpy_helper.to_array(model.graph.initializer[0]))


def test_a_rewrite_holds_each_weight_once_and_its_artifact_stores_it_once(tmp_path):
    model = _mlp()
    module = rewriter.rewrite(model)
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    initializers = {t.untyped_storage().data_ptr() for t in module.onnx_tensors.values()}
    assert parameters <= initializers  # layers hold the initializers' memory, not copies
    path = tmp_path / "mlp.pt"
    rewriter.save(module, path)
    weight_bytes = sum(t.nbytes for t in module.onnx_tensors.values())
    assert path.stat().st_size < 1.1 * weight_bytes
    x = torch.randn(5, WIDTH)
    torch.testing.assert_close(rewriter.load(path)(x), module(x), rtol=0, atol=0)
    np.testing.assert_allclose(module(x).detach().numpy(), _run(model, x.numpy()), rtol=1e-5, atol=1e-5)


def test_training_the_loaded_module_moves_its_tied_weights_together(tmp_path):
    """One initializer read by two layers stays one weight: fine-tuning keeps them tied, as
    the source model had them."""
    w = numpy_helper.from_array((RNG.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32), "w")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w"], ["y"])], "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])], [w]),
        opset_imports=[helper.make_opsetid("", 17)])
    module = rewriter.rewrite(model)
    first, second = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        first.weight.add_(1.0)
    torch.testing.assert_close(first.weight, second.weight)


class _Wide(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(WIDTH, WIDTH), torch.nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def test_the_export_holds_the_modules_own_weights_read_only_without_a_copy():
    from rewriter.export import export_module

    model = _Wide().eval()
    exported = export_module(model, (torch.randn(3, WIDTH),), exporter="dynamo")
    (held,) = exported.model.held.values()
    assert np.shares_memory(held.values, model.first.weight.detach().numpy())
    assert not held.values.flags.writeable
    placeholders = [t for t in exported.model.proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert [t.name for t in placeholders] == [held.name] and not placeholders[0].raw_data


def test_the_rewritten_module_owns_its_weights_so_training_the_source_leaves_it_as_it_was():
    model = _Wide().eval()
    x = torch.randn(4, WIDTH)
    module = rewriter.rewrite(model, x)
    before = module(x).detach().clone()
    with torch.no_grad():
        model.first.weight.add_(1.0)
    torch.testing.assert_close(module(x), before, rtol=0, atol=0)
    sources = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not sources & {p.untyped_storage().data_ptr() for p in module.parameters()}
