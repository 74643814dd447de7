"""How each explainer will treat each node of a rewritten model, and the JSON report.

Every call in the result's graph is classified:

* ``linear``: linear in its input-dependent operands (conv, matmul with a constant, add,
  reshape, pooling by average...): the gradient is the exact multiplier;
* ``rescale``: a one-input elementwise module; ``native`` when the explainer ships the rule,
  ``registered`` when ``rewriter.registration`` added it;
* ``maxpool``: a non-overlapping max pool (the explainers' own rule is exact), or an
  ExactMaxPool (a registered rule that is exact for overlapping windows);
* ``product``: a Shapley product (registered rule);
* ``normalization``, ``softmax``: one module whose registered rule gives its exact
  decomposition's multipliers;
* ``no-gradient``: integer or boolean values (shapes, masks) that no attribution flows through;
* ``approximate``, with a reason: anything else. The top-level ``approximate`` list names
  these nodes; it is empty exactly when every explainer's attributions are exact.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import operator
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import functional, modules, registration
from .interface import OutputChoice
from .passes import PassResult

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
# The self-check's largest relative additivity error that still counts as float rounding.
CHECK_THRESHOLD = 1e-3

def _helpers(kind: str) -> set:
    """The ``rewriter.functional`` helpers that say they are explained as ``kind``."""
    return {f for f in vars(functional).values() if getattr(f, "explained_as", (None,))[0] == kind}


# Functions linear in every operand that depends on the input, when at most one does.
_BILINEAR = {operator.mul, torch.mul, torch.matmul, torch.einsum, F.conv1d, F.conv2d, F.conv3d,
             F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, operator.truediv, F.linear, torch.addmm,
             *_helpers("bilinear")}
# For those that add a term to the product: where the product's factors are.
_PRODUCT_ARGS = {torch.addmm: slice(1, 3), F.linear: slice(0, 2), **{f: slice(0, 2) for f in (
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)}}
_LINEAR = {
    operator.add, operator.sub, operator.neg, operator.getitem, torch.add, torch.sub, torch.cat, torch.stack,
    torch.split, torch.flatten, torch.mean, torch.sum, torch.cumsum, torch.flip, torch.reshape, F.pad,
    F.interpolate, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.batch_norm, torch.ones_like, *_helpers("linear"),
}
_LINEAR_METHODS = {"reshape", "permute", "select", "squeeze", "unsqueeze", "view_as", "t", "flatten", "expand",
                   "transpose", "contiguous", "movedim"}
# Values that carry no information about the input's values.
_VALUE_FREE_FUNCTIONS = {torch.ones_like, *_helpers("value_free")}
_VALUE_FREE_METHODS = {"size"}
# Functions whose result is a truth value, whatever their input: no gradient flows through.
_PREDICATES = {torch.isnan, torch.isinf, torch.isneginf, torch.isposinf, operator.eq, operator.lt, operator.le,
               operator.gt, operator.ge, torch.logical_and, torch.logical_or, torch.logical_xor, torch.logical_not}
_DISCRETE = {torch.argmax: "arg max", torch.argmin: "arg min",
             **{f: f.explained_as[1] for f in _helpers("discrete")}}


def _is_float_node(node: fx.Node) -> bool:
    value = node.meta.get("dtype")
    return value is None or value.is_floating_point


def _explainer_tables() -> dict[str, tuple[set[str], set[str]]]:
    """Installed explainers: the module class names each has a rule for, and which of them
    shaprewrite adds (see :func:`rewriter.registration.handled`)."""
    found = {name: registration.handled(name) for name in ("shap", "captum")}
    return {name: tables for name, tables in found.items() if tables is not None}


def _module_treatment(module: nn.Module, explainer: str, handled: set[str], ours: set[str]) -> tuple[str, str | None]:
    cls = type(module)
    if modules.is_linear_layer(module):
        return "linear", None
    if isinstance(module, modules.GradientFree):
        return "no-gradient", None
    if isinstance(module, modules.ExactRule):
        kind = module.report_kind
        return (kind, None) if cls.__name__ in handled else ("approximate", f"{explainer} has no {kind} rule")
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        def as_tuple(value):
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)

        overlapping = as_tuple(module.kernel_size) != as_tuple(module.stride) or module.ceil_mode \
            or any(p != 0 for p in as_tuple(module.padding))
        return ("approximate", "overlapping max pooling") if overlapping else ("maxpool", None)
    if cls in registration.rescale_modules():
        if cls.__name__ not in handled:
            return "approximate", f"{explainer} has no rule for {cls.__name__}"
        origin = "registered" if cls.__name__ in ours else "native"
        return f"rescale ({origin})", None
    if isinstance(module, nn.Softmax) and explainer == "shap":
        return "rescale (native)", None  # shap's per-element rule on softmax is additive
    return "approximate", f"{explainer} has no exact rule for {cls.__name__}"


def _flows(module: fx.GraphModule) -> tuple[set[fx.Node], set[fx.Node]]:
    """fx nodes whose values depend on the model's explained (float) inputs, in two kinds:
    those that carry the inputs' gradient, and those *decided* by the inputs without one
    (truth values, positions, integers, and what only they feed). Integer inputs are
    context: a row and its references share them (see ``ExplainableModule``), so what only
    they decide is fixed for the explainers and in neither set."""
    carries: set[fx.Node] = set()
    decided: set[fx.Node] = set()
    for node in module.graph.nodes:
        if node.op == "placeholder":
            if _is_float_node(node):
                carries.add(node)
            continue
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        if (node.op == "call_function" and node.target in _VALUE_FREE_FUNCTIONS) or \
                (node.op == "call_method" and node.target in _VALUE_FREE_METHODS):
            continue
        inputs = node.all_input_nodes
        if not any(a in carries or a in decided for a in inputs):
            continue
        free = node.op == "call_module" and isinstance(module.get_submodule(node.target), modules.GradientFree)
        if free or not _is_float_node(node) or node.target in _PREDICATES or not any(a in carries for a in inputs):
            decided.add(node)
        else:
            carries.add(node)
    return carries, decided


_UNATTRIBUTED = ("combines a value decided by a comparison of the inputs (or their arg max, or a cast to "
                 "integers), which carries no gradient: its change goes unattributed")


def _call_treatment(node: fx.Node, varying: set[fx.Node], decided: set[fx.Node] = frozenset()) -> tuple[str, str | None]:
    target = node.target
    if node not in varying or not _is_float_node(node) or target in _PREDICATES:
        return "no-gradient", None
    if target is not torch.where and any(a in decided for a in node.all_input_nodes):
        return "approximate", _UNATTRIBUTED
    operands = [a for a in node.all_input_nodes if a in varying]
    if node.op == "call_method":
        if target in _LINEAR_METHODS or (target == "to" and _is_float_node(node)):
            return "linear", None
        return "approximate", f"method {target}"
    if target is torch.where:
        # A fixed mask (a causal mask, padding known at export) selects linearly.
        if (node.args[0] not in varying and node.args[0] not in decided) or _is_nan_guard(node):
            return "linear", None
        return "approximate", "selection by an input-dependent mask"
    if target is F.grid_sample:  # linear in the data when the sampling grid is fixed
        grid = node.args[1] if len(node.args) > 1 else node.kwargs.get("grid")
        return ("approximate", "sampling by an input-dependent grid") if grid in varying else ("linear", None)
    if target in _DISCRETE:
        return "approximate", _DISCRETE[target]
    if target in _LINEAR:
        return "linear", None
    if target in _BILINEAR:
        if target in _PRODUCT_ARGS:  # a product plus a linear term: only the factors count
            operands = [a for a in node.args[_PRODUCT_ARGS[target]] if a in varying]
        if len(operands) <= 1 and not (target in (operator.truediv, functional.onnx_div)
                                       and len(node.args) > 1 and node.args[1] in varying):
            return "linear", None
        return "approximate", "product of two input-dependent tensors kept as is (shapes not static, or batch not leading)"
    name = getattr(target, "__name__", str(target))
    return "approximate", f"no exact rule for {name}"


def _is_nan_guard(node: fx.Node) -> bool:
    """``where(isnan(p), c, p)``, the guard exporters put after a masked softmax: the
    identity wherever ``p`` is finite, so its gradient is the exact multiplier there."""
    condition, _, kept = (list(node.args) + [None, None, None])[:3]
    return (isinstance(condition, fx.Node) and condition.op == "call_function" and condition.target is torch.isnan
            and condition.args[0] is kept and not isinstance(node.args[1], fx.Node))


def classify(module: fx.GraphModule) -> list[dict]:
    """One entry per call in ``module``'s graph: its kind per installed explainer."""
    tables = _explainer_tables()
    varying, decided = _flows(module)
    entries = []
    for node in module.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        entry: dict = {"node": node.name}
        if node.op == "call_module":
            sub = module.get_submodule(node.target)
            entry["module"] = type(sub).__name__
            for explainer, (handled, ours) in tables.items():
                kind, reason = _module_treatment(sub, explainer, handled, ours)
                entry[explainer] = kind if reason is None else {"kind": kind, "reason": reason}
            batch_reason = _batch_not_leading(node)
            if batch_reason and not modules.is_linear_layer(sub):
                for explainer in tables:
                    entry[explainer] = {"kind": "approximate", "reason": batch_reason}
        else:
            target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            entry["function"] = target
            kind, reason = _call_treatment(node, varying, decided)
            for explainer in tables:
                entry[explainer] = kind if reason is None else {"kind": kind, "reason": reason}
        entries.append(entry)
    return entries


