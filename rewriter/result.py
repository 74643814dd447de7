"""The type of a rewritten model."""

from __future__ import annotations

import torch.fx as fx


class ExplainableModule(fx.GraphModule):
    """A ``torch.fx.GraphModule`` whose pickles import shaprewrite when they are loaded.

    Loading a saved model then registers the explainer rules it relies on
    (``rewriter.explainers``) in the loading process, before any explainer sees it.
    """

    def __reduce__(self):
        rebuild, args = super().__reduce__()
        return _restore, (rebuild, args)


def _restore(rebuild, args) -> ExplainableModule:
    module = rebuild(*args)
    return ExplainableModule(module, module.graph, type(module).__name__)
