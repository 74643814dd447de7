"""The type of a rewritten model."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import functional
from .errors import InputError

# The attributes that make a module rebuildable from data alone (see rewriter.artifact).
SOURCE_ATTRIBUTES = ("onnx_graph", "onnx_tensors", "interface", "check_batch")


class ExplainableModule(fx.GraphModule):
    """A ``torch.fx.GraphModule`` that remembers the ONNX graph it was imported from, and how
    it is called compared with the model it was rewritten from.

    ``onnx_graph`` is that graph serialized without its weights (every initializer a
    placeholder) and ``onnx_tensors`` the weights by name: ``rewriter.save`` writes both, and
    ``rewriter.load`` rebuilds the module from them without running any code from the file.

    **Inputs.** The module takes its inputs positionally: first the *explained* ones (float
    tensors, attributed by the explainers), then the *context* ones (integer inputs such as
    an attention mask, which explainers pair with every reference of a row unchanged). Where
    the source model takes token ids, the explained input is their embedding (see
    :mod:`rewriter.embedding`): :meth:`embed` maps the source model's inputs to this
    module's, so ``module(*module.embed(**batch))`` computes what ``model(**batch)`` did.
    :meth:`with_context` binds the context for explainers that take float inputs only
    (``shap.DeepExplainer``); Captum takes it as ``additional_forward_args``.

    Pickling (``torch.save(module)``) also works; loading such a pickle imports
    shaprewrite, which registers the explainer rules the module relies on.
    """

    onnx_graph: bytes | None = None
    onnx_tensors: dict[str, torch.Tensor] | None = None
    # {"source_inputs": [names], "inputs": [{"name", "role", "source" | "embedded", "embeds"}],
    #  "embedder_inputs": [names], "outputs": {...}}; None: inputs are the source's own.
    interface: dict | None = None
    # A few rows of the source's inputs and the module's outputs on them: a saved module is
    # checked to compute those outputs again when loaded.
    check_batch: dict | None = None

    @property
    def input_names(self) -> list[str]:
        """The names of this module's inputs, in the order it takes them."""
        if self.interface is None:
            return [node.target for node in self.graph.nodes if node.op == "placeholder"]
        return [entry["name"] for entry in self.interface["inputs"]]

    @property
    def context_names(self) -> list[str]:
        """The names of the context inputs (they come last)."""
        if self.interface is None:
            return []
        return [entry["name"] for entry in self.interface["inputs"] if entry["role"] == "context"]

    def embed(self, *inputs: Any, **named: Any) -> tuple[torch.Tensor, ...]:
        """This module's inputs from the source model's: positionally in the source's input
        order, by name (keyword arguments, or one dict such as a tokenizer's output), or
        both. Token ids are looked up and summed as the source model does; the rest is
        passed on."""
        if self.interface is None:
            if named:
                raise InputError("this module takes its inputs positionally only", fix="pass tensors positionally")
            return tuple(inputs)
        values = _by_name(self.interface["source_inputs"], inputs, named)
        return main_inputs(self.interface, self._modules.get("embedder"), values)

    def with_context(self, *context: torch.Tensor, **named: torch.Tensor) -> fx.GraphModule:
        """This module with its context inputs fixed: a module of the same leaf modules (shared,
        not copied) that takes the explained inputs only. A context of one row serves every row
        of a batch (one row and its references, the way ``shap.DeepExplainer`` calls a model);
        a context of as many rows as the batch pairs row by row."""
        values = _by_name(self.context_names, context, named)
        placeholders = [node for node in self.graph.nodes if node.op == "placeholder"]
        explained = len(placeholders) - len(values)
        graph, env, attributes = fx.Graph(), {}, {}
        for node in self.graph.nodes:
            if node.op == "placeholder" and placeholders.index(node) >= explained:
                name = f"context_{placeholders.index(node) - explained}"
                attributes[name] = values[placeholders.index(node) - explained]
                env[node] = graph.call_function(functional.rows_like, (graph.get_attr(name), env[placeholders[0]],
                                                                        self.context_names[len(attributes) - 1]))
                continue
            env[node] = graph.node_copy(node, env.__getitem__)
            if node.op == "call_module":
                attributes[node.target] = self.get_submodule(node.target)
            elif node.op == "get_attr":
                attributes[node.target] = getattr(self, node.target)
        return fx.GraphModule(attributes, graph, f"{type(self).__name__}WithContext")

    def __reduce__(self):
        rebuild, args = super().__reduce__()
        return _restore, (rebuild, args)

    def __deepcopy__(self, memo: dict) -> ExplainableModule:
        result = super().__deepcopy__(memo)
        for name in SOURCE_ATTRIBUTES:
            setattr(result, name, copy.deepcopy(getattr(self, name), memo))
        if "embedder" in self._modules:  # the module from token ids to their embeddings (see embed)
            result.add_module("embedder", copy.deepcopy(self._modules["embedder"], memo))
        return result


