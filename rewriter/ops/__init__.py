"""The project's own ONNX ops (domain ``shaprewrite``), one file each.

An op is a :class:`CustomOp`: its name, its inputs and the attributes its body reads, its
ONNX function body (so a rewritten graph stays valid ONNX that shape inference and
onnxruntime see through), how the passes find it (``match``: a node of the graph whose
computation the op replaces, see ``passes.custom_ops``), and how the importer translates it
(``convert``). The op's module, with its DeepLIFT rule and the report's kind for it, lives in
the same file. Registering an op here is all it takes: the converter table, the function
bodies and the pass read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import helper

from ..onnxkit.graph import DOMAIN


@dataclass(frozen=True)
class CustomOp:
    """One op of the ``shaprewrite`` domain (see the module notes)."""

    name: str
    body: Callable[[int], list[onnx.NodeProto]]  # the function body at an opset
    convert: Callable[[Any], Any]  # the importer's converter: (NodeContext) -> value
    inputs: tuple[str, ...] = ("X",)
    attributes: tuple[str, ...] = ()  # what the body reads from the calling node
    match: Callable[[Any, Any], list[str] | None] | None = field(default=None)  # (graph, node) -> nodes added

    @property
    def key(self) -> str:
        """The converter registry's key for the op."""
        return f"{DOMAIN}.{self.name}"

    def function(self, opset: int) -> onnx.FunctionProto:
        return onnx.helper.make_function(DOMAIN, self.name, list(self.inputs), ["Y"], self.body(opset),
                                         opset_imports=[onnx.helper.make_opsetid("", opset)],
                                         attributes=list(self.attributes))


OPS: dict[str, CustomOp] = {}


def register(op: CustomOp) -> CustomOp:
    """Add ``op`` to the registry and its converter to the importer's table."""
    from ..converters import converter

    if op.name in OPS:
        raise RuntimeError(f"two custom ops named {op.name}")
    OPS[op.name] = op
    converter(op.key)(op.convert)
    return op


def load() -> dict[str, CustomOp]:
    """The registry, every op file of this package imported (a new file is all a new op takes)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return OPS


# -- pieces of function bodies


def reduce_last(opset: int, op: str, source: str, out: str) -> onnx.NodeProto:
    """``op`` (a Reduce*) over the last axis, kept; the body must hold a Constant ``last`` = [-1]."""
    if opset >= 18 or op == "ReduceSum":
        return helper.make_node(op, [source, "last"], [out], keepdims=1)
    return helper.make_node(op, [source], [out], axes=[-1], keepdims=1)


def sorted_with_ranks(opset: int, source: str) -> list[onnx.NodeProto]:
    """``ordered`` (``source`` sorted largest first over the last axis) and ``ranks`` (1, 2, ...
    n, in ``X``'s type); the body must hold ``last`` = [-1] and ``one`` (1 in ``X``'s type)."""
    return [
        helper.make_node("Shape", [source], ["shape"]),
        helper.make_node("Gather", ["shape", "last"], ["n"], axis=0),
        helper.make_node("TopK", [source, "n"], ["ordered", "order"], axis=-1, largest=1, sorted=1),
        helper.make_node("Squeeze", ["n", "last"] if opset >= 13 else ["n"], ["n_scalar"],
                         **({} if opset >= 13 else {"axes": [0]})),
        helper.make_node("Constant", [], ["zero_i"], value_int=0),
        helper.make_node("Constant", [], ["step"], value_int=1),
        helper.make_node("Range", ["zero_i", "n_scalar", "step"], ["ranks_from_0"]),
        helper.make_node("CastLike", ["ranks_from_0", "X"], ["ranks_0"]),
        helper.make_node("Add", ["ranks_0", "one"], ["ranks"]),
        helper.make_node("Constant", [], ["axis"], value_int=-1),
    ]


# -- matching


def computes(graph: gs.Graph, source: gs.Variable, result: gs.Tensor,
             function: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether the nodes between ``source`` and ``result`` compute ``function`` of it, run by
    onnxruntime on random values (a structure that looks like an op's
    algorithm may be another op's: TabNet's entmax sorts and sums as sparsemax does). False
    where anything but constants feeds them besides ``source``."""
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    from ..onnxkit.weights import ort_session

    shape = [d if isinstance(d, int) and d > 0 else 3 for d in (source.shape or [])]
    if not shape or source.dtype != np.float32:
        return False
    nodes, constants = _computing(result, source)
    if nodes is None:
        return False
    values = np.random.default_rng(0).normal(scale=2.0, size=shape).astype(np.float32)
    try:
        model = helper.make_model(helper.make_graph(
            [OnnxExporter.export_node(node) for node in nodes], "piece",
            [helper.make_tensor_value_info(source.name, onnx.TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info(result.name, onnx.TensorProto.FLOAT, None)],
            [OnnxExporter.export_tensor_proto(c) for c in constants]),
            opset_imports=[helper.make_opsetid("", graph.opset)])
        (got,) = ort_session(model).run(None, {source.name: values})
    except Exception:  # noqa: BLE001  (a piece onnxruntime refuses: no match)
        return False
    want = function(torch.from_numpy(values).double()).numpy()
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-5))


def _computing(result: gs.Tensor, source: gs.Tensor, most: int = 200
               ) -> tuple[list[gs.Node] | None, list[gs.Constant]]:
    """The nodes from ``source`` to ``result`` in order, and the constants they read; None
    where another value feeds them (or they are more than ``most``)."""
    nodes, constants, done = [], {}, set()

    def visit(tensor: gs.Tensor) -> bool:
        if tensor is source or not tensor.name or tensor.name in done:
            return True
        done.add(tensor.name)
        if isinstance(tensor, gs.Constant):
            constants[tensor.name] = tensor
            return True
        if len(tensor.inputs) != 1 or len(nodes) >= most:
            return False
        node = tensor.inputs[0]
        if not all(visit(t) for t in node.inputs):
            return False
        if all(node is not n for n in nodes):
            nodes.append(node)
        return True

    return (nodes if visit(result) else None), list(constants.values())
