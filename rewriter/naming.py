"""Readable, unique node names, derived from where each node came from in the source model.

The importer names every leaf module after its ONNX node, so these names are what a user
sees in ``print(model)``: ``layer1_0_relu`` for the first call of ``layer1[0].relu``,
``layer1_0_relu_1`` for the second call of the same module.
"""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Callable

import onnx

_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"
# A module in torch.nn that is not a container: its path names the op itself.
_TORCH_LEAF = re.compile(r"^torch\.nn\.modules\.(?!container)")


def sanitize(name: str) -> str:
    """A valid, lower-case Python identifier for ``name`` (``/layer1.0/Conv`` -> ``layer1_0_conv``)."""
    text = re.sub(r"[^0-9a-zA-Z_]+", "_", name).strip("_").lower()
    text = re.sub(r"_+", "_", text)
    if not text:
        text = "node"
    if text[0].isdigit() or keyword.iskeyword(text):
        text = "n_" + text
    return text


# Ops exporters add around a torch op to compute shapes, casts and constants for it.
_HELPER_OPS = {"Constant", "ConstantOfShape", "Shape", "Size", "Expand", "Cast", "CastLike", "Reshape",
               "Squeeze", "Unsqueeze", "Concat", "Gather", "Slice", "Identity", "Range", "Transpose"}


class _Source:
    """Where a node came from: module path, op name, whether the path is a torch leaf
    module, and whether the node computes the source op's result (not a helper of it)."""

    def __init__(self, path: str, op: str, leaf: bool, main: bool) -> None:
        self.path, self.op, self.leaf, self.main = path, op, leaf, main


def _from_dynamo(node: onnx.NodeProto, has_exact_output: set[str]) -> _Source | None:
    meta = {p.key: p.value for p in node.metadata_props}
    if _NAME_SCOPES not in meta:
        return None
    try:
        scopes = ast.literal_eval(meta[_NAME_SCOPES])
        classes = ast.literal_eval(meta.get(_CLASS_HIERARCHY, "[]"))
    except (ValueError, SyntaxError):
        return None
    # Nodes the exporter made outside any module carry a placeholder scope, not a path.
    scopes = ["" if "empty_nn_module_stack" in str(s) else s for s in scopes]
    if len(scopes) < 2:
        return None
    fx_name = scopes[-1]
    leaf = len(classes) >= 2 and bool(_TORCH_LEAF.match(classes[-2]))
    base = re.sub(r"_\d+$", "", fx_name)
    # ONNX values keep the names of the torch.fx nodes they compute: the node writing that
    # value is the op itself, the others help it. An op whose fx node returns a tuple
    # (batch norm) writes no such value; then any node that is not a helper op is the op.
    if fx_name in has_exact_output:
        main = bool(node.output) and node.output[0] == fx_name
    else:
        main = node.op_type not in _HELPER_OPS
    return _Source(scopes[-2], base if main else f"{base}_{node.op_type}", leaf, main)


def _fx_names_written(graph: onnx.GraphProto) -> set[str]:
    return {o for node in graph.node for o in node.output[:1]}


def _from_torchscript(node: onnx.NodeProto) -> _Source | None:
    """The same from TorchScript-exporter names such as ``/layer1/layer1.0/relu_1/Relu``."""
    if not node.name.startswith("/"):
        return None
    parts = [p for p in node.name.split("/") if p]
    if not parts:
        return None
    *scopes, op = parts
    op = re.sub(r"_\d+$", "", op)
    # A child of a Sequential is scoped as "<parent>.<index>" after its parent's scope.
    path, previous = "", ""
    for scope in scopes:
        if previous and scope.startswith(previous + "."):
            path += scope[len(previous):]
        else:
            path = f"{path}.{scope}" if path else scope
        previous = scope
    return _Source(path, op, op.lower() == node.op_type.lower(), True)


def _source(node: onnx.NodeProto, written: set[str]) -> _Source:
    return (_from_dynamo(node, written) or _from_torchscript(node)
            or _Source("", node.name or node.op_type, False, True))


def fresh_name(base: str, taken: Callable[[str], bool], start: int = 0) -> str:
    """The first of ``base``, ``base_1``, ``base_2``... (from suffix ``start``) not ``taken``."""
    k = start
    while taken(name := base if k == 0 else f"{base}_{k}"):
        k += 1
    return name


def _within(src: _Source, scope: str) -> _Source:
    """``src`` with its path relative to the module at ``scope`` (the user's model inside the
    wrapper that flattens its call, see ``rewriter.interface.FlatModel``)."""
    if src.path == scope:
        src.path = ""
    elif src.path.startswith(scope + "."):
        src.path = src.path[len(scope) + 1:]
    return src


def assign_unique_names(graph: onnx.GraphProto, scope: str | None = None) -> dict[str, list[str]]:
    """Rename every node of ``graph`` in place to a readable name that no other node has.

    The node computing a call of a torch leaf module (``nn.ReLU``...) is named by the
    module's path alone, unless that module computed several kinds of ops
    (``nn.MultiheadAttention``), in which case the op is appended; a functional call is
    named by its container's path plus the op. Helper nodes an exporter adds around an op
    append their ONNX op type.

    Returns the torch leaf modules called more than once (``self.relu`` reused across a
    block), by module path, with the names of the nodes that now compute each call. Paths
    are relative to the module at ``scope`` when one is given.
    """
    written = _fx_names_written(graph)
    sources = [_source(node, written) for node in graph.node]
    if scope:
        sources = [_within(src, scope) for src in sources]
    ops_per_path: dict[str, set[str]] = {}
    for src in sources:
        if src.leaf and src.main:
            ops_per_path.setdefault(src.path, set()).add(src.op)
    bases = []
    for src in sources:
        if src.leaf and src.main and src.path and len(ops_per_path[src.path]) == 1:
            bases.append(sanitize(src.path))
        else:
            bases.append(sanitize(f"{src.path}.{src.op}" if src.path else src.op))
    taken: set[str] = set()
    counts: dict[str, int] = {}
    for node, base in zip(graph.node, bases):
        # Counting calls per base keeps the search short in graphs with thousands of nodes.
        name = fresh_name(base, taken.__contains__, counts.get(base, 0))
        counts[base] = counts.get(base, 0) + 1
        taken.add(name)
        node.name = name
    calls: dict[str, list[str]] = {}
    for src, node in zip(sources, graph.node):
        if src.leaf and src.main and src.path:
            calls.setdefault(src.path, []).append(node.name)
    return {path: names for path, names in calls.items() if len(names) > 1}
