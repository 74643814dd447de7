"""``rewrite()``: the one call that turns a model into an exactly explainable module."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import onnx
import torch
from torch import nn

from .check import self_check
from .concurrency import GATE, collector_paused
from .errors import (
    AdditivityError,
    ConversionError,
    ExportError,
    InputError,
    ShapRewriteError,
    UnsupportedOpError,
    describe,
)
from .export import dynamic_batch_note, export_module
from .importer import import_onnx
from .naming import sanitize
from .onnx_io import normalize, parse_onnx, read_onnx
from .onnx_values import ONNX_TO_TORCH_DTYPE, tensor_from_array
from .passes import LightModel, PassOptions, run_passes
from .passes.precision import half_precision_type, upcast_model
from .report import RewriteReport, classify
from .result import ExplainableModule
from .verify import OnnxRunner, Reference, Tolerance, as_list, other_batch, torch_runner, verify

_HALF = (torch.float16, torch.bfloat16)
_MAX_CHECK_ELEMENTS = 2**27  # 512 MiB of float32 per input
ModelSource = nn.Module | onnx.ModelProto | str | os.PathLike | bytes
Progress = Callable[[str], None]


def _random_inputs(model: onnx.ModelProto, dims: Mapping[str, int]) -> tuple[torch.Tensor, ...]:
    """Inputs built from the graph's declared input shapes; ``dims`` sizes symbolic dims."""
    generator = torch.Generator().manual_seed(0)
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    missing: list[str] = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        dtype = ONNX_TO_TORCH_DTYPE.get(tt.elem_type)
        if dtype is None:
            raise InputError(f"graph input '{vi.name}' has a type shaprewrite cannot feed",
                             fix="give example inputs explicitly")
        shape = []
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif d.dim_param in dims:
                shape.append(int(dims[d.dim_param]))
            elif axis == 0:
                shape.append(int(dims.get("batch", 2)))
            else:
                missing.append(f"'{d.dim_param or '?'}' (input '{vi.name}', axis {axis})")
                shape.append(1)
        if math.prod(shape) > _MAX_CHECK_ELEMENTS:
            raise InputError(f"graph input '{vi.name}' declares {shape}, too large to build check inputs for",
                             fix="give smaller sizes for its dynamic dims (--dim NAME=SIZE) or pass example inputs")
        if dtype.is_floating_point:
            inputs.append(torch.randn(shape, generator=generator).to(dtype))
        elif dtype == torch.bool:
            inputs.append(torch.randint(0, 2, shape, generator=generator).bool())
        else:
            inputs.append(torch.randint(0, 2, shape, generator=generator).to(dtype))
    if missing:
        raise InputError(f"the model's inputs have dynamic dims with no size given: {', '.join(missing)}",
                         fix="give their sizes, e.g. dims={'seq': 16} (CLI: --dim seq=16), or pass example inputs")
    return tuple(inputs)


def _load_source(model: ModelSource) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return parse_onnx(model)
    if isinstance(model, (str, os.PathLike)):
        return read_onnx(model)
    raise InputError(f"cannot rewrite a {type(model).__name__}",
                     fix="pass a torch.nn.Module with example inputs, an ONNX file path, or an onnx.ModelProto")


def _output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


class _SecondBatch(NamedTuple):
    """How the second check batch differs from the first: ``extra_rows`` more rows in the
    inputs that ``carries`` the batch; ``made_dynamic`` when that batch is a fixed one the
    passes make dynamic."""

    extra_rows: int
    carries: list[bool] | None
    made_dynamic: bool = False


def _second_batch(source: onnx.ModelProto, dynamic_batch: bool) -> _SecondBatch:
    """The inputs that share the first symbolic leading dim carry the batch; without one, a
    fixed leading dim that every input shares does (made dynamic, it is checked at a
    multiple of itself and the source runs in chunks; kept fixed, at its own size); other
    fixed shapes stay as they are."""
    leading = [vi.type.tensor_type.shape.dim[0] if vi.type.tensor_type.shape.dim else None
               for vi in _runtime_inputs(source)]
    symbol = next((d.dim_param for d in leading if d is not None and d.dim_param), None)
    if symbol is not None:
        return _SecondBatch(1, [d is not None and d.dim_param == symbol for d in leading])
    fixed = {d.dim_value for d in leading if d is not None and d.HasField("dim_value") and d.dim_value > 0}
    if len(fixed) == 1 and all(d is not None and d.HasField("dim_value") for d in leading):
        # As passes/batch.py decides whether to make it dynamic.
        return _SecondBatch(next(iter(fixed)) if dynamic_batch else 0, [True] * len(leading), dynamic_batch)
    return _SecondBatch(0, [False] * len(leading))


