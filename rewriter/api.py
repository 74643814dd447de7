"""``rewrite()``: the one call that turns a model into an exactly explainable module."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import onnx
import torch
from torch import nn

from .check import self_check
from .concurrency import GATE, collector_paused
from .embedding import split_embeddings
from .errors import (
    AdditivityError,
    BatchHeldError,
    ConversionError,
    ExportError,
    InputError,
    ShapRewriteError,
    UnsupportedOpError,
    describe,
)
from .export import dynamic_batch_note, export_module, run_model
from .exported import is_exported_program, read_exported_program
from .importer import import_onnx
from .interface import (
    FlatModel,
    OutputChoice,
    Selector,
    choose_outputs,
    fixed_rows,
    flatten_call,
    flatten_outputs,
    keep_onnx_outputs,
    reshape_note,
)
from .naming import sanitize
from .onnx_io import normalize, parse_onnx, read_onnx
from .onnx_values import ONNX_TO_TORCH_DTYPE, tensor_from_array
from .onnxkit.facts import BATCH, dims_of, runtime_inputs
from .onnxkit.weights import LightModel
from .passes import PassOptions, half_precision_type, run_passes, upcast_model
from .report import RewriteReport, classify
from .result import ExplainableModule, main_inputs
from .verify import OnnxRunner, Reference, Tolerance, as_list, other_batch, torch_runner, verify

_HALF = (torch.float16, torch.bfloat16)
_ONNX_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# Random check inputs are built from declared shapes: past this many elements per input (64 MiB
# of float32; a batch of two 1024x1024 RGB images is 6M) the declaration is more likely a
# mistake than a model, and the runs of the graph on it would multiply it many times over.
_MAX_CHECK_ELEMENTS = 2**24
ModelSource = nn.Module | onnx.ModelProto | str | os.PathLike | bytes
Progress = Callable[[str], None]


def _random_inputs(model: onnx.ModelProto, dims: Mapping[str, int]) -> tuple[torch.Tensor, ...]:
    """Inputs built from the graph's declared input shapes; ``dims`` sizes symbolic dims."""
    generator = torch.Generator().manual_seed(0)
    inputs = []
    missing: list[str] = []
    for vi in runtime_inputs(model.graph):
        tt = vi.type.tensor_type
        dtype = ONNX_TO_TORCH_DTYPE.get(tt.elem_type)
        if dtype is None:
            raise InputError(f"graph input '{vi.name}' has a type shaprewrite cannot feed",
                             fix="give example inputs explicitly")
        shape = []
        for axis, d in enumerate(dims_of(vi.type) or []):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif d in dims:
                shape.append(int(dims[d]))
            elif axis == 0:
                shape.append(int(dims.get(BATCH, 2)))
            else:
                missing.append(f"'{d if isinstance(d, str) and d else '?'}' (input '{vi.name}', axis {axis})")
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
    leading = [(dims_of(vi.type) or [None])[0] for vi in runtime_inputs(source.graph)]
    symbol = next((d for d in leading if isinstance(d, str) and d), None)
    if symbol is not None:
        return _SecondBatch(1, [d == symbol for d in leading])
    fixed = {d for d in leading if isinstance(d, int) and d > 0}
    if len(fixed) == 1 and all(isinstance(d, int) for d in leading):
        # As passes/batch.py decides whether to make it dynamic.
        return _SecondBatch(next(iter(fixed)) if dynamic_batch else 0, [True] * len(leading), dynamic_batch)
    return _SecondBatch(0, [False] * len(leading))


