"""Leaf modules for nonlinear ONNX ops that ``torch.nn`` has no class for.

Explainers attach their DeepLIFT rules to leaf modules by class, so every nonlinear op in
a rewritten model is an instance of a class here or in ``torch.nn``, one instance per
ONNX node. Every class here derived from :class:`Elementwise` computes ``y = f(x)`` element
by element, which is what makes the rescale rule exact for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_LINEAR_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_linear_layer(module: nn.Module) -> bool:
    """Parametric layers that are linear in their input: explainers pass gradients through."""
    return isinstance(module, _LINEAR_LAYERS)


# torch's elementwise activations (PReLU aside: its slopes follow the channel axis).
TORCH_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign)


def keeps_meaning_when_batch_moves(module: nn.Module, axis: int, rank: int) -> bool:
    """Whether ``module`` computes the same values when its input's axis ``axis`` is moved
    to the front: elementwise modules always, last-axis rules (normalisation, softmax)
    unless that axis is the last."""
    if isinstance(module, (*TORCH_ELEMENTWISE, Elementwise)):
        return True
    return getattr(module, "over_last_axis", False) and axis < rank - 1


class Elementwise(nn.Module):
    """A one-input, elementwise nonlinearity ``y = fn(x)``; subclasses set ``fn`` or override
    ``forward``."""

    fn: Callable[[torch.Tensor], torch.Tensor]

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


class ThresholdedRelu(Elementwise):
    """ONNX ThresholdedRelu: ``x`` where ``x > alpha``, else 0."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.alpha, x, torch.zeros_like(x))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Shrink(Elementwise):
    """ONNX Shrink: ``x - bias`` above ``lambd``, ``x + bias`` below ``-lambd``, 0 between. A
    jump is no obstacle: the rescale rule is exact for any elementwise function."""

    def __init__(self, bias: float = 0.0, lambd: float = 0.5) -> None:
        super().__init__()
        self.bias, self.lambd = bias, lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(x)
        return torch.where(x > self.lambd, x - self.bias, torch.where(x < -self.lambd, x + self.bias, zero))

    def extra_repr(self) -> str:
        return f"bias={self.bias}, lambd={self.lambd}"


def _subclasses(base: type) -> list[type]:
    found, pending = [], [base]
    while pending:
        for cls in pending.pop().__subclasses__():
            found.append(cls)
            pending.append(cls)
    return found


def elementwise_classes() -> list[type[Elementwise]]:
    """Every elementwise module class of rewritten models (the rescale rule is exact for each)."""
    from . import cells  # noqa: F401  (defines subclasses; imports this module)

    return _subclasses(Elementwise)


def exact_rule_classes() -> list[type[ExactRule]]:
    """Every module class with a rule of its own (see :class:`ExactRule`): here, in
    ``rewriter.cells`` and in the custom ops' files."""
    from . import cells  # noqa: F401
    from .ops import load

    load()
    return _subclasses(ExactRule)


class GradientFree(nn.Module):
    """A nonlinear op on a value that carries no gradient (computed through a comparison of
    the inputs, or from context only), computed as it is. The op is held outside the module
    tree, so explainers, which hook modules by class, never hook a tensor without a
    gradient (Captum refuses to); the report names what such values change."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "op", op)  # not a child: no explainer finds it

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.op(*args)

    def extra_repr(self) -> str:
        return repr(self.op)


class ExactRule(nn.Module):
    """A module with a DeepLIFT rule of its own, registered with the explainers.

    Explainers hook one input per module and run batches ``[inputs; references]``; the
    rule maps the gradient reaching the output to multipliers for the input. A subclass
    is all it takes to add a rule: ``rewriter.registration`` finds it and registers the rule,
    and the report labels its nodes with ``report_kind``.
    """

    report_kind: str
    over_last_axis = False  # the op works over its input's last axis alone (normalisation, softmax)

    def deeplift_multipliers(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def pair_path_rule(vjp: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                   grad_output: torch.Tensor) -> torch.Tensor:
    """Multipliers for a batch ``[rows; references]`` from ``vjp(start, end, grad)``, a
    Jacobian averaged over the path from each reference to its row: both halves take that
    average (each half's gradient arrives separately)."""
    half = x.shape[0] // 2
    rows, references = x[:half], x[half:]
    return torch.cat([vjp(references, rows, grad_output[:half]), vjp(references, rows, grad_output[half:])])


def pair_mean(t: torch.Tensor) -> torch.Tensor:
    """Each row's mean with its reference row (the other half of the batch), in both halves."""
    half = t.shape[0] // 2
    mean = (t[:half] + t[half:]) / 2
    return torch.cat([mean, mean])


class ExactSoftmax(ExactRule):
    """Softmax over the last dim, with the multipliers of its exact decomposition as its rule.

    ``softmax(x) = e * s`` with ``e = exp(x - max x)`` and ``s = 1 / sum e``: the max takes the
    explainers' max-pool rule (one window: the whole row), exp and the reciprocal the rescale
    rule, the sum is linear and ``e * s`` a Shapley product. (Captum's own softmax rule is not
    additive; SHAP's credits each output only to its own logit.)

    Masked positions (``-inf`` in both rows, as attention masks write them) contribute
    nothing and get multiplier 0. (Computing the rule in float64 was measured and gains
    nothing: where float32 attributions miss by 1e-3, as on Captum's all-ones
    classification models with logits near 3e5, the model's own float32 layers round the
    logits by that much; in float64 the same model is additive to 1e-11.)
    """

    report_kind = "softmax"
    over_last_axis = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, -1)

    def deeplift_multipliers(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        half = x.shape[0] // 2
        top, where = x.max(-1, keepdim=True)
        shifted = x - top
        exp = shifted.exp()
        inverse = exp.sum(-1, keepdim=True).reciprocal()

        def delta(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[:half] - t[half:]] * 2)

        e_bar, s_bar = pair_mean(exp), pair_mean(inverse)
        grad_s = (grad_output * e_bar).sum(-1, keepdim=True)
        m_s = _rescale(delta(inverse), delta(exp.sum(-1, keepdim=True)), -s_bar.square())
        grad_e = grad_output * s_bar + grad_s * m_s
        grad_shift = grad_e * _rescale(delta(exp), delta(shifted), e_bar)
        # The max: its change goes to the input's argmax (up to the larger of the two maxima)
        # and to the reference's argmax (the rest), as the max-pool rule routes it.
        grad_top = -grad_shift.sum(-1, keepdim=True)[:half]
        top_in, top_ref = top[:half], top[half:]
        larger = torch.maximum(top_in, top_ref)
        # Out of place: the exact engine batches this rule over outputs (vmap), which in-place
        # scatters into an unbatched tensor refuse.
        routed = torch.zeros_like(x[:half]).scatter_add(-1, where[:half], grad_top * (larger - top_ref))
        routed = routed.scatter_add(-1, where[half:], grad_top * (top_in - larger))
        through_max = _rescale(routed, x[:half] - x[half:], torch.zeros_like(routed))
        return grad_shift + torch.cat([through_max, through_max])


def _rescale(delta_y: torch.Tensor, delta_x: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """``Δy / Δx``, or ``limit`` (the derivative, or 0 for a position that carries nothing)
    where ``Δx`` is too small to divide by or not finite (``-inf`` in both rows)."""
    usable = torch.isfinite(delta_x) & (delta_x.abs() >= 1e-7)
    return torch.where(usable, delta_y / torch.where(usable, delta_x, torch.ones_like(delta_x)),
                       torch.nan_to_num(limit, nan=0.0))
