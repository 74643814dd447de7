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

import onnx

DOMAIN = "shaprewrite"


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
    """The registry, every op file imported."""
    from . import rms_norm, sparsemax, standardize  # noqa: F401

    return OPS
