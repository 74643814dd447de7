"""ONNX -> ``torch.fx.GraphModule``: a faithful translation, one ONNX node to one fx node.

Values flowing through the import are either ``fx.Node`` (computed at run time) or
``torch.Tensor`` (known at import time). A node whose inputs are all known is computed
right away by the same converter, so shape arithmetic and constant subgraphs fold into
constants without a separate folding pass.
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import onnx
import torch
import torch.fx as fx
from torch import nn

from . import functional
from .converters import CONVERTERS, op_key
from .dims import Dims, items_of
from .errors import ConversionError, UnsupportedOpError
from .modules import GradientFree, is_linear_layer, keeps_meaning_when_batch_moves
from .naming import fresh_name, sanitize
from .onnx_values import ONNX_TO_TORCH_DTYPE, attribute_value, tensor_from_proto
from .onnxkit.facts import dims_of, opset_of
from .onnxkit.graph import cuts_gradient, leading_batch
from .onnxkit.weights import light_copy
from .result import ExplainableModule

# fx.Node: computed at run time; Tensor: known now; Dims: a shape known element by element;
# list: an ONNX sequence.
Value = fx.Node | torch.Tensor | Dims | list | None


@dataclass(frozen=True)
class TensorInfo:
    """What shape inference knows of a value: dtype, and dims (int, symbol name, or None)."""

    dtype: torch.dtype | None
    shape: tuple[int | str | None, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


_UNKNOWN = TensorInfo(None, None)


def _info_from_type(tp: onnx.TypeProto) -> TensorInfo:
    if not tp.HasField("tensor_type"):
        return _UNKNOWN
    tt = tp.tensor_type
    dtype = ONNX_TO_TORCH_DTYPE.get(tt.elem_type)
    if not tt.HasField("shape"):
        return TensorInfo(dtype, None)
    return TensorInfo(dtype, tuple(dims_of(tp)))


class NodeContext:
    """What a converter sees of one ONNX node, and how it emits torch code for it."""

    def __init__(self, importer: Importer, node: onnx.NodeProto) -> None:
        self._importer = importer
        self.node = node
        self.name = node.name
        self.op_type = node.op_type
        self.key = op_key(node.domain, node.op_type)  # what the converter was registered as
        self.raw: list[Value] = [importer.value(n) if n else None for n in node.input]
        self._attrs = {a.name: a for a in node.attribute}
        # Every run-time input carries no gradient (decided by a comparison of the inputs, or
        # context): a module here would be hooked by explainers on a tensor without one.
        self.gradient_free = all(v in importer.gradient_free for v in self.raw if isinstance(v, fx.Node))

    # -- reading the node -------------------------------------------------------------

    @property
    def opset(self) -> int:
        return self._importer.opset

    def attr(self, name: str, default: Any = None) -> Any:
        return attribute_value(self._attrs[name]) if name in self._attrs else default

    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    @property
    def inputs(self) -> list[Value]:
        return [self.input(i) for i in range(len(self.raw))]

    def input(self, i: int) -> Value:
        """Input ``i`` as a tensor (a Dims becomes a run-time int64 tensor), or None."""
        value = self.raw[i] if i < len(self.raw) else None
        return self._importer.dims_tensor(value) if isinstance(value, Dims) else value

    def dims(self, i: int) -> tuple[tuple, bool] | None:
        """Input ``i`` element by element ``(items, is_scalar)`` when it is a Dims or a small
        constant int tensor; items are ints or fx nodes yielding ints."""
        return items_of(self.raw[i]) if i < len(self.raw) else None

    def int_list(self, i: int) -> list | None:
        """Input ``i`` as a list of ints and int-yielding fx nodes, when it is a 1-D shape
        known element by element; for passing shapes straight to torch calls."""
        found = self.dims(i)
        return list(found[0]) if found is not None and not found[1] else None

    def readers(self, i: int) -> int:
        """How many inputs of nodes (and graph outputs) read input ``i``'s value."""
        return self._importer.readers[self.node.input[i]]

    def submodule(self, value: Value) -> nn.Module | None:
        """The module an fx node calls, if it is a module call."""
        if isinstance(value, fx.Node) and value.op == "call_module":
            return self._importer.root.get_submodule(value.target)
        return None

    def const(self, i: int) -> torch.Tensor | None:
        """Input ``i`` if it is known at import time, else None."""
        value = self.raw[i] if i < len(self.raw) else None
        return value if isinstance(value, torch.Tensor) else None

    def ints(self, i: int, attr: str | None = None) -> list[int] | None:
        """An int list from attribute ``attr`` (older opsets) or constant input ``i`` (newer)."""
        if attr is not None and attr in self._attrs:
            return self.attr(attr)
        value = self.const(i)
        return None if value is None else functional.ints(value)

    def info(self, i: int) -> TensorInfo:
        if i >= len(self.node.input) or not self.node.input[i]:
            return _UNKNOWN
        value = self.raw[i]
        if isinstance(value, torch.Tensor):
            return TensorInfo(value.dtype, tuple(value.shape))
        if isinstance(value, Dims):
            return TensorInfo(torch.int64, () if value.scalar else (len(value.items),))
        return self._importer.infos.get(self.node.input[i], _UNKNOWN)

    def rank(self, i: int) -> int:
        rank = self.info(i).rank
        if rank is None:
            self.fail(f"the rank of input {i} ('{self.node.input[i]}') is unknown",
                      "export the model with static ranks, or run onnx shape inference on it first")
        return rank  # type: ignore[return-value]

    def fail(self, message: str, fix: str | None = None) -> None:
        raise ConversionError(message, fix=fix, node=self.name, op_type=self.op_type)

    def require(self, condition: bool, message: str, fix: str | None = None) -> None:
        if not condition:
            self.fail(message, fix)

    def require_const(self, i: int, what: str) -> torch.Tensor:
        value = self.const(i)
        if value is None:
            self.fail(f"{what} (input {i}) must be a constant", "fold the value into the graph as an initializer")
        return value  # type: ignore[return-value]

    # -- emitting code ----------------------------------------------------------------

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Value:
        """``fn(*args, **kwargs)``: computed now when every input is known, else an fx node."""
        return self._importer.emit("call_function", fn, args, kwargs)

    def method(self, name: str, obj: Value, *args: Any, **kwargs: Any) -> Value:
        return self._importer.emit("call_method", name, (obj, *args), kwargs)

    def module(self, module: nn.Module, *args: Value, suffix: str = "") -> Value:
        """Call ``module`` as a leaf submodule named after this node (plus ``suffix``).

        Explainers pair each row of a module's input with its reference row along dim 0, so
        an input whose batch sits on another axis has it moved to the front around the
        module (two linear ``movedim`` calls), where the module's meaning allows.
        """
        if not any(isinstance(a, fx.Node) for a in args):
            with torch.no_grad():
                return module(*args)
        if self.gradient_free and not any(True for _ in module.parameters()):
            module = GradientFree(module)
        name = self._importer.add_module(self.name + suffix, module)
        first = args[0]
        axis = first.meta.get("batch_axis") if isinstance(first, fx.Node) else None
        rank = len(first.meta.get("shape") or ()) if isinstance(first, fx.Node) else 0
        if not axis or not keeps_meaning_when_batch_moves(module, axis, rank):
            return self._importer.tag(self._importer.graph.call_module(name, tuple(args)))
        moved = self.method("movedim", first, axis, 0)
        result = self._importer.tag(self._importer.graph.call_module(name, (moved, *args[1:])))
        return self.method("movedim", result, 0, axis)

    def batch_axis(self, i: int) -> int | None:
        """The axis of input ``i`` that is the batch, when exactly one is known to be."""
        return self._importer.batch_axis(self.info(i))

    def getitem(self, value: Value, index: Any) -> Value:
        return self.call(operator.getitem, value, index)