def _batch_not_leading(node: fx.Node) -> str | None:
    """Explainers pair row i with row i + n/2 of a module's input: dim 0 must be the batch."""
    source = node.args[0] if node.args else None
    if isinstance(source, fx.Node) and source.meta.get("batch_leading") is False:
        return "the batch is not the leading dim of the module's input"
    return None


def approximate_nodes(entries: list[dict]) -> list[str]:
    return [e["node"] for e in entries
            if any(isinstance(v, dict) and v.get("kind") == "approximate" for v in e.values())]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("shaprewrite", "torch", "onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon", "shap",
                    "captum", "numpy"):
        try:
            found[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@dataclass
class RewriteReport:
    """What a rewrite did and whether the explanations that follow can be trusted.

    ``as_dict()`` gives the JSON document described by ``report.schema.json``.
    """

    source: str
    exporter: str | None = None
    exporter_fallback_reason: str | None = None
    unshared_modules: dict[str, list[str]] = field(default_factory=dict)
    passes: list[PassResult] = field(default_factory=list)
    verification: list[dict] = field(default_factory=list)
    nodes: list[dict] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    check: dict[str, float | str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # decisions taken on the way, in words
    outputs: OutputChoice | None = None  # the model's outputs and the one(s) the result returns

    @property
    def output_names(self) -> list[str]:
        """The names of the outputs the result returns."""
        return [] if self.outputs is None else [self.outputs.names[i] for i in self.outputs.kept]

    interface: dict | None = None  # the result's inputs (see ExplainableModule.interface)

    @property
    def approximate(self) -> list[str]:
        return approximate_nodes(self.nodes)

    @property
    def not_exact_because(self) -> list[str]:
        """Why the result, called by the explainers as it is returned, does not give exact
        attributions: approximate nodes, unsupported ops, and what explainers cannot take."""
        found = []
        if self.approximate:
            found.append(f"{len(self.approximate)} node(s) have no exact rule: {', '.join(self.approximate[:5])}"
                         f"{' ...' if len(self.approximate) > 5 else ''}")
        if self.unsupported:
            found.append(f"unsupported ops: {', '.join(self.unsupported)}")
        if self.outputs is not None:
            found.extend(self.outputs.problems())
        for explainer, value in self.check.items():
            if not isinstance(value, float):
                found.append(f"{explainer} failed on the result: {value}")
            elif not value <= CHECK_THRESHOLD:
                found.append(f"{explainer}'s attributions do not add up (relative error {value:.3g})")
        inputs = (self.interface or {}).get("inputs")
        if inputs is not None and not any(entry["role"] == "explained" for entry in inputs):
            found.append("no input is attributed: every input is an integer that feeds no embedding lookup "
                         "(pass float features, or ids that an embedding reads)")
        return found

    @property
    def verified(self) -> bool:
        return bool(self.verification) and all(d["ok"] for d in self.verification)

    def as_dict(self) -> dict:
        def error(explainer: str) -> float | None:
            value = self.check.get(explainer)
            return value if isinstance(value, float) else None

        return {
            "tool": "shaprewrite",
            "versions": versions(),
            "source": self.source,
            "exporter": self.exporter,
            "exporter_fallback_reason": self.exporter_fallback_reason,
            "unshared_modules": self.unshared_modules,
            "passes": [{**p.as_dict(), "count": p.count} for p in self.passes],
            "verification": {"verified": self.verified, "checks": self.verification},
            "unsupported": self.unsupported,
            "nodes": self.nodes,
            "approximate": self.approximate,
            "exact": not self.not_exact_because,
            "not_exact_because": self.not_exact_because,
            "interface": {"inputs": (self.interface or {}).get("inputs", []),
                          "source_inputs": (self.interface or {}).get("source_inputs", []),
                          **({"fixed": self.interface["fixed"]} if (self.interface or {}).get("fixed") else {}),
                          "outputs": self.outputs.as_dict() if self.outputs else None},
            "shap_additivity_error": error("shap"),
            "captum_additivity_error": error("captum"),
            "check": self.check,
            "timings": self.timings,
            "notes": self.notes,
        }
