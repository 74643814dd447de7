"""shaprewrite: rewrite models so SHAP DeepExplainer and Captum DeepLift explain them exactly.

    from rewriter import explain, load, rewrite, save
    explainable = rewrite(model, x)          # torch model + example inputs
    explainable = rewrite("model.onnx")      # or any ONNX file
    save(explainable, "model.pt")             # data only: load("model.pt") runs no code from it
    attributions = explain("model.pt", rows, background)   # checked to add up, batch by batch

``import rewriter`` is light (torch is imported on first use of the API) and registers the
explainer rules rewritten models rely on (see :mod:`rewriter.registration`).
"""

from __future__ import annotations

import importlib

from . import registration
from .errors import (
    AdditivityError,
    ConversionError,
    EngineError,
    ExportError,
    InputError,
    OutputError,
    ShapRewriteError,
    UnsupportedOpError,
    VerificationError,
)

__version__ = "0.1.0"

# The public API by the module that defines it, imported on first use.
_API = {"rewrite": "api", "explain": "explanation", "inspect": "api", "load": "artifact", "save": "artifact", "RewriteReport": "report",
        "ExplainableModule": "result"}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'rewriter' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


registration.install()

__all__ = [
    "AdditivityError",
    "ConversionError",
    "EngineError",
    "ExplainableModule",
    "ExportError",
    "InputError",
    "OutputError",
    "RewriteReport",
    "ShapRewriteError",
    "UnsupportedOpError",
    "VerificationError",
    "explain",
    "inspect",
    "load",
    "rewrite",
    "save",
]
