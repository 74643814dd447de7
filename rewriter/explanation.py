"""The step after the rewrite: explain a dataset against a background, on one machine or on Ray.

Rows are explained in batches of ``batch_size`` by one :class:`BatchExplainer` per process
(the model, its explainer and the background's outputs, built once). Every batch is checked
for additivity: per row, ``max_k |Σ attributions_k - (f(x)_k - E[f(background)]_k)|`` divided
by ``max_k |f(x)_k - E[f(background)]_k|`` (floored at 1e-3 of how far the background's own
outputs spread, so a row whose output equals the background mean is not divided by zero).
The result does not depend on the engine or the number of workers: the batches are the same,
and they are put back in order.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from .check import OutputView, additivity_errors, drop_shap_leftovers, explainer_inputs
from .concurrency import GATE
from .engine import DEFAULT_MEMORY_BUDGET, ExactEngine, ranked
from .errors import AdditivityError, EngineError, InputError, describe
from .result import ExplainableModule

Array = np.ndarray | torch.Tensor
Inputs = Array | Sequence[Array] | Mapping[str, Array]
Explainer = Literal["exact", "shap", "captum"]
Engine = Literal["local", "ray"]
EXPLAINERS = ("exact", "shap", "captum")
ENGINES = ("local", "ray")


@dataclass
class Explanation:
    """What :func:`run_explanation` did: the attributions, and how well and how fast."""

    attributions: list[np.ndarray]  # one per explained input (see ``names``): rows' shape + (n_outputs,)
    worst_error: float  # the worst row's relative additivity error
    seconds: float
    rows: int
    names: list[str] = field(default_factory=list)  # the source input each array attributes to
    notes: list[str] = field(default_factory=list)  # conversions made on the way, in words
    outputs: np.ndarray | None = None  # [rows, k]: the outputs each row's last axis explains

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


def explain(model: ExplainableModule | str | os.PathLike, inputs: Inputs, background: Inputs | None = None, *,
            reference: int | None = None, keep_tokens: Sequence[int] = (), explainer: Explainer = "exact",
            outputs: Sequence[int] | None = None, top_k: int | None = None, batch_size: int = 64,
            engine: Engine = "local", device: str = "cpu", progress: bool = True, threshold: float = 1e-4,
            address: str | None = None, workers: int | None = None, output: int | None = None,
            memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray | list[np.ndarray]:
    """Attributions of every row of ``inputs`` against references, checked to add up.

    ``model`` is a rewritten module or the path of an artifact ``rewriter.save`` (or the
    ``shaprewrite`` CLI) wrote. ``inputs`` holds the source model's inputs: an array or a
    tensor, a tuple of them (in the order of ``module.interface["source_inputs"]``), or a dict
    of them by name (token ids, an attention mask...).

    References, for each row: the rows of ``background`` (the same forms as ``inputs``),
    DeepSHAP's way; or, with ``reference=TOKEN_ID``, the row itself with every token id not
    in ``keep_tokens`` replaced by that token (a pad or mask id), Captum's way. Context inputs
    (an attention mask) are the row's own in all of its references, so a padded position
    gets no attribution.

    Returns float32 attributions for each explained input (float64 when a row needed the
    float64 retry described in :class:`BatchExplainer`), shaped like its rows plus one
    axis for the outputs: per token (summed over the embedding) for token ids, per element
    for float inputs. A list when there are several. For each row they add up to
    ``f(x) - mean f(references)``; a row whose relative additivity error exceeds
    ``threshold`` raises :class:`AdditivityError` naming the rows.

    ``explainer``: ``"exact"`` (the default: the project's own engine, every row, reference
    and output in one forward and one backward pass, shap's numbers; see
    :mod:`rewriter.engine`), ``"shap"`` (``shap.DeepExplainer``) or ``"captum"``
    (``DeepLiftShap``). ``outputs`` (indices) or ``top_k`` (each row's largest outputs,
    like shap's ``ranked_outputs``) narrow the outputs explained; :func:`run_explanation`
    says which per row. ``memory_budget`` (bytes, default 2 GiB) bounds the activations the
    exact engine holds at once. ``engine``: ``"local"``, or ``"ray"`` to spread the batches
    over the Ray cluster at ``address`` (a local one when ``None``; ``workers`` defaults to
    its CPU count). ``output`` picks one output of a module that returns several.
    """
    result = run_explanation(model, inputs, background, reference=reference, keep_tokens=keep_tokens,
                             explainer=explainer, outputs=outputs, top_k=top_k, batch_size=batch_size,
                             engine=engine, device=device, progress=progress, threshold=threshold, address=address,
                             workers=workers, output=output, memory_budget=memory_budget)
    return result.attributions if len(result.attributions) > 1 else result.attributions[0]


def run_explanation(model: ExplainableModule | str | os.PathLike, inputs: Inputs, background: Inputs | None = None,
                    *, reference: int | None = None, keep_tokens: Sequence[int] = (),
                    explainer: Explainer = "exact", outputs: Sequence[int] | None = None, top_k: int | None = None,
                    batch_size: int = 64, engine: Engine = "local", device: str = "cpu", progress: bool = True,
                    threshold: float | None = 1e-4, address: str | None = None, workers: int | None = None,
                    output: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Explanation:
    """:func:`explain`, returning the attributions with the worst error, the outputs explained
    per row, the time taken and the notes."""
    from .artifact import load

    _check_options(explainer, engine, batch_size, threshold, background, reference)
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    elif not isinstance(model, ExplainableModule):
        raise InputError(f"explain takes a rewritten model, not a {type(model).__name__}",
                         fix="rewrite it first: rewriter.rewrite(model, example_inputs)")
    plan = _Plan(model)
    notes: list[str] = []
    rows = plan.arrays("inputs", inputs, notes)
    refs = plan.arrays("background", background, notes) if background is not None else None
    if refs is not None:
        _check_alike(plan.names, rows, refs)
    with GATE.run(), torch.no_grad():
        xs, context = plan.module_inputs(rows)
        if refs is not None:
            shared, per_row = plan.module_inputs(refs)[0], None
        else:
            shared, per_row = None, plan.module_inputs(plan.token_references(rows, reference, keep_tokens))[0]
    _check_model_runs(model, xs, context, shared if shared is not None else per_row, output, device)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be a whole number of 1 or more, not {top_k!r}", fix="pass e.g. top_k=3")
    settings = {"explainer": explainer, "device": device, "output": output, "outputs": outputs, "top_k": top_k,
                "memory_budget": memory_budget, "threshold": threshold}
    starts = range(0, len(xs[0]), batch_size)
    batches = [_Batch(tuple(x[s:s + batch_size] for x in xs), tuple(c[s:s + batch_size] for c in context),
                      None if per_row is None else tuple(r[s:s + batch_size] for r in per_row)) for s in starts]
    started = time.perf_counter()
    if engine == "local":
        worker = BatchExplainer(model, shared, **settings)
        results = (worker(batch) for batch in batches)
    else:
        results = _on_ray(model, shared, settings, batches, address, workers)
    values, errors, explained, wide = [], [], [], []
    with _progress(len(xs[0]), progress) as bar, contextlib.closing(results):
        for start, (batch_values, batch_errors, batch_outputs, batch_wide) in zip(starts, results):
            if threshold is not None:  # None: measure only (the self-check)
                _check_additivity(batch_errors, start, threshold)
            values.append(batch_values)
            errors.append(batch_errors)
            explained.append(batch_outputs)
            wide.append(batch_wide)
            bar.update(len(batch_errors))
    attributions = [plan.per_source(i, np.concatenate([v[i] for v in values])) for i in range(len(xs))]
    notes.extend(plan.approximate_note(explainer))
    redone = np.flatnonzero(np.concatenate(wide))
    if redone.size:
        notes.append(f"row(s) {_listed(redone)} explained in float64: in float32 the model's rounding left their "
                     f"attributions further than {threshold:g} from adding up")
    return Explanation(attributions, float(np.concatenate(errors).max()), time.perf_counter() - started, len(xs[0]),
                       plan.explained_names(), notes, np.concatenate(explained))


def _check_options(explainer: str, engine: str, batch_size: int, threshold: float, background, reference) -> None:
    if explainer not in EXPLAINERS:
        raise InputError(f"unknown explainer '{explainer}'", fix=f"use one of {', '.join(EXPLAINERS)}")
    if engine not in ENGINES:
        raise InputError(f"unknown engine '{engine}'", fix=f"use one of {', '.join(ENGINES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a whole number of 1 or more, not {batch_size!r}",
                         fix="pass a batch size of 1 or more")
    if threshold is not None and (not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
                                  or threshold < 0):
        raise InputError(f"threshold must be a finite number >= 0, not {threshold!r}",
                         fix="pass the largest relative additivity error to accept, e.g. 1e-4")
    if (background is None) == (reference is None):
        raise InputError("give either a background or a reference token, not both" if background is not None
                         else "no references: give a background (rows) or a reference token id",
                         fix="explain(model, rows, background) or explain(model, ids, reference=PAD_ID)")
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, int) or reference < 0):
        raise InputError(f"reference must be a token id (an int >= 0), not {reference!r}", fix="pass the pad or mask id")


class _Plan:
    """How the rows given to :func:`explain` become the module's inputs, and its attributions
    the rows' (see ``ExplainableModule.interface``)."""

    def __init__(self, module: ExplainableModule) -> None:
        self.module = module
        interface = module.interface or {}
        placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
        self.entries = interface.get("inputs") or [
            {"name": n.target, "role": "explained" if _float_meta(n) else "context", "source": i}
            for i, n in enumerate(placeholders)]
        self.names = interface.get("source_inputs") or [e["name"] for e in self.entries]
        self.explained = [e for e in self.entries if e["role"] == "explained"]
        # Whether each source input holds floats, from the placeholder that takes it: the
        # module's own, or the embedder's (token ids and what else it looks up).
        takes = {self.names[e["source"]]: n for e, n in zip(self.entries, placeholders) if "source" in e}
        embedder = module._modules.get("embedder")
        if embedder is not None:
            names = interface.get("embedder_inputs", [])
            takes.update(zip(names, [n for n in embedder.graph.nodes if n.op == "placeholder"]))
        self.floats = {name: _float_meta(node) for name, node in takes.items()}

    def arrays(self, what: str, value, notes: list[str]) -> list[np.ndarray]:
        """One array per source input, by position or by name, checked: the same number of
        rows, finite floats; half precision and float64 rows converted to float32."""
        if isinstance(value, Mapping) and len(value) == len(self.names) and not set(value) & set(self.names):
            value = list(value.values())  # arrays named otherwise (an .npz of arr_0, arr_1): in their order
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(self.names))
            missing = [n for n in self.names if n not in value]
            if unknown or missing:
                raise InputError(f"the {what} do not match the model's inputs {self.names}"
                                 f"{f': unknown {unknown}' if unknown else ''}"
                                 f"{f': missing {missing}' if missing else ''}", fix="name one array per input")
            arrays = [value[n] for n in self.names]
        else:
            arrays = list(value) if isinstance(value, (tuple, list)) else [value]
            if len(arrays) != len(self.names):
                raise InputError(f"{len(arrays)} {what} array(s) given; the model takes {len(self.names)}: "
                                 f"{self._described()}", fix="give one array per input, in that order or by name")
        out = [self._checked(what, name, a, notes) for name, a in zip(self.names, arrays)]
        if len({len(a) for a in out}) > 1:
            raise InputError(f"the {what} arrays have different numbers of rows: {[len(a) for a in out]}",
                             fix="give every input of a row the same row index")
        return out

    def _described(self) -> str:
        return ", ".join(self.names)

    def _checked(self, what: str, name: str, array, notes: list[str]) -> np.ndarray:
        label = f"{what} '{name}'" if len(self.names) > 1 else what
        if isinstance(array, torch.Tensor) and array.dtype == torch.bfloat16:  # numpy has no bfloat16
            notes.append(f"{label}: bfloat16 rows converted to float32 (the model computes in float32)")
            array = array.float()
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
        if array.ndim == 0 or len(array) == 0:
            raise InputError(f"{label} has no rows (shape {list(array.shape)})", fix="pass at least one row")
        wants_float = self.floats.get(name)
        if wants_float is None:  # an input the module does not read (unused, or fixed when rewritten)
            return array
        if array.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
            if len(bad):
                raise InputError(f"{label} holds NaN or Inf in row(s) {bad[:10].tolist()}"
                                 f"{' ...' if len(bad) > 10 else ''}", fix="drop or repair those rows first")
            if not wants_float:
                raise InputError(f"{label} holds {array.dtype} values; the model takes integers there (token ids, "
                                 "a mask)", fix="pass the integer arrays the model was rewritten with")
            if array.dtype != np.float32:
                notes.append(f"{label}: {array.dtype} rows converted to float32 (the model computes in float32)")
                array = array.astype(np.float32)
        elif array.dtype.kind in "iub":
            if wants_float:
                raise InputError(f"{label} holds {array.dtype} values; the explainers attribute to float inputs",
                                 fix="pass float arrays, or rewrite the model with its token ids so it embeds them")
        else:
            raise InputError(f"{label} holds {array.dtype} values, not numbers", fix="pass numeric arrays")
        return np.ascontiguousarray(array)

    def module_inputs(self, arrays: list[np.ndarray]) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """The module's explained and context inputs for ``arrays`` (looked up in chunks)."""
        tensors = [torch.from_numpy(a) for a in arrays]
        explained: list[list[np.ndarray]] = [[] for _ in self.explained]
        for start in range(0, len(arrays[0]), _EMBED_ROWS):
            try:
                values = self.module.embed(*(t[start:start + _EMBED_ROWS] for t in tensors))
            except (IndexError, RuntimeError) as exc:  # ids past the vocabulary, shapes the lookups refuse
                raise InputError(f"the model cannot take these rows: {describe(exc)}",
                                 fix="pass ids within the vocabulary and inputs of the shapes it was rewritten "
                                     "for") from exc
            for k, entry in enumerate(self.explained):
                explained[k].append(values[self.entries.index(entry)].numpy())
        context = tuple(arrays[e["source"]] for e in self.entries if e["role"] == "context")
        return tuple(np.concatenate(parts) for parts in explained), context

    def token_references(self, rows: list[np.ndarray], token: int, keep: Sequence[int]) -> list[np.ndarray]:
        """The rows with every id not in ``keep`` replaced by ``token``, in the inputs whose ids
        are embedded first in a sum (the word ids, not their token types)."""
        looked_up = {e["embeds"][0] for e in self.explained if e.get("embeds")}
        if not looked_up:
            raise InputError("reference=TOKEN was given, but the model embeds no token ids",
                             fix="give a background of rows instead")
        references = [a.copy() for a in rows]
        for name in looked_up:
            ids = references[self.names.index(name)]
            ids[~np.isin(ids, list(keep))] = token
        return references

    def per_source(self, k: int, values: np.ndarray) -> np.ndarray:
        """Explained input ``k``'s attributions as the rows' own: an embedding's summed over
        its last axis, so there is one number per token."""
        return values.sum(axis=-2) if self.explained[k].get("embeds") else values

    def approximate_note(self, explainer: str) -> list[str]:
        """A note naming the nodes the report calls approximate: the engine, like shap, passes
        the gradient through them, so their attributions are not exact."""
        from .report import approximate_nodes, classify

        nodes = approximate_nodes(classify(self.module))
        if not nodes:
            return []
        return [f"{len(nodes)} node(s) have no exact rule, so {explainer}'s attributions through them are the "
                f"gradient's, not exact: {', '.join(nodes[:5])}{' ...' if len(nodes) > 5 else ''}"]

    def explained_names(self) -> list[str]:
        return [e["embeds"][0] if e.get("embeds") else e["name"] for e in self.explained]


