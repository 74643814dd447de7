"""Teach SHAP's ``DeepExplainer`` and Captum's ``DeepLift`` the rules for the modules a
rewritten model contains.

Both explainers pick a DeepLIFT rule by module class: SHAP from ``op_handler`` (keyed by
class name) in ``shap.explainers._deep.deep_pytorch``, Captum from ``SUPPORTED_NON_LINEAR``
(keyed by class) in ``captum.attr._core.deep_lift``. A module they do not list gets the
plain gradient, which is not additive.

What is registered, and only where the installed explainer has no entry of its own:

* the rescale rule (SHAP's own ``nonlinear_1d``, Captum's own ``nonlinear``) for every
  one-input elementwise module class (:func:`rescale_modules`): for such modules the
  rescale rule ``m = Δy/Δx`` is exact. Where an input equals its reference both fall back
  to the derivative, which is infinite at the edge of some functions' domains (``sqrt``
  and ``x ** 0.5`` at 0, ``log`` and ``1/x`` near 0) and makes every attribution NaN;
  there the multiplier is 0, which changes nothing else: it multiplies a difference of 0;
* the modules' own exact rules for every :class:`rewriter.modules.ExactRule` subclass
  (:func:`exact_rule_modules`): the Shapley rule for products of two input-dependent
  tensors, normalisation, softmax, overlapping max pooling; see their
  ``deeplift_multipliers``.

Registration is automatic and visible: ``import rewriter`` (which loading a saved model
does) registers with explainers already imported, and puts an import hook on
``sys.meta_path`` that registers with the others right after they are first imported.
:func:`register` does it explicitly and returns what it added; :func:`unregister` takes
back every entry this process added and removes the hook.

Nothing here imports torch until a rule is registered, so ``import rewriter`` stays light.
"""

from __future__ import annotations

import ast
import functools
import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

SHAP_MODULE = "shap.explainers._deep.deep_pytorch"
CAPTUM_MODULE = "captum.attr._core.deep_lift"


@functools.cache
def rescale_modules() -> tuple[type, ...]:
    """Module classes for which the rescale rule is exact: one-input elementwise functions."""
    from torch import nn

    from . import modules

    return (*modules.TORCH_ELEMENTWISE, nn.PReLU, *modules.elementwise_classes())


def exact_rule_modules() -> tuple[type, ...]:
    """Module classes that carry their own rule (every ``ExactRule`` subclass)."""
    from . import modules

    return tuple(modules.exact_rule_classes())


def _finite_where_unchanged(multipliers, x, threshold: float):
    """``multipliers`` with 0 where the input barely changed (``|Δx| < threshold``, the
    explainers' own cut for falling back to the derivative) and the derivative is not finite."""
    import torch

    half = x.shape[0] // 2
    delta = (x[:half] - x[half:]).abs()
    unchanged = torch.cat([delta, delta]) < threshold
    return torch.where(unchanged & ~torch.isfinite(multipliers), torch.zeros_like(multipliers), multipliers)


def _shap_rescale(native: Callable) -> Callable:
    def nonlinear_1d(module, grad_input, grad_output):  # SHAP saves module.x only under this name
        grads = native(module, grad_input, grad_output)
        return (_finite_where_unchanged(grads[0], module.x, 1e-6), *grads[1:])
    return nonlinear_1d


def _captum_rescale(native: Callable) -> Callable:
    def nonlinear(module, inputs, outputs, grad_input, grad_output, eps: float = 1e-10):
        found = native(module, inputs, outputs, grad_input, grad_output, eps)
        return _finite_where_unchanged(found, inputs, eps)
    return nonlinear


def _shap_exact_rule(module, grad_input, grad_output):
    """SHAP handler: SHAP has saved the module's input as ``module.x``."""
    return (module.deeplift_multipliers(module.x, grad_output[0]), *grad_input[1:])


# SHAP saves a module's input and output (module.x, module.y) only when its handler is named
# "nonlinear_1d" or "maxpool"; these rules need the input.
_shap_exact_rule.__name__ = "nonlinear_1d"


def _captum_exact_rule(module, inputs, outputs, grad_input, grad_output, eps: float = 1e-10):
    """Captum rule: same signature as Captum's own ``nonlinear``."""
    return module.deeplift_multipliers(inputs, grad_output)


# What this process added to each explainer's table, by class name (the rest is native),
# and the entries themselves, so unregister() can take them back.
REGISTERED: dict[str, set[str]] = {"shap": set(), "captum": set()}
_ADDED: list[tuple[dict, object, object]] = []


def _add(explainer: str, table: dict, rules: dict, name_of: Callable[[object], str]) -> list[str]:
    added = []
    for key, rule in rules.items():
        if key not in table:
            table[key] = rule
            _ADDED.append((table, key, rule))
            added.append(name_of(key))
    REGISTERED[explainer].update(added)
    return added


