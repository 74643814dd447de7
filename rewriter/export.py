"""torch.nn.Module -> ONNX, in memory: the dynamo exporter first, TorchScript as fallback."""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import re
import traceback
import warnings
from dataclasses import dataclass, field

import onnx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .batching import BatchBaked, any_batch, fold_shape_arithmetic
from .concurrency import GATE, collector_paused
from .errors import ExportError, ShapRewriteError, describe
from .onnxkit.graph import toposorted
from .onnxkit.weights import LightModel, export_light, import_light, light_from_ir

log = logging.getLogger("shaprewrite")

DYNAMO = "dynamo"
TORCHSCRIPT = "torchscript"


@dataclass
class ExportedModel:
    """An exported model (its large weights held apart, see ``onnxkit.weights``), the exporter
    that produced it, and why any earlier exporter failed."""

    model: LightModel
    exporter: str
    input_names: list[str]
    fallback_reason: str | None = None
    outputs: list[torch.Tensor] | None = None  # the model's on the example inputs, as it was called
    # Exported at a fixed batch and made batch-free (see ``rewriter.batching.any_batch``): where the
    # batch stayed baked in after all, verification finds it.
    fixed_batch: bool = False
    notes: list[str] = field(default_factory=list)


def input_names_for(model: nn.Module, count: int) -> list[str]:
    """Names of the first ``count`` positional parameters of ``model.forward``."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    return names + [f"input_{i}" for i in range(len(names), count)]


def at_least_batch_two(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """torch.export specialises a dim of size 1, so a batch of 1 is repeated to 2 for export."""
    if all(t.dim() > 0 and t.shape[0] >= 2 for t in inputs):
        return inputs
    return tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.dim() > 0 and t.shape[0] == 1 else t for t in inputs)


@contextlib.contextmanager
def quiet():
    """Silence the exporters' warnings and log lines; everything is restored afterwards.

    Logger levels and warning filters are process-wide, so this runs only inside an export
    (see :mod:`rewriter.concurrency`). Nothing is printed on stdout with ``verbose=False``,
    so stdout is never touched.
    """
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _state_kept(model: nn.Module):
    """Each module's own attributes (not its parameters, buffers or children) as they were
    before a run or an export. Tracing runs forward() on fake tensors: a model that caches
    tensors on itself (darts' TFT keeps an attention mask for the last batch size it saw)
    would keep fake ones, and a later run would use them."""
    saved = [(module, dict(module.__dict__)) for module in model.modules()]
    try:
        yield
    finally:
        for module, attributes in saved:
            for key in [k for k in module.__dict__ if k not in attributes]:
                del module.__dict__[key]
            module.__dict__.update(attributes)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def _hooks_detached(model: nn.Module):
    """Export without the hooks an explainer may have left on the model (SHAP leaves them
    when it fails part-way, which is exactly when users turn to this tool)."""
    saved = []
    for module in model.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                saved.append((hooks, dict(hooks)))
                hooks.clear()
    try:
        yield
    finally:
        for hooks, content in saved:
            hooks.update(content)


# The batch a model is exported at: a prime, so that a shape entry that is a multiple of it
# counts examples (see ``rewriter.batching.any_batch``); the second where the example inputs'
# batch, or the one verification adds a row to, is the first.
_EXPORT_ROWS = (97, 101)


def _dynamo_export(model: nn.Module, inputs: tuple, names: list[str], opset: int | None, dynamic=None):
    """``torch.onnx.export(..., dynamo=True, optimize=False)``, with torch's table of op
    translations built once per process: the public call builds it anew every time (0.9 s,
    an eighth of a ResNet-50 export). The exporter's own entry point takes the table; where
    this torch has none that does, the public call."""
    # optimize=False keeps BatchNormalization separate from Conv, so each layer keeps the
    # name of its own module; constant subgraphs the optimizer would fold, the importer folds.
    options = {"dynamic_shapes": dynamic, "input_names": names, "verbose": False, "optimize": False}
    try:
        from torch.onnx import _constants as onnx_constants
        from torch.onnx._internal.exporter import _constants, _core

        version = opset if opset is not None else onnx_constants.ONNX_DEFAULT_OPSET
        if not {"registry", "opset_version", *options} <= set(inspect.signature(_core.export).parameters):
            raise ImportError("the exporter's entry point takes other parameters")
    except (ImportError, AttributeError, TypeError, ValueError):
        return torch.onnx.export(model, inputs, dynamo=True, opset_version=opset, **options)
    registry = _torchlib_registry(max(version, _constants.TORCHLIB_OPSET))
    return _core.export(model, inputs, registry=registry, opset_version=version, **options)


@functools.lru_cache(maxsize=4)
def _torchlib_registry(opset: int):
    """torch's translations of its ops to ONNX at ``opset``; only read by an export."""
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=opset)


