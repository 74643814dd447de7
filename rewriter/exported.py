"""``torch.export`` archives (``.pt2``, written by ``torch.export.save``) as a source.

Pipelines hand over files, not Python objects. A ``.pt2`` holds an ``ExportedProgram`` and,
usually, the example inputs it was exported with; it is translated to ONNX with torch's own
exporter and rewritten like any ONNX file, checked against onnxruntime on that translation.

``torch.export.load`` falls back to unpickling with ``weights_only=False`` when a record does
not load as plain data, and that runs whatever the file carries. It is called here with
``torch.load`` forced to ``weights_only=True`` (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, set
for the call and restored), so a hostile archive fails to load instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
import zipfile
from pathlib import Path

import onnx

from .errors import ExportError, InputError, describe
from .files import opened_input

_ENVIRONMENT = threading.Lock()  # the variable is process-wide: one load at a time sets it
MAX_ARCHIVE_BYTES = 1 << 34


def is_exported_program(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``torch.export`` archive (by its suffix: ONNX files are
    protobuf, never zip)."""
    return Path(path).suffix == ".pt2"


@contextlib.contextmanager
def _weights_only():
    with _ENVIRONMENT:
        previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def read_exported_program(path: str | os.PathLike) -> tuple[onnx.ModelProto, tuple, dict]:
    """The ONNX translation of the program in ``path`` and the example inputs saved with it
    (positional, keyword; empty when none were saved: then the caller's are needed)."""
    import torch

    from .concurrency import GATE
    from .export import quiet

    with opened_input(path, "torch.export archive", MAX_ARCHIVE_BYTES) as handle:
        if not zipfile.is_zipfile(handle):
            raise InputError(f"'{path}' is not a torch.export archive (not a zip file)",
                             fix="write it with torch.export.save, or pass an ONNX file")
    try:
        with _weights_only(), quiet():
            program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a file it cannot read
        raise InputError(f"'{path}' cannot be loaded as a torch.export archive of plain data: {describe(exc)}",
                         fix="write it with torch.export.save from a program of tensors and modules only") from exc
    args, kwargs = program.example_inputs or ((), {})
    try:
        with GATE.export(), quiet():
            translated = torch.onnx.export(program, tuple(args), kwargs=dict(kwargs), dynamo=True, optimize=False,
                                           verbose=False)
    except Exception as exc:  # the exporter's own failures
        raise ExportError(f"the program in '{path}' could not be translated to ONNX: {describe(exc)}",
                          fix="export the model to ONNX yourself and pass the file") from exc
    return translated.model_proto, tuple(args), dict(kwargs)
