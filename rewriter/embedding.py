"""Token inputs: split a graph at its embedding lookups.

Integer ids are not differentiable, so DeepLIFT attributes to what they select: the rows
of an embedding table (``Gather`` of a float initializer by values computed from integer
graph inputs). The graph is cut there into two:

* the **embedder**, from the integer inputs to the explained values: each lookup, and the
  sums of lookups a model adds up before anything else (word + position + token type in
  BERT; a position table indexed by a constant is part of the sum);
* the **main** graph, which takes the explained values (float) in their place, plus the
  integer inputs its other nodes still read (an attention mask, the ids where a model also
  reads them directly, as GPT-2 does to find each row's last token). Those are *context*:
  explainers pair each row with references that share it, so no attribution flows to it.

``main(*embed(inputs)) == source(inputs)``: the main graph's inputs are its explained
values in the order of the source inputs they come from (float source inputs stay where
they are), then its context inputs in the source's order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

from .onnxkit.facts import opset_of, runtime_inputs
from .onnxkit.shapes import inferred_types
from .onnxkit.weights import LightModel

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# What may stand between lookups and the sum the explained value is: additions of lookups
# and of constants (a position table indexed by a fixed range).
_SUMS = {"Add", "Sub"}


@dataclass
class MainInput:
    """One input of the main graph: ``role`` is "explained" (a float source input, or an
    embedder output) or "context" (an integer source input passed on as it is)."""

    name: str
    role: str
    source: int | None = None  # the source input it is, when it is one
    embedded: int | None = None  # the embedder output it is, when it is one
    embeds: list[str] = field(default_factory=list)  # the source inputs an embedded value looks up

    def as_dict(self) -> dict:
        found = {"name": self.name, "role": self.role}
        if self.source is not None:
            found["source"] = self.source
        if self.embedded is not None:
            found["embedded"] = self.embedded
            found["embeds"] = self.embeds
        return found


@dataclass
class Split:
    """The main graph, the embedder (None when nothing is embedded) and how the main graph's
    inputs come from the source's."""

    main: LightModel
    embedder: onnx.ModelProto | None
    inputs: list[MainInput]
    source_inputs: list[str]


def _dependencies(graph: onnx.GraphProto, names: set[str]) -> dict[str, frozenset[str]]:
    """For each value, the graph inputs among ``names`` it is computed from (nodes are in
    topological order after ``normalize``)."""
    deps: dict[str, frozenset[str]] = {name: frozenset({name}) for name in names}
    for node in graph.node:
        found = frozenset().union(*(deps.get(n, frozenset()) for n in node.input if n))
        for out in node.output:
            deps[out] = found
    return deps


def _lookups(graph: onnx.GraphProto, floats: set[str], deps: dict[str, frozenset[str]]) -> list[onnx.NodeProto]:
    """``Gather`` nodes reading rows of a float table (an initializer) by integer inputs."""
    return [node for node in graph.node
            if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in floats
            and deps.get(node.input[1]) and not any(a.name == "axis" and a.i != 0 for a in node.attribute)]


