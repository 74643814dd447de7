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
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from .check import OutputView, drop_shap_leftovers
from .concurrency import GATE
from .errors import AdditivityError, EngineError, InputError, describe
from .result import ExplainableModule

Array = np.ndarray | torch.Tensor
Explainer = Literal["shap", "captum"]
Engine = Literal["local", "ray"]
EXPLAINERS = ("shap", "captum")
ENGINES = ("local", "ray")


@dataclass
class Explanation:
    """What :func:`run_explanation` did: the attributions, and how well and how fast."""

    attributions: list[np.ndarray]  # one per model input: inputs[i].shape + (n_outputs,), float32
    worst_error: float  # the worst row's relative additivity error
    seconds: float
    rows: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


def explain(model: ExplainableModule | str | os.PathLike, inputs: Array | Sequence[Array],
            background: Array | Sequence[Array], *, explainer: Explainer = "shap", batch_size: int = 64,
            engine: Engine = "local", device: str = "cpu", progress: bool = True, threshold: float = 1e-4,
            address: str | None = None, workers: int | None = None,
            output: int | None = None) -> np.ndarray | list[np.ndarray]:
    """Attributions of every row of ``inputs`` against ``background``, checked to add up.

    ``model`` is a rewritten module or the path of an artifact ``rewriter.save`` (or the
    ``shaprewrite`` CLI) wrote. ``inputs`` and ``background`` are arrays or tensors, or a tuple
    of them for a model with several inputs, with the same shape after the row axis. Returns
    float32 attributions shaped ``inputs.shape + (n_outputs,)`` (a list, one per input, for a
    model with several inputs): for each row they add up to ``f(x) - E[f(background)]``.

    ``explainer``: ``"shap"`` (``shap.DeepExplainer``) or ``"captum"`` (``DeepLiftShap`` with the
    background as baselines). ``engine``: ``"local"``, or ``"ray"`` to spread the batches over
    the Ray cluster at ``address`` (a local one when ``None``; ``workers`` defaults to its CPU
    count). ``output`` picks one output of a model that returns several. A row whose relative
    additivity error exceeds ``threshold`` raises :class:`AdditivityError` naming the rows.
    """
    result = run_explanation(model, inputs, background, explainer=explainer, batch_size=batch_size,
                             engine=engine, device=device, progress=progress, threshold=threshold,
                             address=address, workers=workers, output=output)
    return result.attributions if len(result.attributions) > 1 else result.attributions[0]


def run_explanation(model: ExplainableModule | str | os.PathLike, inputs: Array | Sequence[Array],
                    background: Array | Sequence[Array], *, explainer: Explainer = "shap", batch_size: int = 64,
                    engine: Engine = "local", device: str = "cpu", progress: bool = True,
                    threshold: float = 1e-4, address: str | None = None, workers: int | None = None,
                    output: int | None = None) -> Explanation:
    """:func:`explain`, returning the attributions with the worst error and the time taken."""
    from .artifact import load

    if explainer not in EXPLAINERS:
        raise InputError(f"unknown explainer '{explainer}'", fix=f"use one of {', '.join(EXPLAINERS)}")
    if engine not in ENGINES:
        raise InputError(f"unknown engine '{engine}'", fix=f"use one of {', '.join(ENGINES)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, not {batch_size}", fix="pass a batch size of 1 or more")
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    elif not isinstance(model, ExplainableModule):
        raise InputError(f"explain takes a rewritten model, not a {type(model).__name__}",
                         fix="rewrite it first: rewriter.rewrite(model, example_inputs)")
    xs, bg = _rows("inputs", inputs), _rows("background", background)
    _check_alike(xs, bg)
    _check_model_runs(model, xs, bg, output, device)
    settings = {"explainer": explainer, "device": device, "output": output}
    starts = range(0, len(xs[0]), batch_size)
    batches = [tuple(x[s:s + batch_size] for x in xs) for s in starts]
    started = time.perf_counter()
    if engine == "local":
        worker = BatchExplainer(model, bg, **settings)
        results = (worker(batch) for batch in batches)
    else:
        results = _on_ray(model, bg, settings, batches, address, workers)
    values, errors = [], []
    with _progress(len(xs[0]), progress) as bar, contextlib.closing(results):
        for start, (batch_values, batch_errors) in zip(starts, results):
            _check_additivity(batch_errors, start, threshold)
            values.append(batch_values)
            errors.append(batch_errors)
            bar.update(len(batch_errors))
    attributions = [np.concatenate([v[i] for v in values]) for i in range(len(xs))]
    return Explanation(attributions, float(np.concatenate(errors).max()), time.perf_counter() - started, len(xs[0]))


