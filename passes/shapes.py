"""Measure each value's type and shape by running the graph (see ``rewriter.onnxkit.shapes``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ..onnxkit.functions import attach_functions
from ..onnxkit.graph import batch_dims
from ..onnxkit.shapes import log, measure
from ..onnxkit.weights import export_light
from .base import PassOptions, PassResult, graph_pass


@graph_pass
def measure_shapes(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Record every value's type and shape as measured by running the graph on the check
    inputs at two batch sizes (see the module notes). Changes no node; the result's note
    says where the shapes came from."""
    result = PassResult()
    if not options.feeds:
        result.note = "shapes inferred by ONNX (no inputs to measure them with)"
        return result
    batch = batch_dims(graph)
    unknown = {tensor.name for node in graph.nodes for tensor in node.outputs if not _known(tensor, batch)}
    if not unknown:
        result.note = "shapes inferred by ONNX, every one in numbers and the batch"
        _note_specialised(result, graph, options.feeds)
        return result
    light = export_light(graph)
    attach_functions(light.proto)
    found = measure(light.proto, options.feeds, light.held, unknown)
    if isinstance(found, str):
        log.debug("shapes not measured: %s", found)
        result.note = f"shapes inferred by ONNX: {found}"
        return result
    tensors = graph.tensors()
    for name, (dtype, dims) in found.items():
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Variable):
            tensor.dtype, tensor.shape = dtype, dims
    # The first input with rows tells the batch; a graph of 0-d inputs has none (0).
    sizes = sorted({next((len(v) for v in feed.values() if np.ndim(v)), 0) for feed in options.feeds})
    result.note = (f"shapes measured at batch {' and '.join(map(str, sizes))} where ONNX's inference left a dim "
                   f"unknown ({len(found)} values)")
    _note_specialised(result, graph, options.feeds)
    return result


def _known(tensor: gs.Variable, batch: set) -> bool:
    """Whether inference already gave ``tensor`` a type and dims that are numbers or the batch
    (what measuring would find: inference never disagreed with it on the architectures tested)."""
    return tensor.dtype is not None and tensor.shape is not None \
        and all(isinstance(d, int) or d in batch or (isinstance(d, str) and d.partition("*")[2] in batch)
                for d in tensor.shape)


def _note_specialised(result: PassResult, graph: gs.Graph, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
    fixed = _specialise_inputs(graph, feeds)
    if fixed:
        result.note += "; " + ", ".join(fixed) + " (the rewrite serves these sizes)"


def _specialise_inputs(graph: gs.Graph, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """Give the graph inputs' symbolic non-batch dims the size the check inputs have (the
    same in every feed); the descriptions of what was fixed."""
    fixed = []
    for tensor in graph.inputs:
        sizes = [np.shape(feed[tensor.name]) for feed in feeds if tensor.name in feed]
        if not sizes or not tensor.shape:
            continue
        shape = list(tensor.shape)
        for axis, dim in enumerate(shape):
            same = {s[axis] for s in sizes if len(s) == len(shape)}
            if axis > 0 and isinstance(dim, str) and len(same) == 1:
                shape[axis] = int(same.pop())
                fixed.append(f"input '{tensor.name}' dim {axis} ('{dim}') fixed at {shape[axis]}")
        tensor.shape = shape
    return fixed