_EMBED_ROWS = 256


def _float_meta(node) -> bool:
    dtype = node.meta.get("dtype")
    return dtype is None or dtype.is_floating_point


@dataclass
class _Batch:
    """Rows to explain: the module's explained inputs, its context inputs, and each row's own
    references when there is no shared background."""

    xs: tuple[np.ndarray, ...]
    context: tuple[np.ndarray, ...]
    references: tuple[np.ndarray, ...] | None = None

    def rows(self, index: np.ndarray, dtype: np.dtype) -> _Batch:
        """The rows at ``index``, their float arrays as ``dtype``."""
        def take(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
            return tuple(_as_float(np.asarray(a)[index], dtype) for a in arrays)

        return _Batch(take(self.xs), take(self.context), None if self.references is None else take(self.references))


def _as_float(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return array.astype(dtype) if np.issubdtype(array.dtype, np.floating) else array


class BatchExplainer:
    """One model with its explainer and shared background (or none: each row then brings its
    references), ready to explain batch after batch.

    Call it with a :class:`_Batch`; it returns the attributions (one array per explained
    input, ``shape + (k,)``), each row's relative additivity error, the outputs explained
    per row (``[rows, k]``), and which rows were explained in float64: with a
    ``threshold``, a float32 model's rows that miss it are explained again by a float64 copy
    of the model and take that result (as float64) where it adds up better. Exact rules are
    exact in real numbers; a model whose output hangs on a tiny difference, such as a
    normalisation of a near-zero reference, needs more digits than float32 keeps. The
    exact engine takes every row, reference and output of a batch at once (see
    :mod:`rewriter.engine`); for shap and Captum, rows that share their context and
    references are explained together, the context bound to the module
    (``ExplainableModule.with_context``).
    """

    def __init__(self, model: ExplainableModule, background: Sequence[np.ndarray] | None, *,
                 explainer: Explainer = "exact", device: str = "cpu", output: int | None = None,
                 outputs: Sequence[int] | None = None, top_k: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, threshold: float | None = None) -> None:
        self.device = _device(device)
        self.settings = {"explainer": explainer, "device": device, "output": output, "outputs": outputs,
                         "top_k": top_k, "memory_budget": memory_budget}
        self.threshold = threshold
        self._wide: BatchExplainer | None = None
        self.model = model.to(self.device).eval()
        self.output = output
        self.explainer = explainer
        self.outputs, self.top_k = outputs, top_k
        self.background = None if background is None else tuple(torch.as_tensor(b, device=self.device)
                                                                 for b in background)
        self.exact = ExactEngine(OutputView(self.model, output), self.model, memory_budget) \
            if explainer == "exact" else None
        self._engines: dict = {}

    def __call__(self, batch: _Batch) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        values, errors, selected = self._attribute(batch)
        wide = np.zeros(len(errors), dtype=bool)
        missed = np.flatnonzero(errors > self.threshold) if self.threshold is not None else np.array([], int)
        if missed.size and np.asarray(batch.xs[0]).dtype == np.float32:
            try:
                again, again_errors, _ = self._in_float64()._attribute(batch.rows(missed, np.float64),
                                                                       torch.as_tensor(selected[missed]))
            except RuntimeError:  # an op of the graph that holds float32 (a cast): float32 stands
                return values, errors, selected, wide
            better = again_errors < errors[missed]
            if better.any():  # float32 would round the float64 values away again
                values = [v.astype(np.float64) for v in values]
            for mine, theirs in zip(values, again):
                mine[missed[better]] = theirs[better]
            errors[missed[better]] = again_errors[better]
            wide[missed[better]] = True
        return values, errors, selected, wide

    def _in_float64(self) -> BatchExplainer:
        if self._wide is None:
            background = None if self.background is None else [_as_float(b.cpu().numpy(), np.float64)
                                                                for b in self.background]
            self._wide = BatchExplainer(copy.deepcopy(self.model).double(), background, **self.settings)
        return self._wide

    def _attribute(self, batch: _Batch, selected: torch.Tensor | None = None
                   ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        xs = tuple(torch.as_tensor(x, device=self.device) for x in batch.xs)
        context = tuple(torch.as_tensor(c, device=self.device) for c in batch.context)
        per_row = None if batch.references is None else tuple(torch.as_tensor(r, device=self.device)
                                                              for r in batch.references)
        view = OutputView(self.model, self.output)
        with GATE.run(), torch.no_grad():
            outputs = view(*xs, *context)
            selected = self._selected(outputs) if selected is None else selected
            reference_outputs = self._reference_outputs(view, len(xs[0]), context, per_row)
        if self.exact is not None:
            references = self.background if per_row is None else tuple(r.unsqueeze(1) for r in per_row)
            with GATE.run():
                values = self.exact.attribute(xs, context, references, per_row is not None, selected)
        else:
            values = [v[np.arange(len(v))[:, None], ..., selected.cpu().numpy()].transpose(
                0, *range(2, v.ndim), 1) for v in self._by_explainer(xs, context, per_row)]
        values = [np.asarray(v, dtype=np.float64 if xs[0].dtype == torch.float64 else np.float32) for v in values]
        taken = selected.to(outputs.device)
        errors = additivity_errors(values, outputs.gather(1, taken).cpu().numpy(),
                                   reference_outputs.gather(2, taken.unsqueeze(1).expand(
                                       -1, reference_outputs.shape[1], -1)).cpu().numpy())
        return values, errors, selected.cpu().numpy()

    def _reference_outputs(self, view, rows: int, context, per_row) -> torch.Tensor:
        """Each row's references' outputs, ``[rows, n, k]``: under the row's own context."""
        if per_row is not None:
            return view(*per_row, *context).unsqueeze(1)
        count = len(self.background[0])
        if not context:
            return view(*self.background).unsqueeze(0).expand(rows, -1, -1)
        return torch.stack([view(*self.background, *(c[i:i + 1].expand(count, *c.shape[1:]) for c in context))
                            for i in range(rows)])

    def _selected(self, outputs: torch.Tensor) -> torch.Tensor:
        """The outputs explained for each row: the ones asked for, each row's ``top_k`` largest,
        or all."""
        rows, count = outputs.shape
        if self.top_k is not None:
            return ranked(outputs, min(self.top_k, count))
        if self.outputs is not None:
            bad = [k for k in self.outputs if not 0 <= k < count]
            if bad:
                raise InputError(f"outputs {bad} were asked for; the model has {count}", fix=f"use 0 to {count - 1}")
            return torch.tensor(list(self.outputs)).expand(rows, -1)
        return torch.arange(count).expand(rows, -1)

    def _by_explainer(self, xs, context, per_row) -> list[np.ndarray]:
        """Every output's attributions by shap or Captum, group by group."""
        values: list[list[np.ndarray]] = [[] for _ in xs]
        order = []
        for rows, ctx, refs in self._groups(xs, context, per_row):
            for k, v in enumerate(self._explain(tuple(x[rows] for x in xs), ctx, refs)):
                values[k].append(v)
            order.extend(rows)
        inverse = np.argsort(order)
        return [np.concatenate(v)[inverse] for v in values]

    def _groups(self, xs, context, per_row):
        """Rows explained together: those that share their context (and, with a background,
        its references); with references per row, each row alone."""
        count = len(xs[0])
        if per_row is not None:
            for i in range(count):
                yield [i], tuple(c[i:i + 1] for c in context), tuple(r[i:i + 1] for r in per_row)
            return
        if not context:
            yield list(range(count)), (), self.background
            return
        keys: dict[bytes, list[int]] = {}
        for i in range(count):
            keys.setdefault(b"".join(c[i].cpu().numpy().tobytes() for c in context), []).append(i)
        for rows in keys.values():
            yield rows, tuple(c[rows[0]:rows[0] + 1] for c in context), self.background

    def _explain(self, xs, context, references) -> list[np.ndarray]:
        module = self.model.with_context(*context) if context else self.model
        view = OutputView(module, self.output)
        with GATE.run(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._shap(view, xs, references) if self.explainer == "shap" else \
                self._captum(view, xs, references)

    def _shap(self, view: nn.Module, xs, references) -> list[np.ndarray]:
        import shap

        key = ("shap", id(references)) if view.model is self.model else None
        engine = self._engines.get(key) if key else None
        if engine is None:
            engine = shap.DeepExplainer(view, explainer_inputs(references))
            if key:
                self._engines[key] = engine
        values = engine.shap_values(explainer_inputs(xs), check_additivity=False)
        drop_shap_leftovers(view)
        return list(values) if len(xs) > 1 else [values]

    def _captum(self, view: nn.Module, xs, references) -> list[np.ndarray]:
        from captum.attr import DeepLift, DeepLiftShap

        # DeepLiftShap averages over two references or more; DeepLift takes one.
        engine = DeepLiftShap(view) if len(references[0]) > 1 else DeepLift(view)
        with torch.no_grad():
            n_outputs = view(*(x[:1] for x in xs)).shape[1]
        per_target = [engine.attribute(xs, baselines=references, target=k) for k in range(n_outputs)]
        return [np.stack([t[i].detach().cpu().numpy() for t in per_target], axis=-1) for i in range(len(xs))]


def _check_alike(names: list[str], rows: list[np.ndarray], background: list[np.ndarray]) -> None:
    for name, x, b in zip(names, rows, background):
        if x.shape[1:] != b.shape[1:] or x.dtype != b.dtype:
            raise InputError(f"input '{name}' has rows of shape {list(x.shape[1:])} ({x.dtype}) but its background "
                             f"{list(b.shape[1:])} ({b.dtype})", fix="draw the background from the same data as the inputs")


def _check_model_runs(model: ExplainableModule, xs, context, references, output: int | None, device: str) -> None:
    """Fail here, with the model's own words, rather than inside an explainer or a worker."""
    where = _device(device)
    model = model.to(where).eval()
    bound = model.with_context(*(torch.as_tensor(c[:1], device=where) for c in context)) if context else model
    view = OutputView(bound, output)
    with GATE.run(), torch.no_grad():
        for rows in (xs, references):
            view(*(torch.as_tensor(r[:1], device=where) for r in rows))


def _listed(rows: np.ndarray, most: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:most])
    return f"[{shown}{f', ... ({len(rows)} in all)' if len(rows) > most else ''}]"


def _check_additivity(errors: np.ndarray, start: int, threshold: float) -> None:
    bad = np.flatnonzero(errors > threshold)
    if len(bad):
        rows = [start + int(r) for r in bad]
        raise AdditivityError(
            f"attributions of row(s) {rows[:10]}{' ...' if len(rows) > 10 else ''} do not add up to the output "
            f"difference (worst relative error {errors.max():.3g}, threshold {threshold:g})",
            fix="check the rewrite report for nodes explained approximately, or raise the threshold", rows=rows)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device '{name}'", fix="use cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA device", fix="use --device cpu")
    return device


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc="explanation", disable=not enabled, file=sys.stderr)


# -- Ray ------------------------------------------------------------------------------------


class _RayWorker:
    """One process of the cluster: the model rebuilt from the safe artifact on its first batch
    (and again after Ray restarts it), then explained batch by batch."""

    def __init__(self, settings: dict) -> None:
        self.settings, self.explain = settings, None

    def run(self, shared: list, batch: _Batch) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        if self.explain is None:
            import ray

            from .artifact import load

            artifact, background = ray.get(shared)
            self.explain = BatchExplainer(load(artifact), background, **self.settings)
        return self.explain(batch)


def _on_ray(model: ExplainableModule, background: tuple[np.ndarray, ...] | None, settings: dict,
            batches: list[_Batch], address: str | None,
            workers: int | None) -> Iterator[tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as exc:
        raise InputError("engine 'ray' needs Ray, which is not installed",
                         fix="pip install 'shaprewrite[ray]'") from exc
    from .artifact import to_bytes

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="error", log_to_driver=False)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... for one cause
            raise EngineError(f"cannot start or reach the Ray cluster{f' at {address}' if address else ''}: "
                              f"{describe(exc, 200)}", fix="check the address (ray status shows it)") from exc
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(_RayWorker)
        # Model and background go with every batch, as references inside a list (fetched by the
        # worker once, not resolved per call): a restarted worker rebuilds from them, which
        # constructor arguments in the object store would not guarantee.
        shared = [ray.put(to_bytes(model)), ray.put(background)]
        pool = ActorPool([remote.remote(settings) for _ in range(min(count, len(batches)))])
        yield from pool.map(lambda actor, batch: actor.run.remote(shared, batch), batches)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, InputError):
            raise cause from None
        raise EngineError(f"a Ray worker failed after its retries: {describe(cause or exc, 300)}",
                          fix="see the worker's log (ray logs) for the cause") from exc
    finally:
        if started_here:
            ray.shutdown()
