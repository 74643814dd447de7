"""What the passes and the importer know of each value's type and shape.

**Measured** where the graph can run: onnxruntime runs it on the check inputs at two batch
sizes with every value exposed as an output. A dim of the same size in both runs is
static; one that equals the batch in both runs is the batch, on whatever axis transposes
and reshapes put it; ``k`` times the batch is written ``"k*batch"``; anything else is
unknown. Symbolic non-batch dims of the inputs (a sequence length) take the example
inputs' size, so the rewrite is specialised to it (and says so).

**Inferred** by ONNX's own shape inference, with data propagation: before measuring, for
graphs onnxruntime cannot run, and for the nodes passes add later, whose inputs' shapes
are known by then so no symbolic arithmetic is needed.

(onnxruntime's symbolic shape inference, used before, writes the model into the working
directory whenever it cannot finish, and was the largest single cost of a rewrite.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx
import onnx.inliner
import onnx_graphsurgeon as gs

from ..errors import describe
from .facts import Dim, dims_of
from .weights import export_light, light_copy, ort_session

log = logging.getLogger("shaprewrite")



# Shape inference reads the values of small constants only (a shape, axes, a float cast to a
# shape): larger ones go to it as inputs of their type and shape, not serialized (the
# weights of a MobileNet, each under the size weights are held apart at, were copied three
# times per inference: +37 MB at its peak).
READ_BYTES = 1 << 12


def inferred_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Value name -> type (with shape) from ONNX's shape inference; what is recorded already
    where inference fails. Never raises, never serializes the weights."""
    light, _ = light_copy(model, READ_BYTES, as_inputs=True)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        log.debug("ONNX shape inference failed, keeping the recorded shapes: %s", exc)
        inferred = light
    graph = inferred.graph
    return {vi.name: vi.type for vi in [*graph.value_info, *graph.output, *graph.input]}


def _fully_known(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def refresh_shapes(graph: gs.Graph) -> None:
    """Infer the type and shape of every tensor not yet fully known (what a pass added)."""
    from .functions import attach_functions  # functions imports graph helpers this module uses

    tensors = graph.tensors()
    if all(tensor.dtype is not None and _fully_known(tensor.shape) for tensor in tensors.values()
           if isinstance(tensor, gs.Variable)):
        return  # all recorded already (an export at a fixed batch records every value)
    model = export_light(graph).proto
    attach_functions(model)
    types = inferred_types(model)
    for name, tensor in tensors.items():
        tp = types.get(name)
        if not isinstance(tensor, gs.Variable) or tp is None or not tp.HasField("tensor_type"):
            continue
        if tp.tensor_type.elem_type and tensor.dtype is None:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type)
        if not _fully_known(tensor.shape):
            found = dims_of(tp)
            if found is not None:
                tensor.shape = found


def _batch_dim(d1: int, d2: int, b1: int, b2: int, symbol: str) -> Dim:
    if d1 == d2:
        return d1
    if d1 == b1 and d2 == b2:
        return symbol
    if b1 and b2 and d1 % b1 == 0 and d2 % b2 == 0 and d1 // b1 == d2 // b2:
        return f"{d1 // b1}*{symbol}"
    return None


def measure(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
            held: Mapping[str, gs.Constant] | None = None, only: Collection[str] | None = None) -> dict[str, tuple] | str:
    """``{value: (numpy dtype, dims)}`` for every value of ``model``'s main graph (or the
    graph's outputs and the values in ``only``), measured by running it on each feed (see
    the module notes), or why it could not run. ``held``: the values of a light export's
    placeholders (see ``weights.export_light``)."""
    import onnxruntime as ort

    graph = model.graph
    declared = {o.name for o in graph.output}
    names = [o for node in graph.node for o in node.output
             if o and o not in declared and (only is None or o in only)]
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures are reported, not logged
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Every value is an output here: without the arena, their memory goes back when freed.
    options.enable_cpu_mem_arena = False
    try:
        session = ort_session(model, options, names, held)
        output_names = [o.name for o in session.get_outputs()]
        runs = []
        for feed in feeds:
            values = session.run(None, dict(feed))
            runs.append({n: (v.dtype, v.shape) for n, v in zip(output_names, values) if isinstance(v, np.ndarray)})
            del values
    except Exception as exc:  # onnxruntime raises its own types for graphs it cannot run
        return f"onnxruntime could not run the graph ({describe(exc)})"
    batch_inputs = [i for i in graph.input if i.name in feeds[0] and len(feeds) > 1
                    and np.shape(feeds[0][i.name])[:1] != np.shape(feeds[1][i.name])[:1]]
    if batch_inputs:
        first = batch_inputs[0]
        b1, b2 = (int(np.shape(feed[first.name])[0]) for feed in feeds[:2])
        dims = dims_of(first.type) or [None]
        symbol = dims[0] if isinstance(dims[0], str) else "batch"
    found: dict[str, tuple] = {}
    for name, (dtype, shape) in runs[0].items():
        if not batch_inputs:
            found[name] = (dtype, list(shape))
            continue
        other = runs[1].get(name)
        if other is None or len(other[1]) != len(shape):
            continue
        found[name] = (dtype, [_batch_dim(d1, d2, b1, b2, symbol) for d1, d2 in zip(shape, other[1])])
    return found


def static_bytes(tp: onnx.TypeProto, batch: int) -> int | None:
    """Bytes a value of type ``tp`` takes when its symbolic dims (the batch) are ``batch``;
    None when a dim is unknown."""
    dims = dims_of(tp)
    if dims is None or any(d is None for d in dims) or not tp.tensor_type.elem_type:
        return None
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type)).itemsize
    return math.prod(d if isinstance(d, int) else batch for d in dims) * itemsize