class Importer:
    """Builds one GraphModule from one ONNX model. Use :func:`import_onnx`."""

    def __init__(self, model: onnx.ModelProto, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        self.model = model
        tensors = tensors or {}
        graph = model.graph
        self.initializers: dict[str, torch.Tensor] = {
            init.name: tensors[init.name] if init.name in tensors else tensor_from_proto(init)
            for init in graph.initializer}
        self.infos: dict[str, TensorInfo] = {vi.name: _info_from_type(vi.type)
                                             for vi in [*graph.input, *graph.value_info, *graph.output]}
        self.readers = collections.Counter([name for n in graph.node for name in n.input] +
                                           [o.name for o in graph.output])
        runtime_inputs = [i for i in graph.input if i.name not in self.initializers]
        self._batch_dims = leading_batch([self.infos[i.name].shape for i in runtime_inputs])
        self._symbolic_batch = any(isinstance(d, str) for d in self._batch_dims)
        self.opset = opset_of(model)
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.values: dict[str, Value] = {}
        self._attr_names: set[str] = set()
        self._tensor_names: dict[int, str] = {}
        self._materialized: dict[int, fx.Node] = {}
        self._param_ids: set[int] = set()
        self._dims_tensors: dict[int, fx.Node] = {}
        self.gradient_free: set[fx.Node] = set()  # run-time values that carry no gradient (see NodeContext)
        self.current_node: str | None = None  # names the fx nodes emitted for it
        self.current_source: tuple[str, str] | None = None  # its ONNX name and op type

    # -- values ---------------------------------------------------------------------

    def value(self, name: str) -> Value:
        return self.values[name]

    def set_value(self, name: str, value: Value) -> None:
        self.values[name] = value
        if isinstance(value, torch.Tensor):
            self._tensor_names.setdefault(id(value), name)

    def _unique_attr(self, base: str) -> str:
        # Not a name the result's class has (a layer named ``embed`` would hide ExplainableModule.embed).
        name = fresh_name(base, lambda name: name in self._attr_names or hasattr(self.root, name)
                          or hasattr(ExplainableModule, name))
        self._attr_names.add(name)
        return name

    def add_module(self, base: str, module: nn.Module) -> str:
        name = self._unique_attr(sanitize(base))
        self.root.add_module(name, module)
        return name

    def dims_tensor(self, dims: Dims) -> fx.Node:
        """The run-time int64 tensor of a Dims, built once."""
        if id(dims) not in self._dims_tensors:
            self._dims_tensors[id(dims)] = self.emit("call_function", functional.onnx_dims,
                                                     (list(dims.items), dims.scalar), {})
        return self._dims_tensors[id(dims)]

    def materialize(self, value: Any) -> Any:
        """Turn known tensors in an argument into something an fx node can hold.

        A known tensor stays a tensor (a buffer, or a parameter for float weights), 0-d ones
        included: the function receives exactly the type ONNX gives the value. Converters
        that want a Python number for readability (``x * 0.5``) ask for one explicitly
        (``operand`` in converters/arithmetic.py).
        """
        if isinstance(value, torch.Tensor):
            node = self._materialized.get(id(value))
            if node is None:
                base = sanitize(self._tensor_names.get(id(value), "const"))
                name = self._unique_attr(base)
                if id(value) in self._param_ids:
                    self.root.register_parameter(name, nn.Parameter(value, requires_grad=True))
                else:
                    self.root.register_buffer(name, value)
                node = self.graph.get_attr(name)
                self._materialized[id(value)] = node
            return node
        if isinstance(value, Dims):
            return self.dims_tensor(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.materialize(v) for v in value)
        if isinstance(value, dict):
            return {k: self.materialize(v) for k, v in value.items()}
        return value

    def emit(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Value:
        if not _contains_node((args, kwargs)):
            fn = getattr(args[0], target) if kind == "call_method" else target
            call_args = args[1:] if kind == "call_method" else args
            with torch.no_grad():
                return fn(*call_args, **kwargs)
        args = self.materialize(args)
        kwargs = self.materialize(kwargs)
        node = self.tag(self.graph.create_node(kind, target, args, kwargs, name=self.current_node))
        if kind == "call_function" and getattr(target, "__module__", None) == functional.__name__:
            # Keeps the helper one call when a saved model is loaded and re-traced.
            node.meta["is_wrapped"] = True
        return node

    def tag(self, node: fx.Node) -> fx.Node:
        """Record the ONNX node an fx node computes (``meta["onnx"]``: name, op type), so a
        failure at run time can name it."""
        if self.current_source is not None:
            node.meta["onnx"] = self.current_source
        return node

    # -- the import -----------------------------------------------------------------

    def run(self, class_name: str) -> ExplainableModule:
        graph = self.model.graph
        self._check_supported(CONVERTERS)
        for name, tensor in self.initializers.items():
            if tensor.is_floating_point() and tensor.numel() > 1:
                self._param_ids.add(id(tensor))
            self.set_value(name, tensor)
        for inp in graph.input:
            if inp.name not in self.initializers:
                self.set_value(inp.name, self._placeholder(inp.name))
        for node in graph.node:
            self._convert(node, CONVERTERS[op_key(node.domain, node.op_type)])
        results = [self.materialize(self.values[o.name]) for o in graph.output]
        self.graph.output(results[0] if len(results) == 1 else tuple(results))
        self._isolate_module_inputs()
        # Every op emitted is pure: only the inputs and the output must stay.
        self.graph.eliminate_dead_code(is_impure_node=lambda node: node.op in ("placeholder", "output"))
        module = ExplainableModule(self.root, self.graph, class_name)  # keeps only what the graph uses
        module.eval()
        light, _ = light_copy(self.model, threshold=0)
        module.onnx_graph, module.onnx_tensors = light.SerializeToString(), dict(self.initializers)
        return module

    def _placeholder(self, name: str) -> fx.Node:
        """A graph input, checked against the shape the model was rewritten for."""
        value = self.graph.placeholder(self._unique_attr(sanitize(name)))
        dtype = value.meta["dtype"] = self.infos[name].dtype
        shape = self.infos[name].shape
        if shape and any(isinstance(d, int) for d in shape):
            value = self.emit("call_function", functional.check_input, (value, list(shape), name), {})
        if dtype is not None and not dtype.is_floating_point:
            self.gradient_free.add(value)  # context
        return value

    def batch_axis(self, info: TensorInfo) -> int | None:
        """The axis of a value that is the batch (a graph input's symbolic leading dim), when
        exactly one is."""
        if not info.shape:
            return None
        axes = [i for i, d in enumerate(info.shape) if isinstance(d, str) and d in self._batch_dims]
        return axes[0] if len(axes) == 1 else None

    def _describe(self, node: fx.Node, info: TensorInfo) -> None:
        """Record the value's dtype, shape and batch axis on its fx node, for module calls
        and reports; ``batch_leading`` False marks a value whose rows are not the batch's."""
        node.meta.setdefault("dtype", info.dtype)
        if not info.shape:
            return
        node.meta.setdefault("shape", info.shape)
        axis = self.batch_axis(info)
        node.meta.setdefault("batch_axis", axis)
        if axis is None and isinstance(info.shape[0], int) and self._symbolic_batch:
            node.meta.setdefault("batch_leading", False)  # a fixed size where the batch belongs

    def _isolate_module_inputs(self) -> None:
        """Give each nonlinear module an input tensor of its own.

        Captum's DeepLift hooks a module's input *tensor*: when that tensor also feeds
        another consumer, or is the output of another hooked module, the hooks of the two
        overwrite each other's gradients and the attributions stop summing up. A view per
        consumer costs nothing and keeps every module's gradient separate.
        """
        for node in list(self.graph.nodes):
            if node.op != "call_module" or is_linear_layer(self.root.get_submodule(node.target)):
                continue
            source = node.args[0]
            if not isinstance(source, fx.Node):
                continue
            if len(source.users) > 1 or source.op in ("call_module", "placeholder") \
                    or source.target is functional.check_input:  # returns the input itself
                with self.graph.inserting_before(node):
                    private = self.graph.call_method("view_as", (source, source))
                    private.name = self.graph._graph_namespace.create_name(f"{node.target}_input", None)
                    private.meta.update(source.meta)
                node.replace_input_with(source, private)

    def _check_supported(self, converters: dict) -> None:
        missing: dict[str, str] = {}
        for node in self.model.graph.node:
            key = op_key(node.domain, node.op_type)
            if key not in converters:
                missing.setdefault(key, node.name)
        if missing:
            raise UnsupportedOpError(missing)

    def _convert(self, node: onnx.NodeProto, convert: Callable[[NodeContext], Any]) -> None:
        ctx = NodeContext(self, node)
        self.current_node = sanitize(node.name)
        self.current_source = (node.name, node.op_type)
        try:
            result = convert(ctx)
        except ConversionError:
            raise
        except Exception as exc:  # a converter met a case it does not handle
            raise ConversionError(f"could not translate the node: {type(exc).__name__}: {exc}",
                                  fix="check the node's attributes against the ONNX spec, or file an issue "
                                      "with the model", node=node.name, op_type=node.op_type) from exc
        outputs = [o for o in node.output]
        if not isinstance(result, tuple):
            result = (result,)
        for index, (name, value) in enumerate(zip(outputs, result)):
            if name:
                self.set_value(name, value)
                if isinstance(value, fx.Node):
                    self._describe(value, self.infos.get(name, _UNKNOWN))
                    if ctx.gradient_free or cuts_gradient(node.op_type, {"to": ctx.attr("to")}, index):
                        self.gradient_free.add(value)
        for name in outputs[len(result):]:
            if name:
                raise ConversionError(f"output '{name}' of the node is not supported",
                                      fix="remove the consumers of that output", node=node.name,
                                      op_type=node.op_type)


def _contains_node(value: Any) -> bool:
    if isinstance(value, (fx.Node, Dims)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_node(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_node(v) for v in value.values())
    return False


def import_onnx(model: onnx.ModelProto, class_name: str = "ExplainableModel",
                tensors: Mapping[str, torch.Tensor] | None = None) -> ExplainableModule:
    """Translate a shape-inferred ONNX model into an equivalent ``torch.fx.GraphModule``.

    ``tensors`` gives initializers' values by name where ``model`` holds a placeholder (an
    artifact keeps all of them apart from the graph, the passes the large ones); the rest
    are read from ``model``.
    """
    return Importer(model, tensors).run(sanitize(class_name) if not class_name.isidentifier() else class_name)
