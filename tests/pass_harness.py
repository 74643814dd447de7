"""One pass on one small graph: build it with ONNX helpers, run the pass alone, and run the
graph before and after with onnxruntime (shaprewrite's own ops as model-local functions)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from rewriter.onnxkit.functions import attach_functions
from rewriter.onnxkit.graph import DOMAIN
from rewriter.onnxkit.shapes import refresh_shapes
from rewriter.passes import PassOptions, PassResult

F32 = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def build(nodes, inputs: dict[str, list], initializers=(), outputs=("y",), opset: int = 17) -> onnx.ModelProto:
    """A float graph: ``inputs`` maps each input's name to its shape, outputs are float."""
    graph = helper.make_graph(list(nodes), "g", [helper.make_tensor_value_info(n, F32, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info(n, F32, None) for n in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    attach_functions(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def apply(graph_pass: Callable[[gs.Graph, PassOptions], PassResult], model: onnx.ModelProto,
          options: PassOptions | None = None) -> tuple[onnx.ModelProto, PassResult, list[str]]:
    """Run ``graph_pass`` alone on ``model`` (types and shapes inferred first, as the pipeline
    does); the model after it, the pass's result and the op types left."""
    graph = gs.import_onnx(model)
    refresh_shapes(graph)
    result = graph_pass(graph, options or PassOptions())
    graph.cleanup().toposort()
    after = gs.export_onnx(graph, do_type_check=False)
    return after, result, [node.op_type for node in after.graph.node]


def same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray],
                 rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for want, got in zip(run(before, feeds), run(after, feeds)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def randn(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)
