"""Large initializers kept out of serialized copies of a model.

A protobuf message cannot be serialized past 2 GiB, and ONNX's checker, its shape inference
and an onnxruntime session all take serialized bytes. None of them needs the weights'
values, only their types and shapes (shape inference reads the values of small integer
constants, which stay), so each gets a light copy in which every large initializer is a
placeholder declared as external data; onnxruntime receives the values themselves as
``OrtValue``s next to it, without a copy through protobuf.

The passes work on an onnx-graphsurgeon graph and export it many times (for inference, for
onnxruntime, for onnxscript's folder); :func:`export_light` exports it with placeholders
from the start, so no export copies the weights, and :func:`adopt` takes an edited export
back with the graph's own constants in the placeholders' places. A torch export is light
from the start: :func:`light_from_ir` holds read-only views of the module's own tensors.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
from onnx import numpy_helper

LARGE_BYTES = 1 << 20  # initializers from this size on are handed over by value, not serialized


def _placeholder(name: str, data_type: int, dims: Sequence[int]) -> onnx.TensorProto:
    light = onnx.TensorProto(name=name, data_type=data_type, dims=dims, data_location=onnx.TensorProto.EXTERNAL)
    entry = light.external_data.add()
    entry.key, entry.value = "location", f"{name}.held-in-memory"
    return light


def _size(tensor: onnx.TensorProto) -> int:
    # From the type and shape: reading ``raw_data`` would copy the bytes out of protobuf.
    count = math.prod(tensor.dims)  # numpy's prod costs 20 us a call, on every initializer of every copy
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _is_placeholder(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


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
    type and shape (what the checker and shape inference accept without the data); then
    placeholders already there (from :func:`export_light`) become inputs too.

    Only the top-level graph's initializers move; without any, ``model`` itself is returned.
    ``threshold`` defaults to :data:`LARGE_BYTES`.
    """
    threshold = LARGE_BYTES if threshold is None else threshold
    large = [t for t in model.graph.initializer if not _is_placeholder(t) and _size(t) >= threshold]
    placeholders = [t for t in model.graph.initializer if _is_placeholder(t)] if as_inputs else []
    if not large and not placeholders:
        return model, []
    moved = {t.name for t in [*large, *placeholders]}
    light = _copy_without(model, "graph")
    light.graph.CopyFrom(_copy_without(model.graph, "initializer"))
    if as_inputs:
        light.graph.initializer.extend(t for t in model.graph.initializer if t.name not in moved)
        declared = {vi.name for vi in light.graph.input}
        light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in [*large, *placeholders] if t.name not in declared)
    else:
        light.graph.initializer.extend(_placeholder(t.name, t.data_type, t.dims) if t.name in moved else t for t in model.graph.initializer)
    return light, large


@dataclass
class LightModel:
    """A model without its large constants' data: each is a placeholder in ``proto``, and
    ``held`` maps its name to a graph constant holding the values (or reading them from the
    source model when first asked)."""

    proto: onnx.ModelProto
    held: dict[str, gs.Constant]


def hold_apart(light: onnx.ModelProto, large: list[onnx.TensorProto],
               held: Mapping[str, gs.Constant] | None = None) -> LightModel:
    """The inverse of ``light_copy(..., as_inputs=True)`` without copying the weights: in place,
    the inputs ``large`` and the placeholders of ``held`` became are placeholders again; the
    constants read ``large``, or are those of ``held``."""
    held = {**(held or {}), **{t.name: gs.Constant(t.name, gs.ir.tensor.LazyValues(t)) for t in large}}
    declared = {vi.name: vi.type.tensor_type for vi in light.graph.input}
    kept = [vi for vi in light.graph.input if vi.name not in held]
    del light.graph.input[:]
    light.graph.input.extend(kept)
    light.graph.initializer.extend(_placeholder(name, declared[name].elem_type, [d.dim_value for d in declared[name].shape.dim])
                                   for name in held if name in declared)
    return LightModel(light, held)