def _feeds(source: _Source, extra_rows: int, carries: list[bool] | None) -> tuple[dict, ...]:
    """The inputs of the graph the passes rewrite at both check batch sizes, by name, for
    measuring shapes."""
    names = [entry["name"] for entry in source.interface["inputs"]]
    if not source.inputs or len(source.interface["source_inputs"]) != len(source.inputs):
        return ()
    with GATE.run(), torch.no_grad():
        batches = [main_inputs(source.interface, source.embedder, batch)
                   for batch in (source.inputs, other_batch(source.inputs, extra_rows, carries))]
    return tuple({name: t.detach().cpu().numpy() for name, t in zip(names, batch)} for batch in batches)


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
    # The flattened source inputs by name, when they are more than the graph's: an exporter
    # drops inputs the model never reads (pytorch-forecasting's dict batch has several).
    source_names: list[str] | None = None
    interface: dict = field(default_factory=dict)  # see ExplainableModule.interface
    main: LightModel | None = None  # what the passes rewrite: ``prepared``, or its part after the embeddings
    embedder: ExplainableModule | None = None

    def __post_init__(self) -> None:
        """Cut the model at its embedding lookups, where it has any (see :mod:`rewriter.embedding`)."""
        split = split_embeddings(self.prepared)
        names = [vi.name for vi in runtime_inputs(self.prepared.proto.graph)]
        given = self.source_names if self.source_names and set(names) <= set(self.source_names) else names
        self.interface = {"source_inputs": given, "embedder_inputs": [],
                          "outputs": self.report.outputs.as_dict() if self.report.outputs else None}

        def from_source(entry: dict) -> dict:  # a graph input's position among the source's inputs
            return {**entry, "source": given.index(names[entry["source"]])} if "source" in entry else entry

        if split is None:
            self.main = self.prepared
            kinds = {vi.name: vi.type.tensor_type.elem_type for vi in self.prepared.proto.graph.input}
            explained = [{"name": n, "role": "explained", "source": i} for i, n in enumerate(names)
                         if kinds.get(n) in _ONNX_FLOATS]
            context = [{"name": n, "role": "context", "source": i} for i, n in enumerate(names)
                       if kinds.get(n) not in _ONNX_FLOATS]
            self.interface["inputs"] = [from_source(entry) for entry in explained + context]
            return
        self.main = split.main
        self.interface["inputs"] = [from_source(entry.as_dict()) for entry in split.inputs]
        self.interface["embedder_inputs"] = [vi.name for vi in split.embedder.graph.input]
        held = {name: tensor_from_array(c.values) for name, c in self.prepared.held.items()
                if name in {t.name for t in split.embedder.graph.initializer}}
        self.embedder = import_onnx(split.embedder, "Embedder", held)


def _half_dtype(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.dtype | None:
    tensors = [*model.parameters(), *model.buffers(), *inputs]
    return next((t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.dtype in _HALF), None)


def _as_float32(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.float() if isinstance(t, torch.Tensor) and t.dtype in _HALF else t for t in inputs)


def _torch_source(model: nn.Module, call: _Call, exporter: str,
                  opset: int | None, fixed_batch: bool, extra_row: bool = False) -> _Source:
    """The model as its users call it (see :mod:`rewriter.interface`), flattened to named
    positional tensors and one output. A half precision model is exported from a float32 copy
    (what the result will be), and checked against both: tightly against the copy, within
    half precision against itself."""
    spec, flat = flatten_call(model, call.args, call.kwargs)
    rows = fixed_rows(spec.names, flat, call.fixed)
    half = _half_dtype(model, flat)
    export_model, inputs = (copy.deepcopy(model).float(), _as_float32(flat)) if half is not None else (model, flat)
    returned = run_model(export_model, *spec.rebuild(inputs))
    named = flatten_outputs(returned)
    if not named:
        raise ExportError(f"forward() returns {type(returned).__name__}, which holds no tensor",
                          fix="return the tensor to explain (a tuple, dict or ModelOutput of tensors also works)")
    choice = choose_outputs([(n, t.is_floating_point()) for n, t in named], call.output)
    if choice.rows:
        choice = dataclasses.replace(choice, reshape=reshape_note(named[choice.kept[0]][1].shape))
    flat_model = FlatModel(export_model, spec, choice, rows)
    outputs = choice.pick([t for _, t in named])
    exported = export_module(flat_model, tuple(inputs), exporter=exporter, opset=opset, fixed_batch=fixed_batch,
                             names=spec.names, outputs=outputs, extra_row=extra_row)
    # The export ran the model it exported on the inputs: verification takes those outputs.
    seen = torch_runner(flat_model, known=(tuple(inputs), exported.outputs))
    references: list[Reference] = []
    if half is not None:
        references.append(Reference("float32 copy of the model", seen))
    references.append(Reference("model" if half is None else f"model ({str(half).removeprefix('torch.')})",
                                seen if half is None else torch_runner(FlatModel(model, spec, choice), half), half))
    prepared, reused = normalize(exported.model, scope="model")  # FlatModel holds the model as .model
    report = RewriteReport("torch", exported.exporter, exported.fallback_reason, reused, notes=exported.notes,
                           outputs=choice)
    source = _Source(exported.model.proto, prepared, tuple(inputs), references, report,
                     _class_name(type(model).__name__), exported.fixed_batch, list(spec.names))
    if rows:
        source.interface["fixed"] = {spec.names[i]: row.tolist() for i, row in rows.items()}
    return source


def _onnx_inputs(model: onnx.ModelProto, args: tuple, kwargs: Mapping) -> tuple[torch.Tensor, ...]:
    """Example inputs for an ONNX model: positional in the graph's input order, or by graph
    input name (a dict, keyword arguments, the arrays of an ``.npz``)."""
    if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
        args, kwargs = (), args[0]
    names = [vi.name for vi in runtime_inputs(model.graph)]
    if kwargs:
        if args:
            raise InputError("example inputs are given both by position and by name", fix="give them one way")
        unknown, missing = sorted(set(kwargs) - set(names)), [n for n in names if n not in kwargs]
        if unknown or missing:
            raise InputError(f"the example inputs do not match the graph's inputs {names}"
                             f"{f': unknown {unknown}' if unknown else ''}{f': missing {missing}' if missing else ''}",
                             fix="name one array per graph input")
        args = tuple(kwargs[n] for n in names)
    if args and len(args) != len(names):
        raise InputError(f"{len(args)} example input(s) given; the graph takes {len(names)}: {names}",
                         fix="give one per graph input, in the graph's order or by name")
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args)