def _runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _feeds(model: onnx.ModelProto, inputs: tuple[torch.Tensor, ...], extra_rows: int,
           carries: list[bool] | None) -> tuple[dict, ...]:
    """The check inputs at both batch sizes, by graph input name, for measuring shapes."""
    names = [vi.name for vi in _runtime_inputs(model)]
    if not inputs or len(names) != len(inputs):
        return ()
    return tuple({name: t.detach().cpu().numpy() for name, t in zip(names, batch)}
                 for batch in (inputs, other_batch(inputs, extra_rows, carries)))


@dataclass
class _Source:
    """A model ready for the passes, with what to verify the result against."""

    proto: onnx.ModelProto  # as read, or as exported (its large weights as placeholders)
    prepared: LightModel  # checked, inlined, named; its large weights read from proto
    inputs: tuple[torch.Tensor, ...]  # check inputs (half precision ones as float32)
    references: list[Reference]
    report: RewriteReport
    class_name: str
    fixed_batch: bool = False  # exported at a fixed batch and made batch-free


def _half_dtype(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.dtype | None:
    tensors = [*model.parameters(), *model.buffers(), *inputs]
    return next((t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.dtype in _HALF), None)


def _as_float32(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.float() if isinstance(t, torch.Tensor) and t.dtype in _HALF else t for t in inputs)


def _torch_source(model: nn.Module, inputs: tuple, exporter: str, opset: int | None, fixed_batch: bool) -> _Source:
    """A half precision model is exported from a float32 copy (what the result will be), and
    checked against both: tightly against the copy, within half precision against itself."""
    half = _half_dtype(model, inputs)
    export_model, inputs = (copy.deepcopy(model).float(), _as_float32(inputs)) if half is not None else (model, inputs)
    exported = export_module(export_model, inputs, exporter=exporter, opset=opset, fixed_batch=fixed_batch)
    # The export ran the model it exported on the inputs: verification takes those outputs.
    seen = torch_runner(export_model, known=(inputs, exported.outputs))
    references: list[Reference] = []
    if half is not None:
        references.append(Reference("float32 copy of the model", seen))
    references.append(Reference("model" if half is None else f"model ({str(half).removeprefix('torch.')})",
                                seen if half is None else torch_runner(model, half), half))
    prepared, reused = normalize(exported.model)
    report = RewriteReport("torch", exported.exporter, exported.fallback_reason, reused, notes=exported.notes)
    return _Source(exported.model.proto, prepared, inputs, references, report, _class_name(type(model).__name__),
                   exported.fixed_batch)


def _onnx_source(proto: onnx.ModelProto, inputs: tuple, dims: Mapping[str, int], need_inputs: bool = True) -> _Source:
    """A half precision file is checked against onnxruntime on itself and, tightly, on an
    upcast float32 copy."""
    prepared, reused = normalize(proto)
    references: list[Reference] = []
    name = proto.graph.name
    if not need_inputs:
        return _Source(proto, prepared, (), references, RewriteReport("onnx", unshared_modules=reused),
                       _class_name(name))
    inputs = _as_float32(inputs or _random_inputs(prepared.proto, dims))
    half = half_precision_type(prepared.proto)
    if half is not None:
        upcast = onnx.ModelProto()
        upcast.CopyFrom(proto)
        upcast_model(upcast)
        references.append(Reference("onnxruntime on a float32 copy", OnnxRunner(upcast, " on a float32 copy")))
    references.append(Reference("onnxruntime", OnnxRunner(proto, held=prepared.held), ONNX_TO_TORCH_DTYPE.get(half)))
    return _Source(proto, prepared, inputs, references, RewriteReport("onnx", unshared_modules=reused),
                   _class_name(name))


def _class_name(name: str) -> str:
    return name if name.isidentifier() else (sanitize(name) if name else "ExplainableModel")


_REPORT_IT = "if the model is valid ONNX, report this as a bug with the model attached"
_STAGE_ERRORS = {
    "export": (ExportError, "check that the model runs on the example inputs"),
    "load": (InputError, "check that the file is a valid ONNX model"),
    "passes": (ConversionError, _REPORT_IT),
    "import": (ConversionError, _REPORT_IT),
    "verify": (ShapRewriteError, _REPORT_IT),
    "check": (AdditivityError, _REPORT_IT),
}


class _Clock:
    """Times each stage and announces it to ``progress``."""

    def __init__(self, progress: Progress | None) -> None:
        self.say = progress or (lambda message: None)
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, message: str):
        """Time the stage; an unexpected exception inside becomes the stage's typed error."""
        self.say(message)
        start = time.perf_counter()
        try:
            yield
        except ShapRewriteError:
            raise
        except MemoryError as exc:
            raise InputError(f"ran out of memory while {message}", fix="give smaller example inputs or dims") from exc
        except Exception as exc:  # malformed input that passed the checks, or a bug: typed either way
            error, fix = _STAGE_ERRORS[key]
            raise error(f"failed while {message}: {describe(exc)}", fix=fix) from exc
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start


