"""Large initializers kept out of serialized copies of a model.

A protobuf message cannot be serialized past 2 GiB, and ONNX's checker, its shape inference
and an onnxruntime session all take serialized bytes. None of them needs the weights'
values, only their types and shapes (shape inference reads the values of small integer
constants, which stay), so each gets a light copy in which every large initializer is a
placeholder declared as external data; onnxruntime receives the values themselves as
``OrtValue``s next to it, without a copy through protobuf.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

LARGE_BYTES = 1 << 20  # initializers from this size on are handed over by value, not serialized


def _placeholder(tensor: onnx.TensorProto) -> onnx.TensorProto:
    light = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                             data_location=onnx.TensorProto.EXTERNAL)
    entry = light.external_data.add()
    entry.key, entry.value = "location", f"{tensor.name}.held-in-memory"
    return light


def _size(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _copy_without(message, skipped: str):
    """A copy of a protobuf ``message`` without its field ``skipped``, built field by field:
    copying the whole message would duplicate the very bytes this avoids."""
    copy = type(message)()
    for field, value in message.ListFields():
        if field.name == skipped:
            continue
        if field.is_repeated:
            getattr(copy, field.name).extend(value)
        elif field.message_type is not None:
            getattr(copy, field.name).CopyFrom(value)
        else:
            setattr(copy, field.name, value)
    return copy


def light_copy(model: onnx.ModelProto, threshold: int | None = None, *,
               as_inputs: bool = False) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """``model`` with its initializers of ``threshold`` bytes or more taken out, and those
    initializers. In the copy each is an external-data placeholder of the same name, type
    and shape (what onnxruntime takes values for), or, ``as_inputs``, a graph input of that
    type and shape (what the checker and shape inference accept without the data).

    Only the top-level graph's initializers move; without any, ``model`` itself is returned.
    ``threshold`` defaults to :data:`LARGE_BYTES`.
    """
    threshold = LARGE_BYTES if threshold is None else threshold
    large = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
             and _size(t) >= threshold]
    if not large:
        return model, []
    moved = {t.name for t in large}
    light = _copy_without(model, "graph")
    light.graph.CopyFrom(_copy_without(model.graph, "initializer"))
    if as_inputs:
        light.graph.initializer.extend(t for t in model.graph.initializer if t.name not in moved)
        declared = {vi.name for vi in light.graph.input}
        light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in large if t.name not in declared)
    else:
        light.graph.initializer.extend(_placeholder(t) if t.name in moved else t for t in model.graph.initializer)
    return light, large


def with_weights(light: onnx.ModelProto, large: list[onnx.TensorProto]) -> onnx.ModelProto:
    """The inverse of ``light_copy(..., as_inputs=True)``, in place: the declared inputs
    become the initializers again."""
    names = {t.name for t in large}
    kept = [vi for vi in light.graph.input if vi.name not in names]
    del light.graph.input[:]
    light.graph.input.extend(kept)
    for tensor in large:  # one by one: extending would serialize, which fails past 2 GiB
        light.graph.initializer.add().CopyFrom(tensor)
    return light


def ort_session(model: onnx.ModelProto, options=None, extra_outputs: Sequence[str] = ()):
    """An onnxruntime CPU session for ``model`` of any size (see the module notes), with
    ``extra_outputs`` (names of intermediate values) added to the graph's outputs."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    light, large = light_copy(model)
    if extra_outputs:
        if light is model:
            light = onnx.ModelProto()
            light.CopyFrom(model)
        light.graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra_outputs)
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(t))) for t in large]
    if large:
        options.add_external_initializers([t.name for t in large], values)
    session = ort.InferenceSession(light.SerializeToString(), options, providers=["CPUExecutionProvider"])
    if large:
        session.held_initializers = values  # onnxruntime reads them in place: keep them alive
    return session