# The export batch is allocated (tracing reads the inputs' strides, so they cannot be
# broadcast views), if mostly never touched: past this many bytes the dynamic export is
# the safer choice.
_STATIC_EXPORT_BYTES = 1 << 28


def _at_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with ``rows`` rows for the export. torch traces with fake tensors and never reads
    the values, so float rows are allocated and never touched (97 tiled 224x224 images took
    58 MB); integer inputs (token ids, indices) repeat the real rows in case a capture ever
    runs on them."""
    if not t.dim():
        return t
    if t.is_floating_point():
        return torch.empty((rows, *t.shape[1:]), dtype=t.dtype)
    return t[torch.arange(rows) % t.shape[0]]


def _export_fixed_batch(model: nn.Module, inputs: tuple, names: list[str], opset: int | None) -> LightModel:
    """The dynamo export at a fixed batch, made batch-free: torch takes twice as long over a
    dynamic-shape export of a transformer (BERT-base 16 s against 7.5 s, ResNet-50 7.9 s
    against 5.3 s). Raises where the batch is baked in."""
    sizes = {t.shape[0] + extra for t in inputs if t.dim() for extra in (0, 1)}
    rows = next(r for r in _EXPORT_ROWS if r not in sizes)
    size = sum(t[0].numel() * t.element_size() * rows for t in inputs if t.dim())
    if size > _STATIC_EXPORT_BYTES:
        raise BatchBaked(f"{rows} rows of the inputs would take {size / 2**20:.0f} MiB")
    with quiet():
        exported = _dynamo_export(model, tuple(_at_rows(t, rows) for t in inputs), names, opset).model
        fold_shape_arithmetic(exported)
    source = light_from_ir(exported)
    graph = import_light(source.proto, source.held)
    any_batch(graph, rows)
    light = export_light(toposorted(graph))
    # The exporter's metadata names each node's torch module; graphsurgeon does not keep it.
    metadata = {node.name: node.metadata_props for node in source.proto.graph.node}
    for node in light.proto.graph.node:
        if node.name in metadata:
            node.metadata_props.extend(metadata[node.name])
    light.proto.ir_version, light.proto.producer_name, light.proto.producer_version = (
        source.proto.ir_version, source.proto.producer_name, source.proto.producer_version)
    return light


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_failure(exc: BaseException) -> str:
    """What torch's exporter says went wrong, in one line: the exception its summary names,
    and the model's own line that raised it (file, line, code), without terminal colours.
    ``torch.onnx.export`` wraps the cause in several paragraphs of advice whose first line
    alone ("Failed to export the model with torch.export") names neither."""
    text = _ANSI.sub("", str(exc))
    summary = re.search(r"## Exception summary\s+(.+?)(?:\n\s*\n|$)", text, re.S)
    cause = " ".join(summary.group(1).split()) if summary else describe(exc, 300).split(": ", 1)[-1]
    cause = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:", r"\1:", cause)[:300]
    call = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\w+)\s*\n\s*(.+)',
                     text)
    if call:
        return f"{type(exc).__name__}: {cause} (at {call.group(1)}:{call.group(2)} in {call.group(3)}: " \
               f"`{call.group(4).strip()}`)"
    frame = _model_frame(exc)
    where = f" (at {frame.filename}:{frame.lineno} in {frame.name}: `{(frame.line or '').strip()}`)" if frame else ""
    return f"{type(exc).__name__}: {cause}{where}"


def _model_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the failure that is the model's own code (not torch's, not
    ours), through the chain of causes."""
    skipped = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            if not frame.filename.startswith(skipped) and "site-packages/torch" not in frame.filename:
                found = frame
        exc = exc.__cause__ or exc.__context__
    return found


