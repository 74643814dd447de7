"""Check that a rewritten model computes what its source computes.

Tolerances depend on the output dtype. An element passes when
``|result - reference| <= atol + rtol * |reference|`` (as ``torch.allclose``); the reported
``max_rel`` is the largest absolute difference divided by the largest reference magnitude,
which stays meaningful where single reference elements are near zero.

========  ========  ========
dtype     atol      rtol
========  ========  ========
float64   1e-7      1e-6
float32   1e-5      1e-4
float16   1e-3      1e-2
bfloat16  1e-2      5e-2
integer   0         0
========  ========  ========
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import onnx
import torch
import torch.fx as fx

from .concurrency import GATE
from .errors import BatchHeldError, InputError, ShapRewriteError, VerificationError, describe
from .onnxkit.facts import dims_of, runtime_inputs
from .onnxkit.weights import ort_session

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-6),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-3, 1e-2),
    torch.bfloat16: (1e-2, 5e-2),
}

Runner = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


class Reference(NamedTuple):
    """What a result is checked against. ``precision`` names the float type the reference
    computes in when that is not its output type (a mixed-precision graph casting its
    float16 result back to float32): its tolerance applies then."""

    label: str
    run: Runner
    precision: torch.dtype | None = None


@dataclass(frozen=True)
class Tolerance:
    """Overrides for the dtype defaults; None keeps the default."""

    atol: float | None = None
    rtol: float | None = None

    def for_dtype(self, dtype: torch.dtype) -> tuple[float, float]:
        if not dtype.is_floating_point:
            return 0.0, 0.0
        atol, rtol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
        return (self.atol if self.atol is not None else atol, self.rtol if self.rtol is not None else rtol)


def as_list(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (list, tuple)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return list(outputs)
    raise VerificationError(f"the model returned {type(outputs).__name__}, not tensors", [],
                            fix="make forward() return a tensor or a tuple of tensors")


def torch_runner(model: torch.nn.Module, float_dtype: torch.dtype | None = None,
                 known: tuple[Sequence[torch.Tensor], list[torch.Tensor]] | None = None) -> Runner:
    """Runs ``model``; with ``float_dtype``, float inputs are cast to it first (a half
    precision source fed the float32 check inputs). ``known``: inputs and the model's
    outputs on them, already computed (by the export); given for those very tensors."""
    def run(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if known is not None and len(inputs) == len(known[0]) and all(a is b for a, b in zip(inputs, known[0])):
            return list(known[1])
        if float_dtype is not None:
            inputs = [t.to(float_dtype) if t.is_floating_point() else t for t in inputs]
        from .export import evaluating  # the result is checked against the model as exported

        with GATE.run(), torch.no_grad(), evaluating(model):
            return as_list(model(*inputs))
    return run


class OnnxRunner:
    """Runs an ONNX model on torch tensors: onnxruntime, or ONNX's reference evaluator for
    what onnxruntime cannot load (``LSTM`` with ``layout=1``, ops it lacks). ``label`` names
    the engine used. A fixed leading dim is honoured by running in chunks.

    The engine is loaded at the first run, so problems the import can name precisely (an
    unsupported op) are reported before the engine's view of them. ``held`` gives values of
    large initializers already read from ``model`` (see ``onnxkit.weights.ort_session``).
    """

    def __init__(self, model: onnx.ModelProto, of: str = "", held: Mapping[str, gs.Constant] | None = None) -> None:
        self.model, self._of, self._held = model, of, held
        self.label = f"onnxruntime{of}"
        declared = runtime_inputs(model.graph)
        self._names = [vi.name for vi in declared]
        self._fixed = [_fixed_leading(vi) for vi in declared]
        self._dtypes = [_NUMPY_TYPES.get(vi.type.tensor_type.elem_type) for vi in declared]

    @functools.cached_property
    def _engine(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures surface as our typed errors, not log lines
        # A runner runs a few times: optimizing the graph first costs more than it saves
        # (ResNet-50: 0.37 s against 0.23 s, and its Conv+BatchNorm fusion new weights).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort_session(self.model, options, held=self._held)
        except Exception as exc:  # onnxruntime raises its own exception types
            failure = exc
        try:
            from onnx.reference import ReferenceEvaluator

            engine = ReferenceEvaluator(self.model)
        except Exception as exc:  # the evaluator raises assorted types for what it lacks
            raise InputError(f"neither onnxruntime nor ONNX's reference evaluator can run the source model, so the "
                             f"rewrite cannot be verified: {describe(failure)}; {describe(exc)}",
                             fix="check that the model runs in onnxruntime") from failure
        self.label = f"ONNX reference evaluator{self._of}"
        return engine

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # An input given a multiple of its fixed leading dim (a fixed batch made dynamic) is
        # fed in chunks of that size; every other input whole, to each chunk.
        chunked = [f is not None and t.dim() > 0 and t.shape[0] != f and t.shape[0] % f == 0
                   for f, t in zip(self._fixed, inputs)]
        parts = max((t.shape[0] // f for f, t, c in zip(self._fixed, inputs, chunked) if c), default=1)
        pieces: list[list[np.ndarray]] = []
        for k in range(parts):
            feed = {n: _as_numpy(t[k * f:(k + 1) * f] if c else t, d)
                    for n, t, f, c, d in zip(self._names, inputs, self._fixed, chunked, self._dtypes)}
            pieces.append(list(self._engine.run(None, feed)))
        return [torch.from_numpy(np.asarray(np.concatenate([p[k] for p in pieces]) if len(pieces) > 1 else pieces[0][k]))
                for k in range(len(pieces[0]))]


def _fixed_leading(vi: onnx.ValueInfoProto) -> int | None:
    dims = dims_of(vi.type) or [None]
    return dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None


_NUMPY_TYPES = {onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.FLOAT: np.float32,
                onnx.TensorProto.DOUBLE: np.float64}


def _as_numpy(tensor: torch.Tensor, dtype) -> np.ndarray:
    """A feed for onnxruntime in the input's declared type (bfloat16 has no numpy type)."""
    array = tensor.detach().cpu()
    if array.dtype == torch.bfloat16:
        array = array.float()
    array = array.numpy()
    return array.astype(dtype) if dtype is not None and array.dtype.kind == "f" else array