def light_from_ir(model: ir.Model) -> LightModel:
    """``model`` (onnx_ir's, as torch's exporter returns it) as a light model without copying
    its large initializers: each is held as a read-only view of its tensor (the module's own
    weights, which the importer copies and onnxruntime reads in place). Takes them out of
    ``model``."""
    held: dict[str, gs.Constant] = {}
    for name, value in list(model.graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or tensor.nbytes < LARGE_BYTES:
            continue
        array = tensor.numpy()
        if not array.dtype.isbuiltin or array.dtype.kind not in "biuf":
            continue  # bfloat16 and smaller floats: numpy has no type for them, the protobuf keeps them
        array = array.view()
        array.flags.writeable = False
        held[name] = gs.Constant(name, array)
        model.graph.initializers.pop(name)
    proto = ir.serde.serialize_model(model)
    proto.graph.initializer.extend(_placeholder(name, onnx.helper.np_dtype_to_tensor_dtype(c.values.dtype), c.shape)
                                   for name, c in held.items())
    return LightModel(proto, held)


def type_and_size(constant: gs.Constant) -> tuple[int, int] | None:
    """The ONNX type and byte size of a dense constant, without loading lazily read values."""
    # ``_values``, not ``values``: reading the property would load them.
    values = constant._values
    if isinstance(values, gs.ir.tensor.SparseValues):
        return None
    if isinstance(values, gs.ir.tensor.LazyValues):
        return values.tensor.data_type, _size(values.tensor)
    array = np.asarray(values)
    return onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.nbytes


def export_light(graph: gs.Graph, keep: Collection[str] = ()) -> LightModel:
    """``graph`` as a model whose constants of :data:`LARGE_BYTES` or more, except those named
    in ``keep``, are placeholders."""
    held, types = {}, {}
    for tensor in graph.tensors().values():
        found = type_and_size(tensor) if isinstance(tensor, gs.Constant) and tensor.name not in keep else None
        if found is not None and found[1] >= LARGE_BYTES:
            held[tensor.name], types[tensor.name] = tensor, found[0]
    # The exporter copies every constant's values into the model; for the time of the export
    # each large one holds its placeholder instead.
    kept = {name: tensor._values for name, tensor in held.items()}
    try:
        for name, tensor in held.items():
            tensor.values = gs.ir.tensor.LazyValues(_placeholder(name, types[name], tensor.shape))
        proto = gs.export_onnx(graph, do_type_check=False)
    finally:
        for name, tensor in held.items():
            tensor.values = kept[name]
    return LightModel(proto, held)


def import_light(model: onnx.ModelProto, held: Mapping[str, gs.Constant]) -> gs.Graph:
    """The graph of ``model`` (a light model, or an edit of one), its nodes reading the constants
    in ``held`` where ``model`` has their placeholders."""
    graph = gs.import_onnx(model)
    _type_empty_lists(graph)
    for tensor in held.values():
        tensor.outputs.clear()  # the readers were nodes of a graph this one replaces
    for node in graph.nodes:
        for i, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant) and tensor.name in held:
                node.inputs[i] = held[tensor.name]
    return graph


_EMPTY_CONSTANTS = {"value_ints": np.int64, "value_floats": np.float32}


def _type_empty_lists(graph: gs.Graph) -> None:
    """graphsurgeon reads an empty list attribute as ``[]`` and cannot write it back (its type
    is lost): a ``Constant``'s empty ``value_ints`` (how exporters write an empty shape)
    becomes an empty tensor of its type; elsewhere an empty list means what leaving the
    attribute out means (all axes, no permutation), so it is left out."""
    for node in graph.nodes:
        for key, value in list(node.attrs.items()):
            if not (isinstance(value, list) and not value):
                continue
            del node.attrs[key]
            if node.op == "Constant" and key in _EMPTY_CONSTANTS:
                node.attrs["value"] = gs.Constant(f"{node.name}_value", np.zeros(0, _EMPTY_CONSTANTS[key]))


def adopt(graph: gs.Graph, model: onnx.ModelProto, held: Mapping[str, gs.Constant]) -> None:
    """Make ``graph`` the graph of ``model``, an edited light export of it (see
    :func:`import_light`)."""
    other = import_light(model, held)
    graph.nodes, graph.inputs, graph.outputs = other.nodes, other.inputs, other.outputs


def ort_session(model: onnx.ModelProto, options=None, extra_outputs: Sequence[str] = (),
                held: Mapping[str, gs.Constant] | None = None):
    """An onnxruntime CPU session for ``model`` of any size (see the module notes), with
    ``extra_outputs`` (names of intermediate values) added to the graph's outputs. ``held``
    gives the values of a light model's placeholders, and may give those of large
    initializers already read (the session shares them rather than reading its own copy)."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    # Prepacking lays weights out again for repeated runs; a session here runs a few times,
    # and the repacking doubled the time to create it on large models.
    options.add_session_config_entry("session.disable_prepacking", "1")
    light, large = light_copy(model)
    if extra_outputs:
        if light is model:
            light = onnx.ModelProto()
            light.CopyFrom(model)
        light.graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra_outputs)
    held = held or {}
    names = [t.name for t in light.graph.initializer if _is_placeholder(t)]
    read = {t.name: t for t in large}
    arrays = [np.asarray(held[name].values) if name in held else numpy_helper.to_array(read[name]) for name in names]
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in arrays]
    if values:
        options.add_external_initializers(names, values)
    session = ort.InferenceSession(light.SerializeToString(), options, providers=["CPUExecutionProvider"])
    if values:
        session.held_initializers = values  # onnxruntime reads them in place: keep them alive
    return session