def _summed(graph: onnx.GraphProto, lookups: list[onnx.NodeProto], deps: dict[str, frozenset[str]]) -> list[str]:
    """The explained values: each lookup's output, taken further through the additions that
    combine it with other lookups and with constants, while each value on the way has that
    addition as its only reader."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    values = [node.output[0] for node in lookups]
    changed = True
    while changed:
        changed = False
        for value in list(values):
            if value not in values or value in outputs or len(readers.get(value, [])) != 1:
                continue
            node = readers[value][0]
            if node.op_type not in _SUMS or not all(n in values or not deps.get(n) for n in node.input):
                continue
            values = [v for v in values if v not in node.input]
            values.append(node.output[0])
            changed = True
    return values


def _ancestors(graph: onnx.GraphProto, names: Iterable[str], stop: set[str] = frozenset()) -> list[onnx.NodeProto]:
    """The nodes that compute ``names``, in graph order; values in ``stop`` are not followed."""
    producer = {out: node for node in graph.node for out in node.output}
    needed, pending = set(), [n for n in names if n not in stop]
    while pending:
        node = producer.get(pending.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        pending.extend(n for n in node.input if n and n not in stop)
    return [node for node in graph.node if id(node) in needed]


def _read_names(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    names = set()
    for node in nodes:
        names.update(node.input)
        for attr in node.attribute:  # values read inside subgraphs (a Loop's body)
            for sub in [attr.g, *attr.graphs]:
                names.update(n for inner in sub.node for n in inner.input)
    return names


def _subgraph(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto], name: str) -> onnx.ModelProto:
    read = _read_names(nodes)
    graph = onnx.helper.make_graph(nodes, name, inputs, outputs,
                                   [t for t in model.graph.initializer if t.name in read])
    produced = {out for node in nodes for out in node.output}
    graph.value_info.extend(vi for vi in model.graph.value_info if vi.name in produced)
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    sub.functions.extend(model.functions)
    return sub


def split_embeddings(source: LightModel) -> Split | None:
    """Cut ``source`` (a normalized model) at its embedding lookups; None when it has none."""
    model = source.proto
    graph = model.graph
    runtime = runtime_inputs(graph)
    integer = {vi.name for vi in runtime if vi.type.tensor_type.elem_type not in _FLOATS}
    floats = {t.name for t in graph.initializer if t.data_type in _FLOATS and len(t.dims) >= 2}
    deps = _dependencies(graph, integer)
    lookups = _lookups(graph, floats, deps)
    if not lookups:
        return None
    explained = _summed(graph, lookups, deps)
    types = inferred_types(model)
    explained_info = [onnx.ValueInfoProto(name=name, type=types[name]) for name in explained if name in types]
    if len(explained_info) != len(explained):
        return None  # a value shape inference cannot type: left whole, the report says why
    by_name = {vi.name: vi for vi in runtime}
    embed_nodes = _ancestors(graph, explained)
    embed_sources = sorted({d for name in explained for d in deps[name]}, key=[vi.name for vi in runtime].index)
    embedder = _subgraph(model, embed_nodes, [by_name[n] for n in embed_sources], explained_info, "embedder")

    main_nodes = [_copy(node) for node in _ancestors(graph, [o.name for o in graph.output], stop=set(explained))]
    _shapes_from_embeddings(main_nodes, explained, deps, integer, types, model)
    read = _read_names(main_nodes) | {o.name for o in graph.output}
    inputs: list[MainInput] = []
    placed: set[int] = set()
    for index, vi in enumerate(runtime):
        if vi.name not in integer:
            inputs.append(MainInput(vi.name, "explained", source=index))
            continue
        for k, name in enumerate(explained):
            looked_up = [n for n in embed_sources if n in deps[name]]
            if k not in placed and looked_up and looked_up[0] == vi.name:
                inputs.append(MainInput(f"{vi.name}_embeds", "explained", embedded=k, embeds=looked_up))
                placed.add(k)
    inputs.extend(MainInput(vi.name, "context", source=index)
                  for index, vi in enumerate(runtime) if vi.name in integer and vi.name in read)
    declared = {**by_name, **{vi.name: vi for vi in explained_info}}
    renamed = {name: inp.name for inp in inputs if inp.embedded is not None for name in [explained[inp.embedded]]}
    main_inputs = []
    for inp in inputs:
        original = explained[inp.embedded] if inp.embedded is not None else inp.name
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(declared[original])
        vi.name = inp.name
        main_inputs.append(vi)
    main = _subgraph(model, main_nodes, main_inputs, list(graph.output), graph.name)
    _rename_reads(main.graph, renamed)
    main.metadata_props.extend(model.metadata_props)
    main.producer_name, main.producer_version = model.producer_name, model.producer_version
    held = {name: constant for name, constant in source.held.items()}
    return Split(LightModel(main, held), embedder, inputs, [vi.name for vi in runtime])


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied


def _shapes_from_embeddings(nodes: list[onnx.NodeProto], explained: list[str], deps: dict[str, frozenset[str]],
                            integer: set[str], types: dict[str, onnx.TypeProto], model: onnx.ModelProto) -> None:
    """Point each ``Shape`` of an embedded id input at the embedding instead (its leading dims
    are the ids' own): a shape is no context, and exporters take the batch size from the
    first input. Needs ``Shape``'s ``start``/``end`` (opset 15)."""
    opset = opset_of(model)
    if opset < 15:
        return
    for node in nodes:
        if node.op_type != "Shape" or node.input[0] not in integer:
            continue
        rank = len(types[node.input[0]].tensor_type.shape.dim) if node.input[0] in types else None
        embedding = next((name for name in explained if node.input[0] in deps[name]), None)
        if rank is None or embedding is None:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", rank)
        start, end = (start + rank if start < 0 else start), min(end + rank if end < 0 else end, rank)
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("start", start), onnx.helper.make_attribute("end", end)])
        node.input[0] = embedding


def _rename_reads(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for out in graph.output:
        if out.name in renamed:  # an explained value that is also an output: read it through
            identity = onnx.helper.make_node("Identity", [renamed[out.name]], [out.name])
            graph.node.append(identity)
