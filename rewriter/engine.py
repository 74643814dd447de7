"""The exact engine: DeepLIFT / DeepSHAP attributions for every row, reference and output at once.

``shap.DeepExplainer`` explains one row at a time, and for each output runs a forward and a
backward pass over the row paired with every background row, both halves of the batch
(rows, references) all the way. Its rules make a backward pass the same linear map for every
output, and the same for both halves, so the engine:

1. runs the rows once (``n`` of them, no gradient), keeping each nonlinear leaf module's
   input and output;
2. runs every (row, reference) pair's *reference* once (``n × B`` rows), each nonlinear leaf
   applying shap's rule for it against the row's values kept in step 1, and handing the
   backward pass a surrogate whose value is the leaf's output and whose gradient is the
   rule's multipliers: ``y + m * (x - x)`` for an elementwise module (shap's
   ``nonlinear_1d``) or a max pool over windows that tile its input (shap's ``maxpool``),
   computed once per pair; a function calling the module's own rule (the project's
   :class:`~rewriter.modules.ExactRule` modules) or shap's handler for anything else;
3. runs one backward pass per output asked for through that one graph;
4. takes the multipliers reaching each reference times ``x - reference``, averaged over a
   row's references: what shap computes from its reference half, so the numbers are shap's.

Context inputs (an attention mask) go with each pair unchanged in both steps; references may
be shared (a background) or each row's own (a reference token). Pairs go through in chunks
that keep the activations held for the backward pass under ``memory_budget`` bytes,
estimated from one run of the module on one row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .check import drop_shap_leftovers

DEFAULT_MEMORY_BUDGET = 1 << 31  # 2 GiB of activations in flight
# Autograd keeps most intermediate values for the backward pass, the surrogates their
# multipliers, and the batched backward a gradient per output being computed.
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
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
            from .errors import InputError

            raise InputError(f"memory_budget must be a positive number of bytes, not {memory_budget!r}",
                             fix="pass bytes, e.g. 2**31 for 2 GiB")
        self.view, self.module = view, module
        self.memory_budget = memory_budget
        self._pair_bytes: int | None = None

    def _pairs_per_chunk(self, xs: Sequence[torch.Tensor], context: Sequence[torch.Tensor]) -> int:
        if self._pair_bytes is None:
            row = [x[:1] for x in (*xs, *context)]
            self._pair_bytes = _HELD_PER_VALUE * activation_bytes(self.module, row)
        return max(1, self.memory_budget // self._pair_bytes)

    def attribute(self, xs: Sequence[torch.Tensor], context: Sequence[torch.Tensor],
                  references: Sequence[torch.Tensor], per_row: bool,
                  selected: torch.Tensor | None = None) -> list[np.ndarray]:
        """Attributions (one array per explained input, ``x.shape + (k,)``, in its dtype) of each row
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
        rules = {leaf: _rule_of(leaf, deep_pytorch) for leaf in _leaves(self.view)}
        rules = {leaf: rule for leaf, rule in rules.items() if rule is not None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # shap warns per unknown module; the report names them
            for start in range(0, rows, rows_per_chunk):
                chunk = slice(start, min(start + rows_per_chunk, rows))
                kept = self._run_rows([x[chunk] for x in xs], [c[chunk] for c in context], rules)
                for first in range(0, count, refs_per_chunk):
                    which = slice(first, min(first + refs_per_chunk, count))
                    refs = [r[chunk, which] for r in references] if per_row else [r[which] for r in references]
                    self._accumulate(sums, chunk, [x[chunk] for x in xs], [c[chunk] for c in context], refs,
                                     per_row, selected[chunk], rules, kept)
        drop_shap_leftovers(self.view)
        return [(total / count).to(x.dtype).numpy() for total, x in zip(sums, xs)]

    def _run_rows(self, xs, context, rules) -> dict[nn.Module, list]:
        """Step 1: each ruled leaf's input and output on the rows, in call order."""
        kept: dict[nn.Module, list] = {leaf: [] for leaf in rules}

        def keep(module, inputs, output):
            kept[module].append((inputs[0].detach(), output.detach()))

        handles = [leaf.register_forward_hook(keep) for leaf in rules]
        try:
            with torch.no_grad():
                self.view(*xs, *context)
        finally:
            for handle in handles:
                handle.remove()
        return kept

    def _accumulate(self, sums, chunk: slice, xs, context, references, per_row: bool, selected, rules,
                    kept) -> None:
        """Steps 2 to 4 for the pairs of the rows ``chunk`` and these references."""
        rows = len(xs[0])
        count = references[0].shape[1] if per_row else len(references[0])
        pairs = rows * count
        refs = [(r.reshape(pairs, *r.shape[2:]) if per_row else r.repeat(rows, *([1] * (r.dim() - 1))))
                .detach().requires_grad_() for r in references]
        calls = {leaf: iter(values) for leaf, values in kept.items()}

        def against_row(module, inputs, output):
            x_row, y_row = next(calls[module])
            return rules[module](module, inputs[0], output, _per_pair(x_row, rows, count), _per_pair(y_row, rows, count))

        handles = [leaf.register_forward_hook(against_row) for leaf in rules]
        try:
            outputs = self.view(*refs, *(c.repeat_interleave(count, 0) for c in context))
        finally:
            for handle in handles:
                handle.remove()
        k = selected.shape[1]
        columns = selected.repeat_interleave(count, 0).to(outputs.device)
        # One backward pass per output, through the graph kept: on this CPU a loop runs convolutions'
        # backward faster than the batched (vmap) pass over all outputs at once (ResNet-18 at
        # 64x64, 10 outputs: 3.4 s against 4.4 s; an LSTM 0.14 against 0.13).
        per_output = [torch.autograd.grad(outputs.gather(1, columns[:, j:j + 1]).sum(), refs, retain_graph=j < k - 1,
                                          allow_unused=True) for j in range(k)]
        grads = [None if per_output[0][i] is None else torch.stack([g[i] for g in per_output]) for i in range(len(refs))]
        for total, grad, x, r in zip(sums, grads, xs, refs):
            if grad is None:
                continue
            contribution = grad * (x.repeat_interleave(count, 0) - r.detach())  # [k, pairs, ...]
            per_row_sum = contribution.reshape(k, rows, count, *x.shape[1:]).sum(2, dtype=torch.float64)
            total[chunk] += per_row_sum.movedim(0, -1).cpu()


def _per_pair(value: torch.Tensor, rows: int, count: int) -> torch.Tensor:
    """A leaf's values on the rows, repeated for each of a row's ``count`` pairs. A leaf may
    see several batch rows per row (windows of an image): each row's block repeats whole."""
    blocks = value.reshape(rows, -1, *value.shape[1:])
    return blocks.repeat_interleave(count, 0).reshape(-1, *value.shape[1:])


# -- the rules, each applied to a reference ``x`` (output ``y``) against its row's ``x_row``, ``y_row``


def _rule_of(leaf: nn.Module, deep_pytorch):
    """How ``leaf`` applies shap's rule for it, or None where it needs nothing (linear layers)."""
    from .modules import ExactRule
    from .ops.exact_max_pool import ExactMaxPool
    from .ops.shapley import ShapleyProduct
    from .registration import rescale_modules

    handler = deep_pytorch.op_handler.get(type(leaf).__name__)
    kind = getattr(handler, "__name__", None)
    if kind in ("passthrough", "linear_1d"):
        return None
    if kind == "nonlinear_1d" and isinstance(leaf, rescale_modules()):
        return _rescaled
    if kind == "maxpool" and _separate_windows(leaf):
        return _max_pooled
    if isinstance(leaf, ExactMaxPool):
        return _overlapping_max_pooled
    if isinstance(leaf, ShapleyProduct):
        return _shapley_product
    if isinstance(leaf, ExactRule):
        return _exact_rule
    return _shap_handler  # shap's own rule for it, or the gradient where shap has none


def _surrogate(x: torch.Tensor, y: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """``y`` as a value, ``multipliers`` (per element of ``x``) as its gradient."""
    return y.detach() + multipliers * (x - x.detach())


def _rescaled(module, x, y, x_row, y_row) -> torch.Tensor:
    """shap's rescale rule (``nonlinear_1d``): ``Δy/Δx``, the reference's own derivative where
    ``|Δx| < 1e-6``; 0 there where that derivative is infinite (see ``rewriter.registration``)."""
    delta = x_row - x.detach()
    with torch.enable_grad():
        point = x.detach().requires_grad_()
        (derivative,) = torch.autograd.grad(module.forward(point).sum(), point)  # forward: not the hook again
    unchanged = delta.abs() < 1e-6
    multipliers = torch.where(unchanged, derivative, (y_row - y.detach()) / delta)
    multipliers = torch.where(unchanged & ~torch.isfinite(multipliers), 0.0, multipliers)
    return _surrogate(x, y, multipliers)


_POOL = {1: torch.nn.functional.max_pool1d, 2: torch.nn.functional.max_pool2d, 3: torch.nn.functional.max_pool3d}
_WINDOW_MEAN = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d,
                3: torch.nn.functional.avg_pool3d}


def _as_tuple(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _separate_windows(pool: nn.Module) -> bool:
    """A max pool whose windows tile its input (shap's max rule is exact there)."""
    if not isinstance(pool, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return False
    n = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(pool)]
    return (_as_tuple(pool.kernel_size, n) == _as_tuple(pool.stride, n) and not pool.ceil_mode
            and all(p == 0 for p in _as_tuple(pool.padding, n)) and all(d == 1 for d in _as_tuple(pool.dilation, n)))


def _max_pooled(module, x, y, x_row, y_row) -> torch.Tensor:
    """shap's max rule (``maxpool``) over windows that tile the input: each window's change
    goes to the row's arg max (up to the larger of the two maxima) and the reference's (the
    rest), divided by those positions' own change."""
    n = x.dim() - 2
    kernel = _as_tuple(module.kernel_size, n)
    x_ref, y_ref = x.detach(), y.detach()
    larger = torch.maximum(y_row, y_ref)

    def at_arg_max(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        _, where = _POOL[n](rows, kernel, kernel, 0, 1, False, True)
        return torch.zeros_like(rows).flatten(2).scatter(2, where.flatten(2), values.flatten(2)).reshape(rows.shape)

    delta = x_row - x_ref
    routed = at_arg_max(larger - y_ref, x_row) + at_arg_max(y_row - larger, x_ref)
    multipliers = torch.where(delta.abs() < 1e-7, 0.0, routed / torch.where(delta == 0, 1.0, delta))
    window_sum = _WINDOW_MEAN[n](multipliers * (x - x.detach()), kernel, kernel) * float(math.prod(kernel))
    return y_ref + window_sum


def _overlapping_max_pooled(module, x, y, x_row, y_row) -> torch.Tensor:
    """``ExactMaxPool``'s rule as a surrogate: each window's change, split between the row's
    arg max (up to the larger maximum) and the reference's, each divided by that position's
    own change (0 where it barely changed): one gather per window instead of a scatter per
    output in the backward pass."""
    x_ref = x.detach()
    pool = (module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, True)
    top_row, where_row = module._pool(x_row, *pool)
    top_ref, where_ref = module._pool(x_ref, *pool)
    larger = torch.maximum(top_row, top_ref)
    delta = (x_row - x_ref).flatten(2)

    def share(part: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        change = delta.gather(2, where.flatten(2))
        usable = torch.isfinite(change) & (change.abs() >= 1e-7)
        coefficient = torch.where(usable, part.flatten(2) / torch.where(usable, change, 1.0), 0.0)
        return coefficient * (x - x_ref).flatten(2).gather(2, where.flatten(2))

    linear = share(larger - top_ref, where_row) + share(top_row - larger, where_ref)
    return y.detach() + linear.reshape(y.shape)


def _shapley_product(module, x, y, x_row, y_row) -> torch.Tensor:
    """The Shapley rule of a product ``f(a, b)`` as a surrogate: ``f(Δa, b̄) + f(ā, Δb)``, its
    gradients those of ``f`` at the pair's means (``ā``, ``b̄``)."""
    a_row, b_row = module.unpack(x_row)
    a_ref, b_ref = module.unpack(x.detach())
    a, b = module.unpack(x)
    a_mean, b_mean = (a_row + a_ref) / 2, (b_row + b_ref) / 2
    return y.detach() + module.combine(a - a.detach(), b_mean) + module.combine(a_mean, b - b.detach())


class _Rule(torch.autograd.Function):
    """The value ``y``; as gradient, ``rule(g)`` (a linear map of the output's gradient ``g``
    that may mix elements: products, normalisation, softmax, recurrent steps)."""

    generate_vmap_rule = True  # the batched backward over outputs runs it under vmap

    @staticmethod
    def forward(x, y, rule):
        return y.detach().clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.rule = inputs[2]

    @staticmethod
    def backward(ctx, grad):
        return ctx.rule(grad), None, None


def _exact_rule(module, x, y, x_row, y_row) -> torch.Tensor:
    """A project module's own rule, given ``[rows; references]`` as the explainers pair them;
    the reference half is what reaches the reference."""
    both = torch.cat([x_row, x.detach()])
    half = len(x_row)
    return _Rule.apply(x, y, lambda grad: module.deeplift_multipliers(both, torch.cat([grad, grad]))[half:])


def _shap_handler(module, x, y, x_row, y_row) -> torch.Tensor:
    """shap's handler for the module (with ``module.x``, ``module.y`` as shap's forward hook
    saves them), or, where shap has none, the gradient at the reference, as shap passes it."""
    import shap.explainers._deep.deep_pytorch as deep_pytorch

    both_x, both_y, half = torch.cat([x_row, x.detach()]), torch.cat([y_row, y.detach()]), len(x_row)
    handler = deep_pytorch.op_handler.get(type(module).__name__)

    def rule(grad: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            point = both_x.clone().requires_grad_()
            (gradient,) = torch.autograd.grad(module.forward(point), point, torch.cat([grad, grad]))
        if handler is None:
            return gradient[half:]
        module.x, module.y = nn.Parameter(both_x), nn.Parameter(both_y)
        return handler(module, (gradient,), (torch.cat([grad, grad]),))[0][half:]

    return _Rule.apply(x, y, rule)


def ranked(outputs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Each row's ``top_k`` largest outputs, largest first (shap's ``ranked_outputs``)."""
    return torch.argsort(outputs, dim=1, descending=True)[:, :top_k]
