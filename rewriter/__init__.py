"""shaprewrite: rewrite models so SHAP DeepExplainer and Captum DeepLift explain them exactly.

    from rewriter import rewrite
    explainable = rewrite(model, x)          # torch model + example inputs
    explainable = rewrite("model.onnx")      # or any ONNX file
"""

from . import explainers
from .api import inspect, rewrite
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
    "rewrite",
]