class _Selected:
    """A reference runner's outputs narrowed to the ones the result keeps, shaped like them."""

    def __init__(self, run: Callable, choice: OutputChoice) -> None:
        self.run, self.choice = run, choice
        self.label = getattr(run, "label", None)

    def __call__(self, inputs):
        outputs = self.run(inputs)
        self.label = getattr(self.run, "label", self.label)  # the engine it fell back to
        return self.choice.pick(outputs)


def _onnx_source(proto: onnx.ModelProto, args: tuple, kwargs: Mapping, output: Selector, dims: Mapping[str, int],
                 need_inputs: bool = True) -> _Source:
    """A half precision file is checked against onnxruntime on itself and, tightly, on an
    upcast float32 copy. The outputs the result does not keep are dropped from the graph
    before the passes; references run the whole file and are narrowed to the same."""
    prepared, reused = normalize(proto)
    choice = keep_onnx_outputs(prepared.proto, output)
    references: list[Reference] = []
    name = proto.graph.name
    report = RewriteReport("onnx", unshared_modules=reused, outputs=choice)
    if not need_inputs:
        return _Source(proto, prepared, (), references, report, _class_name(name))
    inputs = _as_float32(_onnx_inputs(prepared.proto, args, kwargs) or _random_inputs(prepared.proto, dims))
    half = half_precision_type(prepared.proto)
    if half is not None:
        upcast = onnx.ModelProto()
        upcast.CopyFrom(proto)
        upcast_model(upcast)
        references.append(Reference("onnxruntime on a float32 copy",
                                    _Selected(OnnxRunner(upcast, " on a float32 copy"), choice)))
    references.append(Reference("onnxruntime", _Selected(OnnxRunner(proto, held=prepared.held), choice),
                                ONNX_TO_TORCH_DTYPE.get(half)))
    return _Source(proto, prepared, inputs, references, report, _class_name(name))


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


@dataclass(frozen=True)
class _Call:
    """How the user calls the model (``rewrite(model, *args, **kwargs)``) and which output
    of it is explained."""

    args: tuple
    kwargs: Mapping
    output: Selector = None
    fixed: Sequence[str] = ()  # flat inputs baked in as one value per row


def _read(model: ModelSource, call: _Call, dims, exporter: str, opset: int | None, clock: _Clock,
          need_inputs: bool = True, fixed_batch: bool = True, extra_row: bool = False) -> _Source:
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise InputError(f"unknown exporter '{exporter}'", fix="use 'auto', 'dynamo' or 'torchscript'")
    if isinstance(model, nn.Module):
        with clock.stage("export", "exporting to ONNX"):
            return _torch_source(model, call, exporter, opset, fixed_batch, extra_row)
    if isinstance(model, (str, os.PathLike)) and is_exported_program(model):
        with clock.stage("export", "translating the torch.export archive to ONNX"):
            model, args, kwargs = read_exported_program(model)
        if not call.args and not call.kwargs:
            if not args and not kwargs:
                raise InputError("the torch.export archive carries no example inputs",
                                 fix="give example rows (CLI: --inputs ROWS.npz)")
            call = _Call(args, kwargs, call.output)
    with clock.stage("load", "reading the ONNX model"):
        return _onnx_source(_load_source(model), call.args, call.kwargs, call.output, dims or {}, need_inputs)


