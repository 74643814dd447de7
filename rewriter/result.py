"""The type of a rewritten model."""

from __future__ import annotations

import copy

import torch
import torch.fx as fx

# The attributes that make a module rebuildable from data alone (see rewriter.artifact).
SOURCE_ATTRIBUTES = ("onnx_graph", "onnx_tensors")


class ExplainableModule(fx.GraphModule):
    """A ``torch.fx.GraphModule`` that remembers the ONNX graph it was imported from.

    ``onnx_graph`` is that graph serialized without its weights (every initializer a
    placeholder) and ``onnx_tensors`` the weights by name: ``rewriter.save`` writes both, and
    ``rewriter.load`` rebuilds the module from them without running any code from the file.

    Pickling (``torch.save(module)``) also works; loading such a pickle imports
    shaprewrite, which registers the explainer rules the module relies on.
    """

    onnx_graph: bytes | None = None
    onnx_tensors: dict[str, torch.Tensor] | None = None

    def __reduce__(self):
        rebuild, args = super().__reduce__()
        return _restore, (rebuild, args)

    def __deepcopy__(self, memo: dict) -> ExplainableModule:
        result = super().__deepcopy__(memo)
        for name in SOURCE_ATTRIBUTES:
            setattr(result, name, copy.deepcopy(getattr(self, name), memo))
        return result


def _restore(rebuild, args) -> ExplainableModule:
    module = rebuild(*args)
    body = args[0] if args and isinstance(args[0], dict) else {}
    result = ExplainableModule(module, module.graph, body.get("_graphmodule_cls_name", type(module).__name__))
    for name in SOURCE_ATTRIBUTES:
        setattr(result, name, body.get(name))
    return result
