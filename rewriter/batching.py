"""A model exported at a fixed batch made batch-free (the export's own machinery, see
``rewriter.export``): the exporter runs at a batch of a prime number of rows, the shape
arithmetic is folded, and every small integer constant that still holds a multiple of that
number is made to follow the batch at run time, or the export is refused."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir

from .onnxkit.facts import BATCH, dims_of
from .onnxkit.folding import fold_within
from .onnxkit.graph import Builder, shared_names
from .onnxkit.shapes import inferred_types
from .onnxkit.weights import export_light

# What shape arithmetic the folder may evaluate: vectors of a few dims. Fewer elements than
# the export batch, so no folded value can hold one row per example.
_SHAPE_ELEMENTS = 64


class BatchBaked(ValueError):
    """A graph exported at a fixed batch still depends on it somewhere the rewrite cannot
    make follow the batch."""


def _multiples(values, rows: int) -> list[int]:
    return [i for i, v in enumerate(values) if v and v % rows == 0]


def fold_shape_arithmetic(model: ir.Model) -> None:
    """Fold what computes the shapes of a model exported at a fixed batch, in place, so that
    :func:`any_batch` finds them as constants."""
    fold_within(model, _SHAPE_ELEMENTS, _SHAPE_ELEMENTS)


def any_batch(graph: gs.Graph, rows: int) -> list[str]:
    """Make ``graph``, exported at a batch of ``rows`` (its shape arithmetic folded, see
    :func:`fold_shape_arithmetic`), run at any batch; the changed nodes.

    ``rows`` is a prime larger than the graph's other dims' factors in practice (97), so an
    integer that is a multiple of it counts examples: ``k * rows`` is ``k`` per example. In
    a small integer constant (a shape, a range's limit) that one entry follows the batch: a
    Reshape target's becomes -1 (its other entries are static, so -1 is the batch's share
    again), or 0 where the batch keeps its axis; any other reader gets the constant with the
    entry computed from the batch at run time. Raises :class:`BatchBaked` for anything else
    holding a multiple of ``rows`` (a constant with a row per example, an attribute). Every
    value keeps its exported shape with the batch written in (see :func:`per_example`).
    """
    # Every value's shape at the export batch: the exporter records most, not those inside
    # the functions it inlines (attention's reshapes).
    exported = inferred_types(export_light(graph).proto)
    exported_shapes = {name: dims_of(tp) for name, tp in exported.items()}
    source = next((t for t in graph.inputs if t.shape and t.shape[0] == rows), None)
    changed: list[str] = []
    with shared_names(graph):
        batch = _RunTimeBatch(graph, source)
        for tensor, _, values in _small_int_constants(graph):
            found = _multiples(values.reshape(-1).tolist(), rows)
            if not found:
                continue
            if len(found) > 1:
                raise BatchBaked(f"{_readers(tensor)} read {values.tolist()}, the batch in more than one place")
            following = None  # the constant computed from the batch, shared by its readers
            for node in list(tensor.outputs):
                b = Builder(graph, node.name, np.int64)
                if node.op == "Reshape" and node.inputs[1] is tensor:
                    node.inputs[1] = b.ints(_reshape_target(node, values.tolist(), found[0], rows, exported_shapes),
                                            "any_batch")
                else:
                    if following is None:
                        following = batch.share(b, values, found[0], rows)
                    for k, read in enumerate(node.inputs):
                        if read is tensor:
                            node.inputs[k] = following
                changed.append(node.name)
    graph.cleanup()
    _refuse_baked(graph, rows)
    for name, tensor in graph.tensors().items():
        shape = exported_shapes.get(name) if isinstance(tensor, gs.Variable) else None
        if shape is not None:
            tensor.shape = per_example(shape, rows)
            if tensor.dtype is None and exported[name].tensor_type.elem_type:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(exported[name].tensor_type.elem_type)
    return changed


class _RunTimeBatch:
    """The batch at run time, from the first input that carries it: made at its first use."""

    def __init__(self, graph: gs.Graph, source: gs.Tensor | None) -> None:
        self.graph, self.source = graph, source
        self.rows: gs.Variable | None = None

    def share(self, b: Builder, values: np.ndarray, i: int, rows: int) -> gs.Variable:
        """``values`` (an integer constant) with its flat entry ``i``, ``k * rows``, computed as
        ``k`` times the batch."""
        if self.source is None:
            raise BatchBaked(f"'{b.base}' reads the export batch, and no input carries it")
        if self.rows is None:
            self.rows = Builder(self.graph, "batch", np.int64).node("Shape", [self.source], "rows",
                                                                    {"start": 0, "end": 1})
        flat = values.reshape(-1).tolist()
        share = self.rows if flat[i] == rows else b.node("Mul", [self.rows, b.ints([flat[i] // rows], "k")],
                                                         "batch_share")
        parts = [*([b.ints(flat[:i], "head")] if i else []), share,
                 *([b.ints(flat[i + 1:], "tail")] if i + 1 < len(flat) else [])]
        vector = b.node("Concat", parts, "any_batch", {"axis": 0}) if len(parts) > 1 else share
        if values.ndim != 1:
            vector = b.node("Reshape", [vector, b.ints(list(values.shape), "shape")], "any_batch_shape")
        if values.dtype != np.int64:
            vector = b.node("Cast", [vector], "any_batch_cast", {"to": onnx.helper.np_dtype_to_tensor_dtype(values.dtype)})
        return vector


def _reshape_target(node: gs.Node, vector: list[int], i: int, rows: int, exported_shapes) -> list[int]:
    """The target with its entry ``i`` (k times the export batch) following the batch: -1
    takes the batch's share when it is free; else 0 copies the input's batch dim, where the
    input had it on the same axis."""
    data = exported_shapes.get(node.inputs[0].name) or ()
    if -1 not in vector:
        return [*vector[:i], -1, *vector[i + 1:]]
    if vector[i] == rows and len(data) > i and data[i] == rows and 0 not in vector:
        node.attrs["allowzero"] = 0  # no other 0 in the target, so it meant nothing before
        return [*vector[:i], 0, *vector[i + 1:]]
    raise BatchBaked(f"Reshape '{node.name}' has a shape of {vector}: -1 is taken, and the batch moves")


def per_example(shape, rows: int) -> list | None:
    """An exported shape with its one multiple of ``rows`` written as the batch (``k*rows``
    as ``"k*batch"``, as measuring writes it); None, for inference or measuring to fill,
    when more than one dim is a multiple. ONNX's inference cannot follow the batch through
    a Reshape to -1, and would leave every value after the first one unknown."""
    found = _multiples([d if isinstance(d, int) else 0 for d in shape], rows)
    if len(found) > 1:
        return None
    if found:
        (i,) = found
        k = shape[i] // rows
        return [*shape[:i], BATCH if k == 1 else f"{k}*{BATCH}", *shape[i + 1:]]
    return list(shape)


def _refuse_baked(graph: gs.Graph, rows: int) -> None:
    for tensor, shape, values in _small_int_constants(graph, every=True):
        if _multiples(shape, rows):
            raise BatchBaked(f"the constant '{tensor.name}' read by {_readers(tensor)} has a row per example "
                             f"(shape {list(shape)})")
        if values is not None and _multiples(values.reshape(-1).tolist(), rows):
            raise BatchBaked(f"{_readers(tensor)} read {values.tolist()}, which holds the export batch")
    for node in graph.nodes:
        for name, value in node.attrs.items():
            ints = value if isinstance(value, (list, tuple)) else [value]
            if all(isinstance(v, int) for v in ints) and _multiples(ints, rows):
                raise BatchBaked(f"{node.op} '{node.name}' has {name}={value}, which holds the export batch")


def _small_int_constants(graph: gs.Graph, every: bool = False) -> list[tuple[gs.Tensor, tuple, np.ndarray | None]]:
    """The tensors holding constant integers of a few elements (a shape, an index, a range's
    limit), with their shapes and values: initializers and Constant nodes' outputs (the
    folder writes what it folds as nodes). ``every``: all constants, with None for the
    values of the rest."""
    found = []
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            value = tensor
        elif tensor.inputs and tensor.inputs[0].op == "Constant" and tensor.inputs[0].attrs:
            value = next(iter(tensor.inputs[0].attrs.values()))
        else:
            continue
        shape = tuple(value.shape if isinstance(value, gs.Constant) else np.shape(value))
        small = math.prod(shape) <= _SHAPE_ELEMENTS  # before reading: values load lazily
        array = np.asarray(value.values if isinstance(value, gs.Constant) else value) if small else None
        if array is not None and array.dtype.kind not in "iu":
            array = None
        if array is not None or every:
            found.append((tensor, shape, array))
    return found


def _readers(tensor: gs.Tensor) -> str:
    return ", ".join(f"{n.op} '{n.name}'" for n in tensor.outputs) or f"nothing ('{tensor.name}')"
