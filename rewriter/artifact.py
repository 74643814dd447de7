"""The saved model: data only, so loading it runs no code, and checked, so a changed file is
refused rather than run.

A pickled ``torch.fx.GraphModule`` carries Python source that ``torch.load`` executes, and an
allow-list of globals cannot help (fx ``exec``s the code text stored in the pickle). The
artifact holds only what ``torch.load(path, weights_only=True)`` accepts: strings, numbers,
bytes, lists, dicts and tensors::

    {"format": "shaprewrite", "version": 2, "class_name": str, "shaprewrite": str,
     "graph": bytes,              # the rewritten ONNX graph, every initializer a placeholder
     "tensors": {name: Tensor},   # the initializers' values
     "state": {name: Tensor},     # the module's state_dict (weights trained since count)
     "interface": dict | None,    # how the module is called (ExplainableModule.interface)
     "embedder": None | {"graph": bytes, "tensors": {...}},  # token ids -> embeddings
     "check": None | {"inputs": [Tensor], "outputs": [Tensor]},  # a small batch and its outputs
     "digest": str}               # SHA-256 of everything above

:func:`load` checks, before it builds anything: that the file is a zip of stored records
that add up to no more than its size and whose CRCs hold; the digest; the declared type and
shape of every tensor; and that no value the graphs compute at the check batch's sizes
passes the limit every ONNX input gets (``max_tensor_bytes``). Then it imports the graphs
again (deterministic; the same converters as any ONNX input), loads the state, and runs the
check batch, whose outputs must be the ones saved. A mismatch anywhere is an
:class:`~rewriter.errors.InputError` naming what changed.

The digest finds accidents and edits made without shaprewrite (flipped bytes, a graph edited
by hand, scaled weights). It is not a signature: whoever can write the file can write a
matching digest, so a file from someone you do not trust is checked, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import torch

from .errors import InputError, ShapRewriteError, describe
from .files import opened_input, write_atomically
from .importer import import_onnx
from .onnx_io import parse_onnx
from .onnx_values import ONNX_TO_TORCH_DTYPE
from .result import ExplainableModule

FORMAT = "shaprewrite"
VERSION = 2
_KEYS = {"format", "version", "class_name", "shaprewrite", "graph", "tensors", "state", "interface", "embedder",
         "check", "digest"}
_REWRITE_AGAIN = "load only files written by rewriter.save or `shaprewrite`; rewrite the model again to get one"
MAX_TENSOR_BYTES = 1 << 30


def save(module: ExplainableModule, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Write ``module`` (a result of :func:`rewriter.rewrite` or :func:`load`) to ``path`` as a
    data-only artifact, atomically; without ``overwrite`` an existing file is an
    :class:`~rewriter.errors.OutputError`, and a full disk one too (nothing is left behind)."""
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
    embedder = module._modules.get("embedder")
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("embedder.")}
    document = {"format": FORMAT, "version": VERSION, "class_name": type(module).__name__, "shaprewrite": __version__,
                "graph": module.onnx_graph, "tensors": dict(module.onnx_tensors), "state": state,
                "interface": module.interface,
                "embedder": None if embedder is None else {"graph": embedder.onnx_graph,
                                                           "tensors": dict(embedder.onnx_tensors),
                                                           "state": embedder.state_dict()},
                "check": _outputs_now(module)}
    document["digest"] = digest(document)
    return document


def _outputs_now(module: ExplainableModule) -> dict | None:
    """The module's check batch with its outputs as the module computes them now (after any
    training since the rewrite)."""
    from .concurrency import GATE

    if module.check_batch is None:
        return None
    inputs = list(module.check_batch["inputs"])
    with GATE.run(), torch.no_grad():
        out = module(*module.embed(*inputs))
    return {"inputs": inputs, "outputs": [o.clone() for o in (out if isinstance(out, tuple) else (out,))]}


