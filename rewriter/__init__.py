"""shaprewrite: rewrite models so SHAP DeepExplainer and Captum DeepLift explain them exactly.

    from rewriter import rewrite
    explainable = rewrite(model, x)          # torch model + example inputs
    explainable = rewrite("model.onnx")      # or any ONNX file
"""

from . import explainers
from .api import RewriteReport, rewrite
from .errors import (
    ConversionError,
    ExportError,
    InputError,
    OutputError,
    ShapRewriteError,
    UnsupportedOpError,
    VerificationError,
)
from .result import ExplainableModule

__version__ = "0.1.0"

explainers.install()

__all__ = [
    "ConversionError",
    "ExplainableModule",
    "ExportError",
    "InputError",
    "OutputError",
    "RewriteReport",
    "ShapRewriteError",
    "UnsupportedOpError",
    "VerificationError",
    "rewrite",
]
