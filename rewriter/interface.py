"""The edges of a model: how it is called and what it returns, against what explainers take.

Explainers call a module with float tensors, positionally, and read one ``[batch, k]``
tensor back. Models are called with lists, dicts and keyword arguments (a tokenizer's
``BatchEncoding``), and return tuples, dicts and ``ModelOutput`` objects, or one number per
row. This module flattens the call into named positional tensors (:class:`CallSpec`),
flattens what the model returns into named outputs and keeps one (:class:`OutputChoice`),
and wraps the model so that the export sees exactly that (:class:`FlatModel`).

Flat input names: a positional tensor takes its parameter's name (``x``), an element of a
list or tuple argument its index after it (``xs.0``, ``xs.1``), a dict entry or keyword
argument its key (``input_ids``), a dataclass field its name after the argument's
(``x_in.past_target``). Flat output names follow the same rule from the model's
return value: ``logits``, ``0``, ``hidden_states.2``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from torch import nn

from .errors import InputError
from .onnxkit.facts import dims_of

# A leaf of a call's structure: an index into the flat tensors, or a value passed as it is.
_Slot = int


@dataclass(frozen=True)
class _Const:
    """A non-tensor value of the call (``None`` for an optional input, a flag), passed as is."""

    value: Any


@dataclass(frozen=True)
class _Record:
    """A dataclass instance of the call (darts' ``PLModuleInput``): its fields' structure, and
    the instance, whose other fields stay as they are."""

    original: Any
    fields: dict


def _parameters(model: nn.Module) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []


def _takes_keywords(model: nn.Module, keys: Sequence[str]) -> bool:
    """Whether ``model.forward`` takes every key as a keyword argument (or takes ``**kwargs``)."""
    params = _parameters(model)
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return True
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return bool(keys) and set(keys) <= named


@dataclass
class CallSpec:
    """A model call flattened to positional tensors: ``names[i]`` names tensor ``i``, and
    :meth:`rebuild` puts tensors back into the structure the model takes."""

    args: tuple
    kwargs: dict
    names: list[str] = field(default_factory=list)

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> tuple[tuple, dict]:
        def fill(structure):
            if isinstance(structure, _Const):
                return structure.value
            if isinstance(structure, _Record):
                return dataclasses.replace(structure.original, **{k: fill(v) for k, v in structure.fields.items()})
            if isinstance(structure, _Slot):
                return tensors[structure]
            if isinstance(structure, dict):
                return {k: fill(v) for k, v in structure.items()}
            return type(structure)(fill(v) for v in structure)

        return tuple(fill(a) for a in self.args), {k: fill(v) for k, v in self.kwargs.items()}


def flatten_call(model: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> tuple[CallSpec, list[torch.Tensor]]:
    """The call ``model(*args, **kwargs)`` as a :class:`CallSpec` and its flat tensors.

    A single mapping passed positionally is taken as keyword arguments when the model's
    ``forward`` accepts its keys by name (``rewrite(model, tokenizer(texts))``); otherwise it
    is passed as the one argument it is.
    """
    kwargs = dict(kwargs)
    if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs and _takes_keywords(model, list(args[0])):
        args, kwargs = (), dict(args[0])
    tensors: list[torch.Tensor] = []
    names: list[str] = []

    def walk(value, name: str):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            names.append(name)
            return len(tensors) - 1
        if isinstance(value, Mapping):
            return {k: walk(v, f"{name}.{k}" if name else str(k)) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _Record(value, {f.name: walk(getattr(value, f.name), f"{name}.{f.name}")
                                   for f in dataclasses.fields(value) if f.init})
        if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
            return type(value)(walk(v, f"{name}.{i}") for i, v in enumerate(value))
        if callable(value) or isinstance(value, nn.Module):
            raise InputError(f"the model is called with a {type(value).__name__} for '{name}'",
                             fix="pass tensors, lists, tuples or dicts of tensors, and plain values")
        return _Const(value)

    params = [p for p in _parameters(model) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    flat_args = tuple(walk(a, params[i].name if i < len(params) else f"input_{i}") for i, a in enumerate(args))
    flat_kwargs = {k: walk(v, k) for k, v in kwargs.items()}
    if not tensors:
        raise InputError("the example inputs hold no tensor",
                         fix="call rewrite(model, x), rewrite(model, [x1, x2]) or rewrite(model, **batch) with tensors")
    return CallSpec(flat_args, flat_kwargs, _unique(names)), tensors


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if not count else f"{name}_{count}")
    return out


def flatten_outputs(value: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in what a model returned, with its name (see the module notes); ``None``
    fields and other non-tensor values are left out."""
    if isinstance(value, torch.Tensor):
        return [(prefix or "output", value)]
    if isinstance(value, Mapping):  # dicts and transformers' ModelOutput
        items = list(value.items())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):  # darts' PLModuleOutput
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif hasattr(value, "_fields"):  # named tuples
        items = list(zip(value._fields, value))
    elif isinstance(value, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return []
    found = []
    for key, item in items:
        found.extend(flatten_outputs(item, f"{prefix}.{key}" if prefix else str(key)))
    return found


@dataclass(frozen=True)
class OutputChoice:
    """Which of a model's flat outputs the result returns, and how it is shaped.

    ``kept`` indexes ``names``. With ``rows`` (one output chosen by name or index, or by
    default), it is returned as ``[batch, k]`` (``reshape`` says from what, when it was not
    already that shape); outputs chosen as a list are returned as they are (several as a
    tuple).
    """

    names: tuple[str, ...]
    kept: tuple[int, ...]
    reshape: str | None = None
    floats: tuple[bool, ...] = ()  # per output: whether it is floating point
    rows: bool = True

    def pick(self, outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The kept ones of all the model's flat ``outputs``, shaped as the result returns them."""
        if self.rows:
            return [as_rows(outputs[self.kept[0]])]
        return [outputs[k] for k in self.kept]

    def as_dict(self) -> dict:
        return {"outputs": list(self.names), "kept": [self.names[i] for i in self.kept], "reshape": self.reshape}

    def problems(self) -> list[str]:
        """Why explainers cannot take what the result returns, in words (empty: they can)."""
        kept = [self.names[i] for i in self.kept]
        if len(kept) > 1:
            return [f"the module returns {len(kept)} outputs ({', '.join(kept)}); explainers take one: rewrite "
                    "with output=NAME"]
        if self.floats and not self.floats[self.kept[0]]:
            return [f"output '{kept[0]}' is not floating point; explainers attribute float outputs"]
        return []


Selector = str | int | Sequence[str | int] | None


def choose_outputs(named: Sequence[tuple[str, bool]], output: Selector) -> OutputChoice:
    """The indices ``output`` selects among ``named`` (name, whether it is floating point):
    by default ``logits`` where there is one, else the first floating point output, else
    the first."""
    names = [n for n, _ in named]
    floats = tuple(is_float for _, is_float in named)
    if not named:
        raise InputError("the model returns no tensor", fix="make forward() return the tensor to explain")
    if output is None:
        first = names.index("logits") if "logits" in names else next((i for i, f in enumerate(floats) if f), 0)
        return OutputChoice(tuple(names), (first,), floats=floats)
    wanted = [output] if isinstance(output, (str, int)) else list(output)
    picked = []
    for item in wanted:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise InputError(f"output={item!r} is neither a name nor an index", fix=f"use one of {names}")
        if isinstance(item, int):
            if not -len(names) <= item < len(names):
                raise InputError(f"output {item} was asked for; the model returns {len(names)}: {names}",
                                 fix="pick an index below that, or a name")
            picked.append(item % len(names))
        elif item in names:
            picked.append(names.index(item))
        else:
            raise InputError(f"output '{item}' was asked for; the model returns {names}", fix="pick one of those")
    return OutputChoice(tuple(names), tuple(picked), floats=floats, rows=isinstance(output, (str, int)))


def as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as ``[batch, k]``: one number per row gets an axis, more axes are flattened."""
    if tensor.dim() == 1:
        return tensor.unsqueeze(-1)
    return tensor.flatten(1) if tensor.dim() > 2 else tensor


def reshape_note(shape: Sequence[int | str]) -> str | None:
    """How :func:`as_rows` changes an output of ``shape``, in words, or None."""
    if len(shape) in (0, 2):
        return None
    rest = shape[1:]
    size = "1" if not rest else str(math.prod(rest)) if all(isinstance(d, int) for d in rest) else \
        "*".join(str(d) for d in rest)
    return f"[{', '.join(['batch', *(str(d) for d in rest)])}] returned as [batch, {size}]"


def fixed_rows(names: Sequence[str], tensors: Sequence[torch.Tensor], fixed: Sequence[str]) -> dict[int, torch.Tensor]:
    """The flat inputs named in ``fixed`` (by full name or last part), by position: each
    one's single row, which every row of the example must hold."""
    found: dict[int, torch.Tensor] = {}
    for wanted in fixed:
        matches = [i for i, name in enumerate(names) if name == wanted or name.rsplit(".", 1)[-1] == wanted]
        if len(matches) != 1:
            raise InputError(f"fixed input '{wanted}' names {len(matches)} of the model's inputs {list(names)}",
                             fix="name one input, by its full name where the last part is shared")
        tensor = tensors[matches[0]]
        if tensor.dim() == 0 or not bool((tensor == tensor[:1]).all()):
            raise InputError(f"fixed input '{names[matches[0]]}' does not hold one value for every row",
                             fix="fix only inputs whose rows are all equal (the same lengths for every window)")
        found[matches[0]] = tensor[:1].detach().clone()
    return found


def check_fixed(fixed: Mapping[str, Any], names: Sequence[str], values: Sequence[torch.Tensor]) -> None:
    """Refuse values of the inputs a result was rewritten with fixed that differ from them."""
    for name, row in fixed.items():
        value = values[list(names).index(name)]
        want = torch.as_tensor(row, dtype=value.dtype)
        if value.shape[1:] != want.shape[1:] or not bool((value == want).all()):
            raise InputError(f"input '{name}' was fixed when the model was rewritten and must hold {row[0]} in "
                             "every row", fix="rewrite the model again without fixed= for other values")


class FlatModel(nn.Module):
    """``model`` called with flat positional tensors (see :class:`CallSpec`), returning the
    outputs ``kept`` of its flat outputs: one as ``[batch, k]``, several as a tuple. What the
    export sees and verification runs. ``fixed`` inputs (by position) take their one row
    for every row, whatever is passed: a constant, for the export."""

    def __init__(self, model: nn.Module, spec: CallSpec, choice: OutputChoice,
                 fixed: Mapping[int, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.model, self.spec, self.choice, self.fixed = model, spec, choice, dict(fixed or {})

    def forward(self, *tensors: torch.Tensor):
        if self.fixed:
            rows = next(t.shape[0] for i, t in enumerate(tensors) if i not in self.fixed and t.dim())
            tensors = tuple(self.fixed[i].expand(rows, *self.fixed[i].shape[1:]) if i in self.fixed else t
                            for i, t in enumerate(tensors))
        args, kwargs = self.spec.rebuild(tensors)
        outputs = self.choice.pick([t for _, t in flatten_outputs(self.model(*args, **kwargs))])
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def keep_onnx_outputs(model: onnx.ModelProto, output: Selector) -> OutputChoice:
    """Keep, in place, the outputs of ``model`` that ``output`` selects (see
    :func:`choose_outputs`); one output returned as rows, of a rank other than 2, is
    flattened to ``[batch, k]`` by a ``Flatten`` node (one number per row gets an axis)."""
    graph = model.graph
    declared = list(graph.output)
    choice = choose_outputs([(vi.name, vi.type.tensor_type.elem_type in _ONNX_FLOATS) for vi in declared], output)
    if choice.rows:
        tensor_type = declared[choice.kept[0]].type.tensor_type
        dims = ["?" if d is None else d for d in dims_of(declared[choice.kept[0]].type) or []]
        if tensor_type.HasField("shape") and len(dims) not in (0, 2):
            choice = dataclasses.replace(choice, reshape=reshape_note(dims))
    if choice.kept == tuple(range(len(declared))) and choice.reshape is None:
        return choice
    selected = [declared[k] for k in choice.kept]
    del graph.output[:]
    if choice.reshape is None:
        graph.output.extend(selected)
        return choice
    source = selected[0]
    rows = onnx.helper.make_tensor_value_info(f"{source.name}_rows", source.type.tensor_type.elem_type, None)
    graph.node.append(onnx.helper.make_node("Flatten", [source.name], [rows.name], name=f"{source.name}_as_rows",
                                            axis=1))
    graph.output.append(rows)
    return choice


_ONNX_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