def digest(document: Mapping) -> str:
    """SHA-256 of an artifact's content: every field but the digest, tensors by name with
    their type, shape and bytes (so it does not depend on how storages are shared)."""
    sha = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            sha.update(f"tensor {tensor.dtype} {list(tensor.shape)}\n".encode())
            if tensor.numel():
                sha.update(tensor.view(torch.uint8).numpy() if tensor.dim() else tensor.reshape(1).view(torch.uint8)
                           .numpy())
        elif isinstance(value, Mapping):
            sha.update(f"dict {len(value)}\n".encode())
            for key in sorted(value, key=str):
                sha.update(f"key {key!s}\n".encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            sha.update(f"list {len(value)}\n".encode())
            for item in value:
                feed(item)
        elif isinstance(value, bytes):
            sha.update(f"bytes {len(value)}\n".encode())
            sha.update(value)
        else:
            sha.update(f"value {json.dumps(value)}\n".encode())

    feed({key: value for key, value in document.items() if key != "digest"})
    return sha.hexdigest()


def load(path: str | os.PathLike | bytes, *, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> ExplainableModule:
    """Rebuild the module saved at ``path`` by :func:`save` (or the ``shaprewrite`` CLI), or
    from the bytes :func:`to_bytes` gave.

    Nothing in the file is executed: it is read with ``weights_only=True``, checked (see the
    module notes), and its graphs imported like any ONNX input. Anything else — a pickled
    module, a tampered or damaged file, another program's checkpoint — is an
    :class:`~rewriter.errors.InputError`.
    """
    document = _read(path if isinstance(path, bytes) else Path(path))
    origin = "<bytes>" if isinstance(path, bytes) else str(path)
    if document["digest"] != digest(document):
        raise InputError(f"'{origin}' was changed after it was written: its content does not match its digest",
                         fix=_REWRITE_AGAIN)
    check = _check_batch(document, origin)
    embedder = None
    if document["embedder"] is not None:
        part = document["embedder"]
        embedder = _rebuild(part["graph"], part["tensors"], part["state"], "Embedder", origin, max_tensor_bytes,
                            _source_inputs(document["interface"], check) if check else None)
    module = _rebuild(document["graph"], document["tensors"], document["state"], document["class_name"], origin,
                      max_tensor_bytes, _main_inputs(document["interface"], embedder, check) if check else None)
    module.interface, module.check_batch = document["interface"], None if check is None else {"inputs": check["inputs"]}
    if embedder is not None:
        module.add_module("embedder", embedder)
    if check is not None:
        _verify_check_batch(module, check, origin)
    return module


def _rebuild(graph: bytes, tensors: dict, state: dict, class_name: str, origin: str, max_tensor_bytes: int,
             inputs: Mapping[str, torch.Tensor] | None) -> ExplainableModule:
    model = parse_onnx(graph, origin)
    _check_tensors(model, tensors, origin)
    _refuse_oversized(model, max_tensor_bytes, inputs)
    try:
        module = import_onnx(model, class_name, tensors)
    except ShapRewriteError as exc:
        raise InputError(f"the graph in '{origin}' cannot be rebuilt: {exc.message}", fix=_REWRITE_AGAIN) from exc
    try:
        missing, unexpected = module.load_state_dict(_named_tensors(state, "weights", origin), strict=False)
    except RuntimeError as exc:  # a tensor of another shape than its parameter
        raise InputError(f"the weights in '{origin}' do not fit its graph ({describe(exc, 200)})",
                         fix=_REWRITE_AGAIN) from exc
    if missing or unexpected:
        raise InputError(f"the weights in '{origin}' do not fit its graph (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})", fix=_REWRITE_AGAIN)
    module.eval()
    return module


def _refuse_oversized(model: onnx.ModelProto, limit: int, inputs: Mapping[str, torch.Tensor] | None) -> None:
    """The guard every ONNX input gets (see ``passes.guard``), at the sizes of ``inputs``."""
    from .passes import PassOptions, refuse_oversized_values

    refuse_oversized_values(gs.import_onnx(model), PassOptions(max_tensor_bytes=limit,
                                                               feeds=(dict(inputs),) if inputs else ()))


def _source_inputs(interface: Mapping | None, check: Mapping) -> dict[str, torch.Tensor]:
    names = (interface or {}).get("source_inputs") or []
    return dict(zip(names, check["inputs"]))


def _main_inputs(interface: Mapping | None, embedder, check: Mapping) -> dict[str, torch.Tensor] | None:
    """The main graph's inputs at the check batch: the source's, or the embedder's outputs."""
    from .result import main_inputs

    if interface is None:
        return None
    values = check["inputs"]
    if embedder is not None:
        with torch.no_grad():
            try:
                inputs = main_inputs(interface, embedder, values)
            except Exception as exc:  # a tampered embedder or check batch: refuse, never crash
                raise InputError(f"the check batch in the artifact does not run: {describe(exc)}",
                                 fix=_REWRITE_AGAIN) from exc
    else:
        inputs = [values[entry["source"]] for entry in interface["inputs"]]
    return {entry["name"]: t for entry, t in zip(interface["inputs"], inputs)}


def _check_batch(document: Mapping, origin: str) -> dict | None:
    check = document["check"]
    if check is None:
        return None
    if not isinstance(check, dict) or set(check) != {"inputs", "outputs"} or \
            not all(isinstance(t, torch.Tensor) for key in check for t in check[key]):
        raise InputError(f"'{origin}' holds a malformed check batch", fix=_REWRITE_AGAIN)
    return check


def _verify_check_batch(module: ExplainableModule, check: Mapping, origin: str) -> None:
    """The module computes, on the saved check batch, the outputs saved with it."""
    from .concurrency import GATE

    try:
        with GATE.run(), torch.no_grad():
            got = module(*module.embed(*check["inputs"]))
    except Exception as exc:  # a changed graph that no longer runs
        raise InputError(f"the model in '{origin}' fails on its own check batch: {describe(exc)}",
                         fix=_REWRITE_AGAIN) from exc
    got = list(got) if isinstance(got, tuple) else [got]
    for k, (g, want) in enumerate(zip(got, check["outputs"])):
        if g.shape != want.shape or not torch.allclose(g, want, rtol=1e-4, atol=1e-5, equal_nan=True):
            difference = (g - want).abs().max().item() if g.shape == want.shape else float("inf")
            raise InputError(f"the model in '{origin}' does not compute what it computed when saved: output {k} "
                             f"of its check batch differs by {difference:.3g}", fix=_REWRITE_AGAIN)


def _read(source: Path | bytes) -> dict:
    if isinstance(source, bytes):
        path, data = "<bytes>", io.BytesIO(source)
        _check_archive(data, len(source), path)
        data.seek(0)
        return _unpickle(data, path)
    with opened_input(source, "model file") as handle:
        _check_archive(handle, os.fstat(handle.fileno()).st_size, str(source))
        handle.seek(0)
        return _unpickle(handle, str(source))


def _check_archive(handle, size: int, path: str) -> None:
    """A torch archive is a zip of stored (uncompressed) records: their sizes must add up to
    no more than the file's, and every CRC must hold, before torch reads a byte of them."""
    try:
        with zipfile.ZipFile(handle) as archive:
            members = archive.infolist()
            declared = sum(m.file_size for m in members)
            if declared > size or any(m.compress_type != zipfile.ZIP_STORED for m in members):
                raise InputError(f"'{path}' declares {declared:,} bytes of records in {size:,} bytes of file",
                                 fix=_REWRITE_AGAIN)
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise InputError(f"'{path}' is not a shaprewrite artifact: it is not a readable archive "
                         f"({describe(exc, 160)})", fix=_REWRITE_AGAIN) from exc
    if damaged is not None:
        raise InputError(f"'{path}' is damaged: record '{damaged}' does not match its checksum", fix=_REWRITE_AGAIN)


def _unpickle(handle, path: str) -> dict:
    try:
        document = torch.load(handle, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, TypeError,
            AttributeError, KeyError, IndexError, OSError) as exc:
        raise InputError(f"'{path}' is not a shaprewrite artifact: it cannot be read as data only "
                         f"({describe(exc, 160)})", fix=_REWRITE_AGAIN) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"'{path}' is not a shaprewrite artifact", fix=_REWRITE_AGAIN)
    if document.get("version") != VERSION:
        raise InputError(f"'{path}' is a shaprewrite artifact of format version {document.get('version')!r}; this "
                         f"installation reads version {VERSION} (older files carry no digest to check)",
                         fix="rewrite the model again with this installation (or load it with the version that "
                             "wrote it)")
    if set(document) != _KEYS:
        raise InputError(f"'{path}' is a malformed shaprewrite artifact", fix=_REWRITE_AGAIN)
    kinds = {"class_name": str, "graph": bytes, "tensors": dict, "state": dict, "shaprewrite": str, "digest": str,
             "interface": (dict, type(None)), "embedder": (dict, type(None)), "check": (dict, type(None))}
    wrong = [key for key, kind in kinds.items() if not isinstance(document[key], kind)]
    embedder = document["embedder"]
    if embedder is not None and (set(embedder) != {"graph", "tensors", "state"} or not isinstance(embedder["graph"], bytes)):
        wrong.append("embedder")
    if wrong or not document["class_name"].isidentifier():
        raise InputError(f"'{path}' is a malformed shaprewrite artifact (bad {', '.join(wrong) or 'class_name'})",
                         fix=_REWRITE_AGAIN)
    return document


def _named_tensors(value, what: str, path) -> Mapping[str, torch.Tensor]:
    if not isinstance(value, dict) or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise InputError(f"the {what} in '{path}' are not all named tensors", fix=_REWRITE_AGAIN)
    return value


def _check_tensors(model: onnx.ModelProto, tensors, path) -> None:
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
