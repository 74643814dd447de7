"""The saved model: data only, so loading it runs no code.

A pickled ``torch.fx.GraphModule`` carries Python source that ``torch.load`` executes, and an
allow-list of globals cannot help (fx ``exec``s the code text stored in the pickle). The
artifact holds only what ``torch.load(path, weights_only=True)`` accepts: strings, numbers,
bytes, lists, dicts and tensors::

    {"format": "shaprewrite", "version": 1, "class_name": str, "shaprewrite": str,
     "graph": bytes,        # the rewritten ONNX graph, every initializer a placeholder
     "tensors": {name: Tensor},   # the initializers' values
     "state": {name: Tensor}}     # the module's state_dict (weights trained since count)

:func:`load` rebuilds the module by importing the graph again (deterministic; the same
converters, the same limits as any ONNX input) and loading the state into it.
``torch.save`` deduplicates storages, so weights the module shares with the graph's
initializers are written once.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch

from .errors import InputError, ShapRewriteError, describe
from .files import write_atomically
from .importer import import_onnx
from .onnx_io import parse_onnx
from .onnx_values import ONNX_TO_TORCH_DTYPE
from .result import ExplainableModule

FORMAT = "shaprewrite"
VERSION = 1
_KEYS = {"format", "version", "class_name", "shaprewrite", "graph", "tensors", "state"}
_REWRITE_AGAIN = "load only files written by rewriter.save or `shaprewrite`; rewrite the model again to get one"


def save(module: ExplainableModule, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Write ``module`` (a result of :func:`rewriter.rewrite` or :func:`load`) to ``path`` as a
    data-only artifact, atomically; without ``overwrite`` an existing file is an
    :class:`~rewriter.errors.OutputError`."""
    document = _document(module)
    write_atomically(lambda handle: torch.save(document, handle), path, overwrite=overwrite)


def to_bytes(module: ExplainableModule) -> bytes:
    """The artifact :func:`save` would write, in memory: what ships a model to other machines
    (:func:`load` takes it back)."""
    buffer = io.BytesIO()
    torch.save(_document(module), buffer)
    return buffer.getvalue()


def _document(module: ExplainableModule) -> dict:
    from . import __version__

    if not isinstance(module, ExplainableModule) or module.onnx_graph is None or module.onnx_tensors is None:
        raise InputError(f"cannot save a {type(module).__name__} as a shaprewrite artifact: it does not carry the "
                         "graph it was rewritten from", fix="save the module rewrite() or rewriter.load() returned")
    return {"format": FORMAT, "version": VERSION, "class_name": type(module).__name__, "shaprewrite": __version__,
            "graph": module.onnx_graph, "tensors": dict(module.onnx_tensors), "state": module.state_dict()}


def load(path: str | os.PathLike | bytes) -> ExplainableModule:
    """Rebuild the module saved at ``path`` by :func:`save` (or the ``shaprewrite`` CLI), or
    from the bytes :func:`to_bytes` gave.

    Nothing in the file is executed: it is read with ``weights_only=True``, checked to be a
    well-formed artifact, and its graph imported like any ONNX input. Anything else — a
    pickled module, a tampered file, another program's checkpoint — is an
    :class:`~rewriter.errors.InputError`.
    """
    document = _read(path if isinstance(path, bytes) else Path(path))
    path = "<bytes>" if isinstance(path, bytes) else path
    graph, tensors = document["graph"], document["tensors"]
    model = parse_onnx(graph, str(path))
    _check_tensors(model, tensors, path)
    try:
        module = import_onnx(model, document["class_name"], tensors)
    except ShapRewriteError as exc:
        raise InputError(f"the graph in '{path}' cannot be rebuilt: {exc.message}", fix=_REWRITE_AGAIN) from exc
    missing, unexpected = module.load_state_dict(_state(document, path), strict=False)
    if missing or unexpected:
        raise InputError(f"the weights in '{path}' do not fit its graph (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})", fix=_REWRITE_AGAIN)
    module.eval()
    return module


def _read(source: Path | bytes) -> dict:
    if isinstance(source, bytes):
        path, source = "<bytes>", io.BytesIO(source)
    elif not source.is_file():
        raise InputError(f"'{source}' does not exist or is not a file", fix="check the path")
    else:
        path = source
    try:
        document = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, TypeError,
            AttributeError, KeyError, IndexError, OSError) as exc:
        raise InputError(f"'{path}' is not a shaprewrite artifact: it cannot be read as data only "
                         f"({describe(exc, 160)})", fix=_REWRITE_AGAIN) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT or set(document) != _KEYS:
        raise InputError(f"'{path}' is not a shaprewrite artifact", fix=_REWRITE_AGAIN)
    if document["version"] != VERSION:
        raise InputError(f"'{path}' is a shaprewrite artifact of format version {document['version']!r}; this "
                         f"installation reads version {VERSION}", fix="upgrade shaprewrite, or rewrite the model again")
    kinds = {"class_name": str, "graph": bytes, "tensors": dict, "state": dict, "shaprewrite": str}
    wrong = [key for key, kind in kinds.items() if not isinstance(document[key], kind)]
    if wrong or not document["class_name"].isidentifier():
        raise InputError(f"'{path}' is a malformed shaprewrite artifact (bad {', '.join(wrong) or 'class_name'})",
                         fix=_REWRITE_AGAIN)
    return document


def _named_tensors(value: dict, what: str, path) -> Mapping[str, torch.Tensor]:
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise InputError(f"the {what} in '{path}' are not all named tensors", fix=_REWRITE_AGAIN)
    return value


def _state(document: dict, path) -> Mapping[str, torch.Tensor]:
    return _named_tensors(document["state"], "weights", path)


def _check_tensors(model: onnx.ModelProto, tensors: dict, path) -> None:
    """Every initializer of the graph has a value of its declared type and shape, and
    nothing else is there."""
    _named_tensors(tensors, "initializers", path)
    declared = {init.name: init for init in model.graph.initializer}
    if set(declared) != set(tensors):
        raise InputError(f"the initializers in '{path}' do not match its graph", fix=_REWRITE_AGAIN)
    for name, init in declared.items():
        value = tensors[name]
        if list(value.shape) != list(init.dims) or ONNX_TO_TORCH_DTYPE.get(init.data_type) != value.dtype:
            raise InputError(f"initializer '{name}' in '{path}' does not have its declared type and shape",
                             fix=_REWRITE_AGAIN)