def other_batch(inputs: Sequence[torch.Tensor], extra_rows: int = 1,
                carries: Sequence[bool] | None = None) -> tuple[torch.Tensor, ...]:
    """A second check batch built from the example inputs: the rows of each input that
    carries the batch (``carries``; default every input with a dim) in reverse order, plus
    ``extra_rows`` more, with a little deterministic noise on float inputs so rows differ.
    Inputs that do not carry the batch (a broadcast operand, parameters fed as inputs)
    stay as they are."""
    generator = torch.Generator().manual_seed(0)
    carries = list(carries) if carries is not None else [t.dim() > 0 for t in inputs]
    batch = next((t.shape[0] for t, c in zip(inputs, carries) if c and t.dim()), 0)
    size = batch + extra_rows
    out = []
    for t, carried in zip(inputs, carries):
        if not carried or t.dim() == 0 or t.shape[0] == 0:
            out.append(t)
            continue
        rows = torch.cat([t.flip(0)] * (size // t.shape[0] + 1))[:size]
        if rows.is_floating_point():
            scale = rows.float().std().clamp(min=1e-3) * 0.05 if rows.numel() > 1 else rows.new_tensor(1e-3)
            rows = rows + (torch.randn(rows.shape, generator=generator) * scale).to(rows.dtype)
        out.append(rows)
    return tuple(out)


def compare(result: list[torch.Tensor], reference: list[torch.Tensor], names: Sequence[str], batch: int,
            tolerance: Tolerance, precision: torch.dtype | None = None) -> list[dict]:
    if len(result) != len(reference):
        raise VerificationError(f"the rewritten model returns {len(result)} outputs, the source {len(reference)}",
                                [], fix="report this as a bug with the model")
    diffs = []
    for name, got, want in zip(names, result, reference):
        atol, rtol = tolerance.for_dtype(precision if precision is not None and want.is_floating_point()
                                          else want.dtype)
        entry = {"output": name, "batch": batch, "atol": atol, "rtol": rtol}
        if tuple(got.shape) != tuple(want.shape):
            diffs.append({**entry, "max_abs": float("inf"), "max_rel": float("inf"), "ok": False,
                          "shape": [list(got.shape), list(want.shape)]})
            continue
        g, w = got.detach().double().cpu(), want.detach().double().cpu()
        # NaN matches NaN and an infinity the same infinity (edge cases a graph computes on
        # purpose); anything else against them is an infinite difference.
        same = (g == w) | (torch.isnan(g) & torch.isnan(w))
        diff = torch.where(same, torch.zeros_like(g), (g - w).abs())
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
        max_abs = float(diff.max()) if diff.numel() else 0.0
        magnitude = w.abs().nan_to_num(0.0, 0.0, 0.0)
        scale = float(magnitude.max()) if w.numel() else 0.0
        # A sum of many terms rounds relative to its terms, not to its result: where terms
        # cancel (an output near zero of a 17,000-wide layer), float32 differs by ~1e-6 of
        # the output's scale. A tenth of ``rtol`` of the scale allows that and no real error.
        bound = atol + rtol * magnitude + rtol / 10 * scale
        ok = bool((diff <= bound).all()) if w.numel() else True
        diffs.append({**entry, "max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs, "ok": ok})
    return diffs


def _run_reference(label: str, reference: Runner, inputs: tuple, batch: int, output_names: Sequence[str],
                   strict: bool):
    try:
        want = reference(inputs)
    except ShapRewriteError:
        raise
    except Exception as exc:  # the source rejects the check inputs
        raise InputError(f"the source model ({label}) failed on check inputs of batch {batch}: {describe(exc)}",
                         fix="give example inputs of the shapes and types the model expects") from exc
    # NaN compared with NaN checks nothing. On the example inputs (``strict``), finite ones
    # must give finite outputs; inputs that hold NaN or Inf themselves (edge cases given on
    # purpose) may propagate them, compared as values. The second batch is derived from the
    # example with a little noise, which may leave a model's domain (a power of a negative
    # base): there an output must be finite somewhere.
    finite_inputs = all(torch.isfinite(t).all() for t in inputs if t.is_floating_point())
    floats = [(n, w) for n, w in zip(output_names, want) if w.is_floating_point() and w.numel()]
    bad = [(n, w) for n, w in floats if not torch.isfinite(w).all() if strict or not torch.isfinite(w).any()]
    if finite_inputs and bad:
        counts = ", ".join(f"'{n}' ({int((~torch.isfinite(w)).sum())} of {w.numel()} elements)" for n, w in bad)
        raise VerificationError(f"the source model ({label}) outputs NaN or Inf in {counts} on finite check inputs "
                                f"of batch {batch}, so the rewrite cannot be verified there",
                                fix="give example inputs from the model's domain (CLI: --inputs ROWS.npz, arrays by "
                                    "input name; API: rewrite(model, *inputs)), e.g. positive values for a "
                                    "logarithm or a square root")
    return want


def crash_error(module: torch.nn.Module, inputs: Sequence[torch.Tensor], exc: Exception) -> ShapRewriteError:
    """The error for the rewritten module crashing on ``inputs``: our bug, named by the ONNX
    node (and op) whose translation failed, found by re-running the graph node by node."""
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() else 1
    where, failed = "", _failing_node(module, inputs)
    if failed is not None and "onnx" in failed.meta:
        name, op_type = failed.meta["onnx"]
        return ShapRewriteError(f"the rewritten model crashed on a batch of {batch}: {describe(exc)}",
                                node=name, op_type=op_type, fix=_CRASH_FIX)
    if failed is not None:
        where = f" in {failed.format_node()}"
    return ShapRewriteError(f"the rewritten model crashed on a batch of {batch}{where}: {describe(exc)}",
                            fix=_CRASH_FIX)


_CRASH_FIX = ("this is a shaprewrite bug: please report it with the model. If the source was exported with a "
              "fixed batch size, dynamic_batch=False (CLI --static-batch) may avoid it")


def _failing_node(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> fx.Node | None:
    if not isinstance(module, fx.GraphModule):
        return None
    failed: list[fx.Node] = []

    class Locate(fx.Interpreter):
        def run_node(self, n: fx.Node):
            try:
                return super().run_node(n)
            except Exception:
                failed.append(n)
                raise

    with contextlib.suppress(Exception), GATE.run(), torch.no_grad():
        Locate(module).run(*inputs)
    return failed[0] if failed else None


def verify(result_model: torch.nn.Module, references: Sequence[Reference], inputs: Sequence[torch.Tensor],
           output_names: Sequence[str], tolerance: Tolerance = Tolerance(), extra_rows: int = 1,
           carries: Sequence[bool] | None = None) -> list[dict]:
    """Compare ``result_model`` with each reference on ``inputs`` and on a second
    batch with ``extra_rows`` more rows (0 when the batch size is fixed) in the inputs that
    ``carries`` the batch (see :func:`other_batch`).

    Tolerances follow each reference's precision, so a float16 source is held to float16
    precision and a float32 reference to float32's. Returns the per-output figures; raises
    :class:`VerificationError` when any output differs beyond tolerance, or a source itself
    produces nothing but NaN or Inf in an output.
    """
    run = torch_runner(result_model)
    diffs: list[dict] = []
    for index, batch_inputs in enumerate((tuple(inputs), other_batch(inputs, extra_rows, carries))):
        batch = batch_inputs[0].shape[0] if batch_inputs and batch_inputs[0].dim() else 1
        # The sources first: when they reject the inputs, the inputs are at fault.
        wanted = [(label, _run_reference(label, reference, batch_inputs, batch, output_names, index == 0), precision)
                  for label, reference, precision in references]
        try:
            got = run(batch_inputs)
        except Exception as exc:
            if index == 1:  # it ran on the example: something in it holds the example's batch
                raise BatchHeldError(f"the rewritten model runs at batch {len(inputs[0])} but not at batch {batch} "
                                     f"({describe(exc)})", fix="export the model so that nothing in the graph is "
                                     "sized by the example's batch (or keep its batch fixed: --static-batch)") from exc
            raise crash_error(result_model, batch_inputs, exc) from exc
        for (label, want, precision), reference in zip(wanted, references):
            label = getattr(reference.run, "label", label)  # the engine an ONNX runner fell back to
            diffs.extend({**d, "reference": label}
                         for d in compare(got, want, output_names, batch, tolerance, precision))
    if not all(d["ok"] for d in diffs):
        raise VerificationError("the rewritten model does not match the source", diffs,
                                fix="loosen --atol/--rtol if the difference is float rounding, otherwise report "
                                    "the model as a bug")
    return diffs