def register_shap(deep_pytorch: ModuleType) -> list[str]:
    """Add the missing entries to SHAP's handler table; the class names added."""
    rescale = _shap_rescale(deep_pytorch.nonlinear_1d)
    rules = {cls.__name__: rescale for cls in rescale_modules()}
    rules.update({cls.__name__: _shap_exact_rule for cls in exact_rule_modules()})
    return _add("shap", deep_pytorch.op_handler, rules, str)


def register_captum(deep_lift: ModuleType) -> list[str]:
    """Add the missing entries to Captum's rule table; the class names added."""
    rescale = _captum_rescale(deep_lift.nonlinear)
    rules: dict = {cls: rescale for cls in rescale_modules()}
    rules.update({cls: _captum_exact_rule for cls in exact_rule_modules()})
    return _add("captum", deep_lift.SUPPORTED_NON_LINEAR, rules, lambda cls: cls.__name__)


_REGISTRARS: dict[str, Callable[[ModuleType], list[str]]] = {
    SHAP_MODULE: register_shap,
    CAPTUM_MODULE: register_captum,
}


def register() -> dict[str, list[str]]:
    """Register with every installed explainer now (importing it); returns what was added
    per explainer module. Idempotent."""
    added = {}
    for name, registrar in _REGISTRARS.items():
        if importlib.util.find_spec(name.split(".")[0]) is None:
            continue
        added[name] = registrar(importlib.import_module(name))
    return added


def unregister() -> list[str]:
    """Take back every rule this process added (leaving entries others changed since) and
    remove the import hook; returns the names taken back. :func:`register` or
    :func:`install` puts them back."""
    taken = []
    while _ADDED:
        table, key, rule = _ADDED.pop()
        if table.get(key) is rule:
            del table[key]
            taken.append(key if isinstance(key, str) else key.__name__)
    for names in REGISTERED.values():
        names.clear()
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterOnImport)]
    return taken


def handled(explainer: str) -> tuple[set[str], set[str]] | None:
    """The module class names ``explainer`` ("shap" or "captum") has a rule for, and those of
    them shaprewrite adds; ``None`` when it is not installed.

    Importing an explainer costs seconds (shap: ~4 s here), more than the rest of a rewrite,
    so one not yet imported is not imported: its own table is read from its source, and
    ours is what the import hook will add to it.
    """
    name = {"shap": SHAP_MODULE, "captum": CAPTUM_MODULE}[explainer]
    if name in sys.modules:
        table = getattr(sys.modules[name], _TABLES[name])
        keys = {key if isinstance(key, str) else key.__name__ for key in table}
        return keys, REGISTERED[explainer] & keys
    if importlib.util.find_spec(name.split(".")[0]) is None:
        return None
    with _PARSE_LOCK:
        native = _table_keys_in_source(name)
    if native is None:  # a layout we cannot read: import it after all
        _REGISTRARS[name](importlib.import_module(name))
        return handled(explainer)
    hooked = any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path)
    ours = {cls.__name__ for cls in (*rescale_modules(), *exact_rule_modules())} - native if hooked else set()
    return native | ours, ours


_TABLES = {SHAP_MODULE: "op_handler", CAPTUM_MODULE: "SUPPORTED_NON_LINEAR"}
_PARSE_LOCK = threading.Lock()


@functools.cache  # also keeps ast.parse out of threads: CPython 3.11's is not thread-safe
def _table_keys_in_source(module: str) -> frozenset[str] | None:
    """Class names keyed in the module's rule table, from its source: ``table = {nn.ReLU: ...}``
    and ``table["ReLU"] = ...``; ``None`` when the source cannot be found or read."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a submodule's spec would import its packages
    if spec is None or not spec.submodule_search_locations:
        return None
    table = _TABLES[module]
    keys: set[str] = set()
    try:
        tree = ast.parse(Path(list(spec.submodule_search_locations)[0], *rest[:-1], f"{rest[-1]}.py")
                         .read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None

    def name_of(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) and node.value is not None else []
        value = getattr(node, "value", None)
        for target in targets:
            if isinstance(target, ast.Name) and target.id == table and isinstance(value, ast.Dict):
                keys.update(filter(None, map(name_of, value.keys)))
            elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) and \
                    target.value.id == table:
                keys.add(name_of(target.slice) or "")
    keys.discard("")
    return frozenset(keys) or None


class _ThenRegister(importlib.abc.Loader):
    """Runs the real loader, then registers with the module it just loaded."""

    def __init__(self, loader: importlib.abc.Loader, registrar: Callable[[ModuleType], list[str]]) -> None:
        self._loader, self._registrar = loader, registrar

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._registrar(module)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds the explainer modules with the other finders and wraps their loaders."""

    def find_spec(self, fullname: str, path, target=None):
        registrar = _REGISTRARS.get(fullname)
        if registrar is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenRegister(spec.loader, registrar)
                return spec
        return None


def install() -> None:
    """Register now with explainers already imported; hook the import of the others."""
    for name, registrar in _REGISTRARS.items():
        if name in sys.modules:
            registrar(sys.modules[name])
    if not any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
