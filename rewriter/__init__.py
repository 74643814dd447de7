"""shaprewrite: rewrite models so SHAP DeepExplainer and Captum DeepLift explain them exactly.

    from rewriter import load, rewrite, save
    explainable = rewrite(model, x)          # torch model + example inputs
    explainable = rewrite("model.onnx")      # or any ONNX file
    save(explainable, "model.pt")             # data only: load("model.pt") runs no code from it
"""

from . import explainers
from .api import inspect, rewrite
from .artifact import load, save
from .errors import (
    AdditivityError,
    ConversionError,
    ExportError,
    InputError,
    OutputError,
    ShapRewriteError,
    UnsupportedOpError,
    VerificationError,
)
from .report import RewriteReport
from .result import ExplainableModule

__version__ = "0.1.0"

explainers.install()

__all__ = [
    "AdditivityError",
    "ConversionError",
    "ExplainableModule",
    "ExportError",
    "InputError",
    "OutputError",
    "RewriteReport",
    "ShapRewriteError",
    "UnsupportedOpError",
    "VerificationError",
    "inspect",
    "load",
    "rewrite",
    "save",
]
