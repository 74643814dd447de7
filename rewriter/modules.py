"""Leaf modules for nonlinear ONNX ops that ``torch.nn`` has no class for.

Explainers attach their DeepLIFT rules to leaf modules by class, so every nonlinear op in
a rewritten model is an instance of a class here or in ``torch.nn``, one instance per
ONNX node. Every class here derived from :class:`Elementwise` computes ``y = f(x)`` element
by element, which is what makes the rescale rule exact for it.
"""

from __future__ import annotations

import torch
from torch import nn

_LINEAR_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_linear_layer(module: nn.Module) -> bool:
    """Parametric layers that are linear in their input: explainers pass gradients through."""
    return isinstance(module, _LINEAR_LAYERS)


class Elementwise(nn.Module):
    """A one-input, elementwise nonlinearity ``y = fn(x)``."""

    fn = staticmethod(torch.exp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _elementwise(name: str, fn, doc: str) -> type[Elementwise]:
    # Built here, then bound to a module-level name below, so pickle finds each class.
    return type(name, (Elementwise,), {"fn": staticmethod(fn), "__doc__": doc, "__module__": __name__,
                                       "__qualname__": name})


Exp = _elementwise("Exp", torch.exp, "ONNX Exp.")
Log = _elementwise("Log", torch.log, "ONNX Log.")
Sqrt = _elementwise("Sqrt", torch.sqrt, "ONNX Sqrt.")
Reciprocal = _elementwise("Reciprocal", torch.reciprocal, "ONNX Reciprocal.")
Erf = _elementwise("Erf", torch.erf, "ONNX Erf.")
Abs = _elementwise("Abs", torch.abs, "ONNX Abs.")
Sin = _elementwise("Sin", torch.sin, "ONNX Sin.")
Cos = _elementwise("Cos", torch.cos, "ONNX Cos.")
Tan = _elementwise("Tan", torch.tan, "ONNX Tan.")
Asin = _elementwise("Asin", torch.asin, "ONNX Asin.")
Acos = _elementwise("Acos", torch.acos, "ONNX Acos.")
Atan = _elementwise("Atan", torch.atan, "ONNX Atan.")
Sinh = _elementwise("Sinh", torch.sinh, "ONNX Sinh.")
Cosh = _elementwise("Cosh", torch.cosh, "ONNX Cosh.")
Asinh = _elementwise("Asinh", torch.asinh, "ONNX Asinh.")
Acosh = _elementwise("Acosh", torch.acosh, "ONNX Acosh.")
Atanh = _elementwise("Atanh", torch.atanh, "ONNX Atanh.")
Floor = _elementwise("Floor", torch.floor, "ONNX Floor.")
Ceil = _elementwise("Ceil", torch.ceil, "ONNX Ceil.")
Round = _elementwise("Round", torch.round, "ONNX Round (half to even, as torch.round).")
Sign = _elementwise("Sign", torch.sign, "ONNX Sign.")

UNARY_OPS: dict[str, type[Elementwise]] = {cls.__name__: cls for cls in (
    Exp, Log, Sqrt, Reciprocal, Erf, Abs, Sin, Cos, Tan, Asin, Acos, Atan, Sinh, Cosh, Asinh,
    Acosh, Atanh, Floor, Ceil, Round, Sign)}


class Pow(Elementwise):
    """``x ** exponent`` for a constant exponent."""

    def __init__(self, exponent: float) -> None:
        super().__init__()
        self.exponent = exponent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.pow(x, self.exponent)

    def extra_repr(self) -> str:
        return f"exponent={self.exponent}"


class Clip(Elementwise):
    """``clamp(x, min, max)`` where either bound may be absent."""

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        super().__init__()
        self.min, self.max = min, max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.min, self.max)

    def extra_repr(self) -> str:
        return f"min={self.min}, max={self.max}"


class HardSigmoid(Elementwise):
    """ONNX HardSigmoid ``max(0, min(1, alpha*x + beta))`` for any alpha and beta."""

    def __init__(self, alpha: float = 0.2, beta: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.alpha * x + self.beta, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


class Selu(Elementwise):
    """ONNX Selu with arbitrary alpha and gamma (``nn.SELU`` fixes both)."""

    def __init__(self, alpha: float, gamma: float) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.where(x > 0, x, self.alpha * torch.expm1(x))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"


class ThresholdedRelu(Elementwise):
    """ONNX ThresholdedRelu: ``x`` where ``x > alpha``, else 0."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.alpha, x, torch.zeros_like(x))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class PRelu(Elementwise):
    """ONNX PRelu with a slope tensor of any broadcastable shape."""

    def __init__(self, slope: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.weight)


def elementwise_classes() -> list[type[Elementwise]]:
    """Every elementwise module class defined here (the rescale rule is exact for each)."""
    found, pending = [], [Elementwise]
    while pending:
        for cls in pending.pop().__subclasses__():
            found.append(cls)
            pending.append(cls)
    return found