class BatchExplainer:
    """One model with its explainer and background, ready to explain batch after batch.

    Call it with a tuple of arrays (one per model input); it returns the attributions (one
    float32 array per input, ``shape + (n_outputs,)``) and each row's relative additivity error.
    """

    def __init__(self, model: nn.Module, background: Sequence[np.ndarray], *, explainer: Explainer = "shap",
                 device: str = "cpu", output: int | None = None) -> None:
        self.device = _device(device)
        self.view = OutputView(model.to(self.device).eval(), output)
        self.background = tuple(torch.as_tensor(b, device=self.device) for b in background)
        self.explainer = explainer
        with GATE.run():
            with torch.no_grad():
                outputs = self.view(*self.background)
            self.reference = outputs.mean(0)
            self.floor = max(1e-3 * (outputs - self.reference).abs().max().item(), 1e-12)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if explainer == "shap":
                    import shap

                    self.engine = shap.DeepExplainer(self.view, _unwrap(self.background))
                else:
                    from captum.attr import DeepLiftShap

                    self.engine = DeepLiftShap(self.view)

    def __call__(self, batch: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        xs = tuple(torch.as_tensor(x, device=self.device) for x in batch)
        with GATE.run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = self._shap(xs) if self.explainer == "shap" else self._captum(xs)
            with torch.no_grad():
                delta = (self.view(*xs) - self.reference).cpu().numpy()
        totals = sum(v.reshape(v.shape[0], -1, v.shape[-1]).sum(axis=1, dtype=np.float64) for v in values)
        scale = np.maximum(np.abs(delta).max(axis=1), self.floor)
        return values, np.abs(totals - delta).max(axis=1) / scale

    def _shap(self, xs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        values = self.engine.shap_values(_unwrap(xs), check_additivity=False)
        drop_shap_leftovers(self.view)
        return [np.asarray(v, dtype=np.float32) for v in (values if len(xs) > 1 else [values])]

    def _captum(self, xs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            n_outputs = self.view(*(x[:1] for x in xs)).shape[1]
        per_target = [self.engine.attribute(xs, baselines=self.background, target=k) for k in range(n_outputs)]
        return [np.stack([t[i].detach().cpu().numpy() for t in per_target], axis=-1).astype(np.float32)
                for i in range(len(xs))]


def _rows(what: str, value: Array | Sequence[Array]) -> tuple[np.ndarray, ...]:
    """Float arrays, one per model input, that share their number of rows."""
    arrays = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    out = []
    for i, array in enumerate(arrays):
        array = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        name = f"{what}[{i}]" if len(arrays) > 1 else what
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"{name} holds {array.dtype} values; the explainers attribute to float inputs",
                             fix="pass float arrays (for token ids, explain from the embedding output)")
        if array.ndim == 0 or len(array) == 0:
            raise InputError(f"{name} has no rows (shape {list(array.shape)})", fix="pass at least one row")
        out.append(np.ascontiguousarray(array, dtype=np.float32 if array.dtype == np.float64 else array.dtype))
    if len({len(a) for a in out}) > 1:
        raise InputError(f"the {what} arrays have different numbers of rows: {[len(a) for a in out]}",
                         fix="give every input of a row the same row index")
    return tuple(out)


def _check_alike(xs: tuple[np.ndarray, ...], bg: tuple[np.ndarray, ...]) -> None:
    if len(xs) != len(bg):
        raise InputError(f"{len(xs)} input array(s) but {len(bg)} background array(s)",
                         fix="pass one background array per model input")
    for i, (x, b) in enumerate(zip(xs, bg)):
        if x.shape[1:] != b.shape[1:] or x.dtype != b.dtype:
            raise InputError(f"input {i} has rows of shape {list(x.shape[1:])} ({x.dtype}) but its background "
                             f"{list(b.shape[1:])} ({b.dtype})", fix="draw the background from the same data as the inputs")


def _check_model_runs(model: nn.Module, xs: tuple[np.ndarray, ...], bg: tuple[np.ndarray, ...],
                      output: int | None, device: str) -> None:
    """Fail here, with the model's own words, rather than inside an explainer or a worker."""
    where = _device(device)
    view = OutputView(model.to(where).eval(), output)
    with GATE.run(), torch.no_grad():
        for rows in (xs, bg):
            view(*(torch.as_tensor(r[:1], device=where) for r in rows))


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


def _unwrap(xs: Sequence[torch.Tensor]):
    return list(xs) if len(xs) > 1 else xs[0]


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc="explaining", disable=not enabled, file=sys.stderr)


# -- Ray ------------------------------------------------------------------------------------


class _RayWorker:
    """One process of the cluster: the model rebuilt from the safe artifact on its first batch
    (and again after Ray restarts it), then explained batch by batch."""

    def __init__(self, settings: dict) -> None:
        self.settings, self.explain = settings, None

    def run(self, shared: list, batch: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        if self.explain is None:
            import ray

            from .artifact import load

            artifact, background = ray.get(shared)
            self.explain = BatchExplainer(load(artifact), background, **self.settings)
        return self.explain(batch)


def _on_ray(model: ExplainableModule, background: tuple[np.ndarray, ...], settings: dict,
            batches: list[tuple[np.ndarray, ...]], address: str | None,
            workers: int | None) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
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
