"""Reading ONNX input safely, and normalising it before the passes run."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx.inliner
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from .attributes import check_attributes
from .errors import InputError, describe
from .files import read_input
from .naming import assign_unique_names
from .onnxkit.facts import STANDARD_DOMAINS
from .onnxkit.weights import LightModel, hold_apart, light_copy

_FIX_REEXPORT = "check that the file is a complete ONNX model (re-export or re-download it)"


def _checked_external_locations(model: onnx.ModelProto, base: Path) -> None:
    """Refuse external-data locations outside the model's own directory, before reading any."""
    root = base.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        candidate = base / location
        if (not location or os.path.isabs(location) or ".." in Path(location).parts
                or candidate.is_symlink() or root not in candidate.resolve().parents):
            raise InputError(
                f"tensor '{tensor.name}' keeps its data at '{location}', outside the model's directory",
                fix="store external data files next to the model file, referenced by plain relative names")
        if not candidate.is_file():
            raise InputError(f"external data file '{location}' for tensor '{tensor.name}' does not exist or is "
                             "not a regular file", fix="copy the data file next to the model file")


def read_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file (and its external data, only from beside it)."""
    path = Path(path)
    # Protobuf cannot parse a message past 2 GiB: larger weights live in external data files.
    model = parse_onnx(read_input(path, "input file", limit=2**31), str(path))
    _checked_external_locations(model, path.parent)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the external data of '{path}': {exc}", fix=_FIX_REEXPORT) from exc
    return model


def parse_onnx(data: bytes, origin: str = "input") -> onnx.ModelProto:
    if not data:
        raise InputError(f"'{origin}' is empty", fix=_FIX_REEXPORT)
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InputError(f"'{origin}' is not an ONNX model (protobuf parse failed)", fix=_FIX_REEXPORT) from exc
    if not model.graph.node and not model.graph.output:
        raise InputError(f"'{origin}' holds no graph", fix=_FIX_REEXPORT)
    return model


def normalize(source: onnx.ModelProto | LightModel, scope: str | None = None) -> tuple[LightModel, dict[str, list[str]]]:
    """Check the model, inline its local functions, and give every node a readable unique name.

    Naming happens here, on the protobuf, because it reads exporter metadata that later
    graph tooling does not keep. Returns the new model, its large weights read from
    ``source`` (or held by it; not copied), and the reused torch modules found (see
    :func:`rewriter.naming.assign_unique_names`; module paths relative to ``scope``).
    """
    model, held = (source.proto, source.held) if isinstance(source, LightModel) else (source, {})
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in STANDARD_DOMAINS and opset.version > newest:
            raise InputError(f"the model uses ONNX opset {opset.version}; this installation knows opsets up to {newest}",
                             fix="re-export the model with an older opset, or upgrade onnx and onnxruntime")
    # Checked and inlined without its large weights: a protobuf past 2 GiB cannot be
    # serialized, and neither step needs their values.
    light, large = light_copy(model, as_inputs=True)
    if light is model:
        light = onnx.ModelProto()
        light.CopyFrom(model)
    try:
        onnx.checker.check_model(light)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise InputError(f"the ONNX model is not valid: {describe(exc)}",
                         fix="repair or re-export the model; `python -m onnx.checker` shows details") from exc
    if light.functions:
        light = onnx.inliner.inline_local_functions(light)
    check_attributes(light.graph)
    prepared = hold_apart(light, large, held)
    reused = assign_unique_names(prepared.proto.graph, scope)
    return prepared, reused