def _read(model: ModelSource, example_inputs: tuple, dims, exporter: str, opset: int | None, clock: _Clock,
          need_inputs: bool = True, fixed_batch: bool = True) -> _Source:
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise InputError(f"unknown exporter '{exporter}'", fix="use 'auto', 'dynamo' or 'torchscript'")
    if isinstance(model, nn.Module):
        with clock.stage("export", "exporting to ONNX"):
            return _torch_source(model, example_inputs, exporter, opset, fixed_batch)
    with clock.stage("load", "reading the ONNX model"):
        return _onnx_source(_load_source(model), example_inputs, dims or {}, need_inputs)


def _as_tuple(value) -> tuple[torch.Tensor, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def rewrite(model: ModelSource, *example_inputs: torch.Tensor, dims: Mapping[str, int] | None = None,
            exporter: str = "auto", opset: int | None = None, atol: float | None = None, rtol: float | None = None,
            dynamic_batch: bool = True, decompose_clips: bool = False, max_tensor_bytes: int = 1 << 30,
            check: bool = False, check_background=None, check_inputs=None,
            report: bool = False, progress: Progress | None = None) -> nn.Module | tuple[nn.Module, RewriteReport]:
    """Rewrite ``model`` into an equivalent ``torch.fx.GraphModule`` that SHAP's DeepExplainer
    and Captum's DeepLift explain exactly, verified against the source before it is returned.

    Args:
        model: a ``torch.nn.Module`` (``example_inputs`` required), or an ONNX model as a
            file path, ``bytes`` or ``onnx.ModelProto`` (``example_inputs`` optional).
        example_inputs: tensors the model is called with; the batch dim is dim 0.
        dims: sizes for symbolic input dims of an ONNX model when no example inputs are
            given, by name, e.g. ``{"batch": 4, "seq": 16}``.
        exporter: "auto" (dynamo, then TorchScript), "dynamo" or "torchscript".
        opset: ONNX opset to export a torch model with (default: the exporter's).
        atol, rtol: verification tolerances; default by dtype (see ``rewriter.verify``).
        dynamic_batch: make a fixed leading dim of an ONNX model's inputs dynamic.
        decompose_clips: write ReLU6/Hardtanh/Clip as ReLUs (see ``passes.PassOptions``).
        max_tensor_bytes: refuse (``InputError``, before anything runs) a graph that would
            compute a tensor larger than this at the example inputs' sizes; default 1 GiB.
        check: run SHAP's DeepExplainer (and Captum's DeepLift, when installed) on the
            result and record the worst relative additivity errors in the report.
        check_background, check_inputs: data for the check (a tensor, or a tuple for several
            model inputs); default: rows built from the example inputs.
        report: also return a :class:`RewriteReport`.
        progress: called with a short message as each stage starts.

    Raises:
        rewriter.errors.ShapRewriteError: a subclass naming what failed and the fix.
    """
    clock = _Clock(progress)
    if isinstance(model, ExplainableModule):
        # Already rewritten: the passes have nothing left to do; return a verified copy.
        module, info = copy.deepcopy(model), RewriteReport("torch")
        inputs, references = tuple(example_inputs), [Reference("model", torch_runner(model))]
        with GATE.run(), torch.no_grad():
            count = len(as_list(model(*inputs)))
        output_names = [f"output_{i}" for i in range(count)]
        with clock.stage("verify", "verifying against the source"):
            info.verification = verify(module, references, inputs, output_names, Tolerance(atol, rtol))
    else:
        source = _read(model, tuple(example_inputs), dims, exporter, opset, clock)
        options = PassOptions(dynamic_batch, decompose_clips, max_tensor_bytes=max_tensor_bytes)
        tolerance = Tolerance(atol, rtol)
        try:
            module = _rewrite_source(source, options, tolerance, clock)
        except ShapRewriteError as exc:
            if not source.fixed_batch or isinstance(exc, (UnsupportedOpError, InputError)):
                raise
            # Exported at a fixed batch, the graph still held it somewhere (verification is the
            # check of that): the dynamic-shape export, which costs more.
            source = _read(model, tuple(example_inputs), dims, exporter, opset, clock, fixed_batch=False)
            source.report.notes.insert(0, dynamic_batch_note(exc.message))
            module = _rewrite_source(source, options, tolerance, clock)
        info, inputs = source.report, source.inputs
    info.nodes = classify(module)
    if check:
        with clock.stage("check", "checking additivity with the explainers"):
            background = _as_tuple(check_background) if check_background is not None else \
                tuple(t[:8] for t in other_batch(inputs, max(8 - len(inputs[0]), 0)))
            rows = _as_tuple(check_inputs) if check_inputs is not None else tuple(t[:3] for t in inputs)
            info.check = self_check(module, background, rows)
    info.timings = clock.timings
    return (module, info) if report else module


def _rewrite_source(source: _Source, options: PassOptions, tolerance: Tolerance, clock: _Clock) -> nn.Module:
    """Passes, import and verification; a fixed batch the passes made dynamic is kept fixed
    when verification finds the graph depends on it."""
    plan = _second_batch(source.proto, options.dynamic_batch) if source.report.source == "onnx" else _SecondBatch(1, None)
    try:
        return _convert_and_verify(source, options, plan, tolerance, clock)
    except ShapRewriteError as exc:
        if not plan.made_dynamic:
            raise
        # The graph depends on its fixed batch (it mixes rows, or its other inputs
        # share that leading dim without being batched): keep it fixed.
        source.report.notes.append(f"the fixed batch of {plan.extra_rows} was kept: made dynamic, {exc.message}")
        return _convert_and_verify(source, dataclasses.replace(options, dynamic_batch=False),
                                   _second_batch(source.proto, False), tolerance, clock)


def _convert_and_verify(source: _Source, options: PassOptions, plan: _SecondBatch, tolerance: Tolerance,
                        clock: _Clock) -> nn.Module:
    """Passes, import and verification of ``source``; the report records each."""
    options = dataclasses.replace(options, feeds=_feeds(source.prepared.proto, source.inputs, plan.extra_rows, plan.carries))
    module = _passes_and_import(source, options, clock)
    with clock.stage("verify", "verifying against the source"):
        source.report.verification = verify(module, source.references, source.inputs, _output_names(source.proto),
                                            tolerance, plan.extra_rows, plan.carries)
    return module


def _passes_and_import(source: _Source, options: PassOptions, clock: _Clock) -> nn.Module:
    info = source.report
    with collector_paused():
        with clock.stage("passes", "running passes"):
            rewritten, info.passes = run_passes(source.prepared, options)
        with clock.stage("import", "importing into torch"):
            held = {name: tensor_from_array(constant.values) for name, constant in rewritten.held.items()}
            return import_onnx(rewritten.proto, source.class_name, held)


def inspect(model: ModelSource, *example_inputs: torch.Tensor, dims: Mapping[str, int] | None = None,
            exporter: str = "auto", opset: int | None = None, dynamic_batch: bool = True,
            decompose_clips: bool = False, max_tensor_bytes: int = 1 << 30,
            progress: Progress | None = None) -> RewriteReport:
    """What :func:`rewrite` would do, without verifying or returning a model: each pass's
    changes, how each explainer would treat each node, and every unsupported op (in
    ``report.unsupported`` rather than raised)."""
    clock = _Clock(progress)
    source = _read(model, tuple(example_inputs), dims, exporter, opset, clock, need_inputs=False)
    try:
        options = PassOptions(dynamic_batch, decompose_clips, max_tensor_bytes=max_tensor_bytes)
        source.report.nodes = classify(_passes_and_import(source, options, clock))
    except UnsupportedOpError as exc:
        source.report.unsupported = exc.ops
    source.report.timings = clock.timings
    return source.report