def _as_tuple(value) -> tuple[torch.Tensor, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def rewrite(model: ModelSource, *example_inputs, dims: Mapping[str, int] | None = None,
            exporter: str = "auto", opset: int | None = None, atol: float | None = None, rtol: float | None = None,
            dynamic_batch: bool = True, decompose_clips: bool = False, max_tensor_bytes: int = 1 << 30,
            output: Selector = None, fixed: Sequence[str] = (), check: bool = False, check_background=None,
            check_inputs=None, report: bool = False, progress: Progress | None = None,
            **example_kwargs) -> nn.Module | tuple[nn.Module, RewriteReport]:
    """Rewrite ``model`` into an equivalent ``torch.fx.GraphModule`` that SHAP's DeepExplainer
    and Captum's DeepLift explain exactly, verified against the source before it is returned.

    Args:
        model: a ``torch.nn.Module`` (``example_inputs`` required), or an ONNX model as a
            file path, ``bytes`` or ``onnx.ModelProto`` (``example_inputs`` optional).
        example_inputs, example_kwargs: what the model is called with, as its users call it:
            tensors, lists or tuples of tensors, a dict (or a tokenizer's ``BatchEncoding``)
            of keyword inputs, or keyword arguments (``rewrite(model, **batch)``); for an
            ONNX model, tensors in the graph's input order or by input name. The batch dim
            is dim 0. The result takes the tensors positionally (see
            :mod:`rewriter.interface` for their names and order).
        output: which output the result returns, by name or index among the model's flat
            outputs (a dict's or ``ModelOutput``'s keys, a tuple's indices): by default
            ``logits`` where there is one, else the first floating point output. One output
            comes back as ``[batch, k]``; a list of several, as a tuple (no explainer takes
            that: the report says so).
        fixed: inputs of a torch model that hold one value for every row (pytorch-forecasting's
            ``encoder_lengths`` when every window has the full length), by their flat name
            (``x.encoder_lengths``) or its last part: baked into the result, which checks on
            every call that they still hold it. A model that sizes its tensors by such a
            value (``int(lengths.max())``) can then be exported; without it, it is refused.
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
        if fixed and not isinstance(model, nn.Module):
            raise InputError("fixed= applies to torch models", fix="drop fixed=, or fix the values in the ONNX graph")
        call = _Call(tuple(example_inputs), example_kwargs, output, tuple(fixed))
        options = PassOptions(dynamic_batch, decompose_clips, max_tensor_bytes=max_tensor_bytes)
        module, source = _rewrite_first(model, call, dims, exporter, opset, options, Tolerance(atol, rtol), clock)
        info, inputs = source.report, source.inputs
        info.interface = module.interface
    info.nodes = classify(module)
    if check:
        with clock.stage("check", "checking additivity with the explainers"):
            background = _as_tuple(check_background) if check_background is not None else \
                tuple(t[:8] for t in other_batch(inputs, max(8 - len(inputs[0]), 0)))
            rows = _as_tuple(check_inputs) if check_inputs is not None else tuple(t[:3] for t in inputs)
            info.check = self_check(module, background, rows)
    info.timings = clock.timings
    return (module, info) if report else module


# The ways a torch model is exported, in order, while the rewrite of the previous one fails
# for the export's sake: at a fixed batch made batch-free (fastest); with a dynamic batch
# traced at one row more than the example (what a model cached for the example's batch size
# is rebuilt from the symbolic one); at the example's batch; by the TorchScript exporter.
_ATTEMPTS = ({"fixed_batch": True}, {"fixed_batch": False, "extra_row": True}, {"fixed_batch": False},
             {"fixed_batch": False, "exporter": "torchscript"})


def _rewrite_first(model: ModelSource, call: _Call, dims, exporter: str, opset: int | None, options: PassOptions,
                   tolerance: Tolerance, clock: _Clock) -> tuple[nn.Module, _Source]:
    """The rewrite of the first export of ``model`` whose rewrite verifies (see ``_ATTEMPTS``);
    an ONNX source has one."""
    notes: list[str] = []
    if not isinstance(model, nn.Module):
        attempts = _ATTEMPTS[:1]
    elif exporter == "torchscript":
        attempts = _ATTEMPTS[-1:]
    else:
        attempts = _ATTEMPTS if exporter == "auto" else _ATTEMPTS[:-1]
    for number, attempt in enumerate(attempts):
        settings = {**attempt, "exporter": attempt.get("exporter", exporter)}
        source = _read(model, call, dims, settings["exporter"], opset, clock, fixed_batch=settings["fixed_batch"],
                       extra_row=settings.get("extra_row", False))
        source.report.notes[:0] = notes
        try:
            return _rewrite_source(source, options, tolerance, clock), source
        except ShapRewriteError as exc:
            if number == len(attempts) - 1 or isinstance(exc, (UnsupportedOpError, InputError)):
                raise _as_export_error(exc, source) from exc
            notes.append(dynamic_batch_note(exc.message) if source.fixed_batch else
                         f"{source.report.exporter} export at {'one row more than ' if attempt.get('extra_row') else ''}"
                         f"the example's batch not used: {exc.message}")
    raise AssertionError("unreachable: the last attempt raises")


def _as_export_error(exc: ShapRewriteError, source: _Source) -> ShapRewriteError:
    """A torch model whose export holds its example's batch size: the export is at fault, not
    the rewrite (a model caching batch-sized tensors on itself, built on its first call,
    exports them as constants)."""
    if not isinstance(exc, BatchHeldError) or source.report.source != "torch":
        return exc
    return ExportError(f"the model's export holds the batch size of its example: {exc.message}",
                       fix="the model sizes something by the batch outside its computation (a tensor cached on the "
                           "module at its first call, a Python size); clear such caches before rewriting, or build "
                           "them in forward() from the input's shape")


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
    options = dataclasses.replace(options, feeds=_feeds(source, plan.extra_rows, plan.carries))
    module = _passes_and_import(source, options, clock)
    with clock.stage("verify", "verifying against the source"):
        source.report.verification = verify(_AsSource(module), source.references, source.inputs,
                                            source.report.output_names, tolerance, plan.extra_rows, plan.carries)
        module.check_batch = _check_batch(module, source.inputs)
    return module


def _check_batch(module: ExplainableModule, inputs: tuple[torch.Tensor, ...]) -> dict:
    """Two rows of the inputs (the whole of any input that carries no batch), saved with the
    module and its outputs on them (see ``rewriter.artifact``)."""
    rows = min((len(t) for t in inputs if t.dim()), default=0)
    kept = [t[:2].clone() if t.dim() and len(t) == rows else t.clone() for t in inputs]
    with GATE.run(), torch.no_grad():
        try:
            module(*module.embed(*kept))
        except ShapRewriteError:  # a batch kept fixed: all of its rows
            kept = [t.clone() for t in inputs]
    return {"inputs": kept}


class _AsSource(nn.Module):
    """A rewritten module called as its source is: ``module(*module.embed(*inputs))``."""

    def __init__(self, module: ExplainableModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor):
        return self.module(*self.module.embed(*inputs))


def _passes_and_import(source: _Source, options: PassOptions, clock: _Clock) -> nn.Module:
    info = source.report
    with collector_paused():
        with clock.stage("passes", "running passes"):
            rewritten, info.passes = run_passes(source.main, options)
        with clock.stage("import", "importing into torch"):
            held = {name: tensor_from_array(constant.values) for name, constant in rewritten.held.items()}
            module = import_onnx(rewritten.proto, source.class_name, held)
            module.interface = source.interface
            if source.embedder is not None:
                module.add_module("embedder", copy.deepcopy(source.embedder))
            return module


def inspect(model: ModelSource, *example_inputs, dims: Mapping[str, int] | None = None,
            exporter: str = "auto", opset: int | None = None, dynamic_batch: bool = True,
            decompose_clips: bool = False, max_tensor_bytes: int = 1 << 30, output: Selector = None,
            progress: Progress | None = None, **example_kwargs) -> RewriteReport:
    """What :func:`rewrite` would do, without verifying or returning a model: each pass's
    changes, how each explainer would treat each node, and every unsupported op (in
    ``report.unsupported`` rather than raised)."""
    clock = _Clock(progress)
    source = _read(model, _Call(tuple(example_inputs), example_kwargs, output), dims, exporter, opset, clock,
                   need_inputs=False)
    try:
        options = PassOptions(dynamic_batch, decompose_clips, max_tensor_bytes=max_tensor_bytes)
        module = _passes_and_import(source, options, clock)
        source.report.nodes, source.report.interface = classify(module), module.interface
    except UnsupportedOpError as exc:
        source.report.unsupported = exc.ops
    source.report.timings = clock.timings
    return source.report