def _by_name(names: Sequence[str], inputs: Sequence[Any], named: Mapping[str, Any]) -> list[Any]:
    """Values for ``names`` from positional ``inputs`` and ``named`` ones (one positional
    mapping counts as named; lists and tuples give their elements in order, as the source
    model's list inputs were flattened)."""
    if len(inputs) == 1 and isinstance(inputs[0], Mapping) and set(inputs[0]) & set(names):
        named, inputs = {**inputs[0], **named}, ()
    inputs = [leaf for value in inputs for leaf in _leaves(value)]
    if len(inputs) > len(names):
        raise InputError(f"{len(inputs)} inputs given; this takes {len(names)}: {list(names)}",
                         fix="pass one value per input")
    values = dict(zip(names, inputs))
    for key, value in named.items():
        if key not in names and not isinstance(value, torch.Tensor) and not hasattr(value, "__array__"):
            continue  # a flag or an optional input left None: fixed when the model was rewritten
        if key not in names:
            raise InputError(f"'{key}' is not one of the inputs {list(names)}", fix="name the inputs as listed")
        if key in values:
            raise InputError(f"input '{key}' is given twice", fix="give it by position or by name, not both")
        values[key] = value
    missing = [n for n in names if n not in values]
    if missing:
        raise InputError(f"inputs {missing} are missing (this takes {list(names)})", fix="give every input")
    return [torch.as_tensor(values[n]) for n in names]


def _leaves(value: Any) -> list[Any]:
    """The tensors of a structured input in the order the source's call was flattened in:
    list and tuple items, a dict's values, a dataclass's tensor fields (darts'
    ``PLModuleInput``)."""
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, Mapping):  # the model's one dict argument (pytorch-forecasting's batch)
        return [leaf for item in value.values() for leaf in _leaves(item)
                if isinstance(leaf, torch.Tensor) or hasattr(leaf, "__array__")]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for f in dataclasses.fields(value) if f.init and isinstance(getattr(value, f.name), torch.Tensor)
                for leaf in _leaves(getattr(value, f.name))]
    return [value]


def main_inputs(interface: Mapping, embedder: nn.Module | None, values: Sequence[torch.Tensor]) -> tuple:
    """The inputs a module with ``interface`` takes, from the source model's ``values``."""
    names = interface["source_inputs"]
    if interface.get("fixed"):
        from .interface import check_fixed

        check_fixed(interface["fixed"], names, values)
    embedded: tuple = ()
    if embedder is not None:
        looked_up = embedder(*(values[names.index(n)] for n in interface["embedder_inputs"]))
        embedded = looked_up if isinstance(looked_up, tuple) else (looked_up,)
    return tuple(embedded[entry["embedded"]] if "embedded" in entry else values[entry["source"]]
                 for entry in interface["inputs"])


def _restore(rebuild, args) -> ExplainableModule:
    module = rebuild(*args)
    body = args[0] if args and isinstance(args[0], dict) else {}
    result = ExplainableModule(module, module.graph, body.get("_graphmodule_cls_name", type(module).__name__))
    for name in SOURCE_ATTRIBUTES:
        setattr(result, name, body.get(name))
    embedder = body.get("_modules", {}).get("embedder")
    if embedder is not None:
        result.add_module("embedder", embedder)
    return result