def dynamic_batch_note(why: str) -> str:
    """The report's note for a model exported with a dynamic batch after the fixed one failed."""
    return f"exported with a dynamic batch (slower): at a fixed batch, {why}"


def _export_dynamic(model: nn.Module, inputs: tuple, names: list[str], opset: int | None,
                    extra_row: bool = False) -> LightModel:
    if extra_row:  # see export_module
        inputs = tuple(torch.cat([t, t[:1]]) if t.dim() else t for t in inputs)
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} if t.dim() > 0 else {} for t in inputs)
    if _takes_varargs(model):  # FlatModel.forward(*tensors): torch.export sees one input, a tuple
        dynamic = (dynamic,)
    with quiet():
        program = _dynamo_export(model, inputs, names, opset, dynamic)
    return light_from_ir(program.model)


def _takes_varargs(model: nn.Module) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == p.VAR_POSITIONAL for p in parameters)


class _DataDependentTrace(Exception):
    pass


# Tensor methods that turn a traced value into a Python value the trace then bakes in.
_CONVERSIONS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist"}
# Nodes whose result depends only on the shape of their input, not on its values.
_SHAPE_OPS = {"aten::size", "aten::sym_size", "aten::numel", "aten::dim", "prim::shape"}


def _reads_input_values(value: torch._C.Value) -> bool:
    """Whether a traced value depends on the values of the traced function's inputs (not
    only on their shapes, the module's weights or constants)."""
    stack, seen = [value], set()
    while stack:
        current = stack.pop()
        node = current.node()
        if node in seen or node.kind() in _SHAPE_OPS:
            continue
        seen.add(node)
        if node.kind() == "prim::Param":
            if not isinstance(current.type(), torch._C.ClassType):  # the module itself is not data
                return True
            continue
        stack.extend(node.inputs())
    return False


class _BranchWatch(TorchFunctionMode):
    """Records where traced code turns a tensor that carries input values into a Python
    value: there the trace follows one branch, right only for inputs that take it.

    Shape arithmetic (``width % window``, ``min(height, width) <= window``) is traced as
    tensors too and converted the same way, but depends on shapes alone: the trace is
    right for every input of those shapes, and verification checks another batch size.
    (A torch function mode is per thread, so other threads are not watched.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _CONVERSIONS and args and isinstance(args[0], torch.Tensor) and torch._C._is_tracing():
            traced = torch._C._get_value_trace(args[0])
            if traced is not None and _reads_input_values(traced):
                self.found.append(f"{name} of a value computed from the inputs: "
                                  f"{str(traced.node()).strip().splitlines()[0][:160]}")
        return func(*args, **(kwargs or {}))


def _export_torchscript(model: nn.Module, inputs: tuple, names: list[str], opset: int | None) -> LightModel:
    buffer = io.BytesIO()
    watch = _BranchWatch()
    with quiet(), watch:
        # Not under no_grad: there nn.TransformerEncoderLayer takes its fused fast path,
        # which exports as one opaque aten op.
        torch.onnx.export(model, inputs, buffer, dynamo=False, input_names=names, opset_version=opset or 17,
                          dynamic_axes={n: {0: "batch"} for n, t in zip(names, inputs) if t.dim() > 0})
    if watch.found:
        raise _DataDependentTrace(watch.found[0])
    return LightModel(onnx.load_from_string(buffer.getvalue()), {})


def run_model(model: nn.Module, args: tuple, kwargs: dict | None = None):
    """What ``model(*args, **kwargs)`` returns, run as it will be exported (in eval mode,
    without gradients); its own failure is an :class:`ExportError` quoting it."""
    try:
        # The model as it was afterwards: a model that caches what it builds for the batch size
        # it last saw (darts' TFT) would otherwise reuse it, as a constant, in the export.
        with GATE.run(), torch.no_grad(), evaluating(model), _state_kept(model):
            return model(*args, **(kwargs or {}))
    except ShapRewriteError:
        raise
    except Exception as exc:  # whatever the model raises
        raise ExportError(f"the model fails on the example inputs: {describe(exc, 600)}",
                          fix="pass example inputs the model accepts, as it is called (batch dim first)") from exc


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode, each submodule's own mode restored afterwards (``train(mode)``
    would set every submodule to the top module's mode)."""
    modes = [(module, module.training) for module in model.modules()]
    for module, _ in modes:  # not model.eval(): torch.export's unlifted modules refuse it
        module.training = False
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _as_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    raise ExportError(f"forward() returns {type(out).__name__}, not a tensor or a tuple of tensors",
                      fix="return the tensors to explain (rewrite() picks one of a dict or ModelOutput)")


