"""The exact engine: DeepLIFT / DeepSHAP attributions for every row, reference and output at once.

``shap.DeepExplainer`` explains one row at a time, and for each output runs a forward and a
backward pass over the row paired with every background row. The rules do not depend on the
output: a backward pass through a network whose nonlinear modules apply DeepLIFT's
multipliers (their rules) is the same linear map for every output, so:

* the batch holds every pair at once: ``[x_1 (×B), ..., x_n (×B); refs, ..., refs]``, each
  row at ``i`` paired with the reference at ``i + half``, which is the layout every rule
  reads (shap's own, and the ones :mod:`rewriter.explainers` registers with it);
* one forward pass over that batch, with shap's hooks on every leaf module (its
  ``add_interim_values`` and ``deeplift_grad``: the very rules shap would apply, so the
  numbers are shap's);
* one backward pass for all outputs at once, batched over them
  (``torch.autograd.grad(..., is_grads_batched=True)``), each output's gradient selecting
  its column;
* an attribution is the reference half's multiplier times ``x - reference``, averaged over a
  row's references, as shap computes it.

Context inputs (an attention mask) go with each pair unchanged, in both halves; references
may be shared (a background) or each row's own (a reference token). Pairs go through in
chunks that keep the activations held for the backward pass under ``memory_budget`` bytes,
estimated from one run of the module on one row.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .check import drop_shap_leftovers

DEFAULT_MEMORY_BUDGET = 1 << 31  # 2 GiB of activations in flight
# Autograd keeps most intermediate values for the backward pass, the hooks a copy of each
# leaf's input and output, and the batched backward a gradient per output being computed.
_HELD_PER_VALUE = 3


def _leaves(module: nn.Module) -> list[nn.Module]:
    children = list(module.children())
    return [leaf for child in children for leaf in _leaves(child)] if children else [module]


def activation_bytes(module: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> int:
    """The bytes of every value ``module`` computes on ``inputs``, node by node."""
    total = 0

    class Counting(fx.Interpreter):
        def run_node(self, node):
            nonlocal total
            result = super().run_node(node)
            for value in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
            return result

    with torch.no_grad():
        Counting(module).run(*inputs)
    return max(total, 1)


class ExactEngine:
    """Attributions of a module's explained inputs for many rows at once (see the module notes).

    ``view`` takes the explained inputs then the context ones and returns ``[batch, k]``;
    ``module`` is the rewritten module inside it, whose values size the chunks.
    """

    def __init__(self, view: nn.Module, module: fx.GraphModule, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        if not isinstance(memory_budget, int) or memory_budget < 1:
            from .errors import InputError

            raise InputError(f"memory_budget must be a positive number of bytes, not {memory_budget!r}",
                             fix="pass bytes, e.g. 2**31 for 2 GiB")
        self.view, self.module = view, module
        self.memory_budget = memory_budget
        self._pair_bytes: int | None = None

    def _pairs_per_chunk(self, xs: Sequence[torch.Tensor], context: Sequence[torch.Tensor]) -> int:
        if self._pair_bytes is None:
            row = [x[:1] for x in (*xs, *context)]
            self._pair_bytes = 2 * _HELD_PER_VALUE * activation_bytes(self.module, row)
        return max(1, self.memory_budget // self._pair_bytes)

    def attribute(self, xs: Sequence[torch.Tensor], context: Sequence[torch.Tensor],
                  references: Sequence[torch.Tensor], per_row: bool,
                  selected: torch.Tensor | None = None) -> list[np.ndarray]:
        """Attributions (one float32 array per explained input, ``x.shape + (k,)``) of each row
        of ``xs`` against ``references``: shared (``[B, ...]``) or, ``per_row``, each row's own
        (``[n, B, ...]``). ``selected`` (``[n, k]`` output indices per row) picks the outputs;
        default all of them."""
        import shap.explainers._deep.deep_pytorch as deep_pytorch

        rows = len(xs[0])
        count = references[0].shape[1] if per_row else len(references[0])
        if selected is None:
            with torch.no_grad():
                outputs = self.view(*(x[:1] for x in xs), *(c[:1] for c in context)).shape[1]
            selected = torch.arange(outputs).expand(rows, outputs)
        sums = [torch.zeros((rows, *x.shape[1:], selected.shape[1]), dtype=torch.float64) for x in xs]
        per_chunk = self._pairs_per_chunk(xs, context)
        rows_per_chunk = max(1, per_chunk // count)
        refs_per_chunk = min(count, per_chunk)
        handles = [handle for leaf in _leaves(self.view) for handle in (
            leaf.register_forward_hook(deep_pytorch.add_interim_values),
            leaf.register_full_backward_hook(deep_pytorch.deeplift_grad))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # shap warns per unknown module; the report names them
                for start in range(0, rows, rows_per_chunk):
                    chunk = slice(start, min(start + rows_per_chunk, rows))
                    for first in range(0, count, refs_per_chunk):
                        which = slice(first, min(first + refs_per_chunk, count))
                        refs = [r[chunk, which] for r in references] if per_row else [r[which] for r in references]
                        self._accumulate(sums, chunk, [x[chunk] for x in xs], [c[chunk] for c in context], refs,
                                         per_row, selected[chunk])
        finally:
            for handle in handles:
                handle.remove()
            drop_shap_leftovers(self.view)
        return [(total / count).to(torch.float32).numpy() for total in sums]

    def _accumulate(self, sums, chunk: slice, xs, context, references, per_row: bool, selected) -> None:
        rows = len(xs[0])
        count = references[0].shape[1] if per_row else len(references[0])
        pairs = rows * count
        inputs = [x.repeat_interleave(count, 0) for x in xs]
        refs = [r.reshape(pairs, *r.shape[2:]) if per_row else r.repeat(rows, *([1] * (r.dim() - 1)))
                for r in references]
        joint = [torch.cat([i, r]).detach().requires_grad_() for i, r in zip(inputs, refs)]
        shared_context = [torch.cat([c.repeat_interleave(count, 0)] * 2) for c in context]
        outputs = self.view(*joint, *shared_context)
        k = selected.shape[1]
        columns = torch.cat([selected.repeat_interleave(count, 0)] * 2)  # [2 * pairs, k]
        one_hot = torch.zeros((k, *outputs.shape), dtype=outputs.dtype, device=outputs.device)
        one_hot.scatter_(2, columns.T.unsqueeze(-1).to(outputs.device), 1.0)
        grads = torch.autograd.grad(outputs, joint, one_hot, is_grads_batched=True, allow_unused=True)
        for total, grad, i, r in zip(sums, grads, inputs, refs):
            if grad is None:
                continue
            contribution = grad[:, pairs:] * (i - r).detach()  # [k, pairs, ...]
            per_row_sum = contribution.reshape(k, rows, count, *i.shape[1:]).sum(2, dtype=torch.float64)
            total[chunk] += per_row_sum.movedim(0, -1).cpu()


def ranked(outputs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Each row's ``top_k`` largest outputs, largest first (shap's ``ranked_outputs``)."""
    return torch.argsort(outputs, dim=1, descending=True)[:, :top_k]
