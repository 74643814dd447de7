"""Refuse a graph that would compute a tensor too large to hold, before anything runs it.

A 209-byte file can ask for ``ConstantOfShape([750, 1000, 1000])``: 3 GB that onnxruntime
(measuring shapes, verifying) and the importer (folding constants) would otherwise
allocate. After constant folding every size computed from constants is a constant, so
ONNX's shape inference, with the inputs' dims set to the check inputs' sizes, knows the
size of each such value, and of values whose size is shape arithmetic on the inputs. The
shapes recorded in the graph are not read: they come from the file.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..errors import InputError
from ..onnxkit.facts import dims_of
from ..onnxkit.shapes import READ_BYTES, inferred_types, static_bytes
from ..onnxkit.weights import export_light, light_copy
from .base import PassOptions, PassResult, graph_pass


def _with_input_sizes(model: onnx.ModelProto, sizes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """``model`` with the inputs' dims set to ``sizes`` and no recorded shapes: a file's
    value_info could declare a 3 GB value one element, and inference keeps what is recorded
    where it disagrees."""
    light, _ = light_copy(model, READ_BYTES, as_inputs=True)
    if light is model:
        light = onnx.ModelProto()
        light.CopyFrom(model)
    del light.graph.value_info[:]
    for vi in light.graph.input:
        shape = sizes.get(vi.name)
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if shape is not None and len(shape) == len(dims):
            for dim, size in zip(dims, shape):
                dim.dim_value = int(size)
    return light


# Running a graph holds many of its values at once (measuring shapes holds all of them): their
# sum may reach this many times the limit on one value.
TOTAL_FACTOR = 4


@graph_pass
def refuse_oversized_values(graph: gs.Graph, options: PassOptions) -> PassResult:
    """Raise :class:`~rewriter.errors.InputError` naming the first node whose output would take
    more than ``options.max_tensor_bytes`` at the check inputs' sizes (batch 1 without
    them), or the largest when all of them together would take more than
    :data:`TOTAL_FACTOR` times that. Changes nothing."""
    sizes = {name: tuple(value.shape) for name, value in options.feeds[-1].items()} if options.feeds else {}
    model = export_light(graph).proto
    types = inferred_types(_with_input_sizes(model, sizes))
    total, largest = 0, (0, None)
    for node in graph.nodes:
        for tensor in node.outputs:
            size = static_bytes(types[tensor.name], 1) if tensor.name in types else None
            total += size or 0
            largest = max(largest, (size or 0, node), key=lambda found: found[0])
            if size is not None and size > options.max_tensor_bytes:
                dims = dims_of(types[tensor.name])
                raise InputError(
                    f"the graph computes a tensor of shape {dims} ({size / 2**30:.1f} GiB), more than the "
                    f"{options.max_tensor_bytes / 2**30:g} GiB allowed", node=node.name, op_type=node.op,
                    fix="if the model really needs it, raise the limit (max_tensor_bytes=, CLI --max-tensor-mib); "
                        "otherwise the file is malformed or hostile")
    if total > TOTAL_FACTOR * options.max_tensor_bytes:
        size, node = largest
        raise InputError(
            f"the graph computes {total / 2**30:.1f} GiB of values at the check inputs' sizes, more than "
            f"{TOTAL_FACTOR} x the {options.max_tensor_bytes / 2**30:g} GiB allowed per value (the largest: "
            f"{size / 2**20:.0f} MiB)", node=node.name, op_type=node.op,
            fix="give smaller example inputs, or raise the limit (max_tensor_bytes=, CLI --max-tensor-mib) if the "
                "model really needs it")
    return PassResult()