_EXPORTERS = {TORCHSCRIPT: _export_torchscript}  # the dynamo exporter: _export_dynamic, which takes extra_row


def export_module(model: nn.Module, inputs: tuple[torch.Tensor, ...], *, exporter: str = "auto",
                  opset: int | None = None, fixed_batch: bool = True, names: list[str] | None = None,
                  outputs: list[torch.Tensor] | None = None, extra_row: bool = False) -> ExportedModel:
    """Export ``model`` called on ``inputs`` to an in-memory ONNX model with a dynamic batch dim.

    ``exporter`` is "auto" (dynamo, then TorchScript when dynamo fails), "dynamo" or
    "torchscript"; ``opset`` defaults to each exporter's own. ``fixed_batch``: try the dynamo
    export at a fixed batch first, made batch-free (the result says whether it was).
    ``names`` names the graph inputs (default: ``forward``'s parameters); ``outputs`` are the
    model's outputs on ``inputs`` where the caller ran it already. ``extra_row``: trace the
    dynamic export with one row more than the example, so what a model caches for the batch
    size it last saw (darts' TFT, whose last training batch may be the example's size) is
    rebuilt in the trace from the symbolic batch. Raises :class:`ExportError` naming each
    exporter's failure.

    Thread-safe: exports from several threads run one after the other, and apart from every
    run of a torch module (see :mod:`rewriter.concurrency`), each exactly as it would alone.
    """
    if not isinstance(model, nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got {type(model).__name__}",
                          fix="pass an nn.Module, an ONNX file path or an onnx.ModelProto")
    bad = [i for i, t in enumerate(inputs) if not isinstance(t, torch.Tensor)]
    if bad or not inputs:
        raise ExportError("example inputs must be one or more torch.Tensor values",
                          fix="call rewrite(model, x) or rewrite(model, x1, x2) with tensors")
    outputs = _as_outputs(run_model(model, inputs)) if outputs is None else outputs
    names = names or input_names_for(model, len(inputs))
    order = [DYNAMO, TORCHSCRIPT] if exporter == "auto" else [exporter]
    with GATE.export(), collector_paused():
        exported = _export_in_order(model, at_least_batch_two(inputs), names, order, opset, fixed_batch, extra_row)
    exported.outputs = outputs
    return exported


def _export_in_order(model: nn.Module, inputs: tuple, names: list[str], order: list[str], opset: int | None,
                     fixed_batch: bool, extra_row: bool = False) -> ExportedModel:
    failures: list[str] = []
    notes: list[str] = []
    with evaluating(model), _hooks_detached(model), _state_kept(model):
        for name in order:
            if name == DYNAMO and fixed_batch:
                try:
                    light = _export_fixed_batch(model, inputs, names, opset)
                    return ExportedModel(light, name, names, failures[0] if failures else None, fixed_batch=True)
                except BatchBaked as exc:
                    notes.append(dynamic_batch_note(describe(exc)))
                    log.debug("%s", notes[-1])
                except Exception as exc:  # the exporter's own failure: the dynamic export may do better
                    notes.append(dynamic_batch_note(export_failure(exc)))
                    log.debug("%s", notes[-1])
            try:
                light = _export_dynamic(model, inputs, names, opset, extra_row) if name == DYNAMO else \
                    _EXPORTERS[name](model, inputs, names, opset)
                return ExportedModel(light, name, names, failures[0] if failures else None, notes=notes)
            except _DataDependentTrace as exc:
                failures.append(f"{name} exporter: data-dependent control flow ({exc})")
            except Exception as exc:  # the exporters raise many unrelated types
                failures.append(f"{name} exporter: {export_failure(exc)}")
    fixed = [note.removeprefix(dynamic_batch_note("")) for note in notes]
    failures = [f"{DYNAMO} exporter at a fixed batch: {reason}" for reason in fixed] + failures
    raise ExportError("the model could not be exported to ONNX; " + "; ".join(failures),
                      fix="make forward() free of data-dependent Python control flow and return tensors "
                          "(or a tuple of tensors), or export to ONNX yourself and pass the file")
