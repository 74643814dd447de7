"""Leaf modules for nonlinear ONNX ops that ``torch.nn`` has no class for.

Explainers attach their DeepLIFT rules to leaf modules by class, so every nonlinear op in
a rewritten model is an instance of a class here or in ``torch.nn``, one instance per
ONNX node. Every class here derived from :class:`Elementwise` computes ``y = f(x)`` element
by element, which is what makes the rescale rule exact for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
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
    is all it takes to add a rule: ``rewriter.explainers`` finds it and registers the rule,
    and the report labels its nodes with ``report_kind``.
    """

    report_kind: str
    over_last_axis = False  # the op works over its input's last axis alone (normalisation, softmax)

    def deeplift_multipliers(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _pair_mean(t: torch.Tensor) -> torch.Tensor:
    """Each row's mean with its reference row (the other half of the batch), in both halves."""
    half = t.shape[0] // 2
    mean = (t[:half] + t[half:]) / 2
    return torch.cat([mean, mean])


class ShapleyProduct(ExactRule):
    """``y = f(a, b)`` for a bilinear ``f`` of two input-dependent tensors.

    ``f`` is an elementwise product, a matrix product or a two-operand einsum. Explainers
    hook one input per module, so ``a`` and ``b`` arrive packed side by side, each
    flattened per batch row (see ``rewriter.functional.pack_operands``); ``shape_a`` and
    ``shape_b`` are their shapes after the batch dim. Outside explanation this is exactly
    ``f(a, b)`` with ordinary gradients; under SHAP or Captum the registered rule uses
    :meth:`deeplift_multipliers`.
    """

    report_kind = "product"

    def __init__(self, op: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...], equation: str | None = None):
        super().__init__()
        self.op, self.equation = op, equation
        self.shape_a, self.shape_b = tuple(shape_a), tuple(shape_b)

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size_a = math.prod(self.shape_a)
        return packed[:, :size_a].reshape(-1, *self.shape_a), packed[:, size_a:].reshape(-1, *self.shape_b)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.op == "mul":
            return a * b
        if self.op == "matmul":
            return torch.matmul(a, b)
        return torch.einsum(self.equation, a, b)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.combine(*self.unpack(packed))

    def deeplift_multipliers(self, packed: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        """Multipliers for the packed input of a batch ``[inputs; references]``.

        ``Δy = f(Δa, b̄) + f(ā, Δb)`` with ``ā, b̄`` the means of each input row and its
        reference row, so ``a``'s multiplier is the gradient of ``f(a, b̄)`` and ``b``'s that
        of ``f(ā, b)``; both halves of the batch get the same multipliers.
        """
        a, b = self.unpack(packed.detach())
        a_mean, b_mean = _pair_mean(a), _pair_mean(b)
        with torch.enable_grad():
            a_var, b_var = a_mean.clone().requires_grad_(), b_mean.clone().requires_grad_()
            (grad_a,) = torch.autograd.grad(self.combine(a_var, b_mean), a_var, grad_output)
            (grad_b,) = torch.autograd.grad(self.combine(a_mean, b_var), b_var, grad_output)
        return torch.cat([grad_a.reshape(a.shape[0], -1), grad_b.reshape(b.shape[0], -1)], 1)

    def extra_repr(self) -> str:
        op = f"einsum '{self.equation}'" if self.op == "einsum" else self.op
        return f"{op}, a={self.shape_a}, b={self.shape_b}"


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

        e_bar, s_bar = _pair_mean(exp), _pair_mean(inverse)
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


class ExactMaxPool(ExactRule):
    """Max pooling whose windows may overlap, with an exact rule.

    SHAP's and Captum's max-pool rule sends each window's change to the positions of its
    maxima (for the input and for the reference) through ``max_unpool``, which keeps one
    value where several windows share a maximum: with overlapping windows the rest is lost.
    The same rule with the contributions added up is exact for any windows.
    """

    report_kind = "maxpool"

    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)
        self.dilation, self.ceil_mode = tuple(dilation), ceil_mode

    def _pool(self, x: torch.Tensor, *args):
        # Looked up per call: torch's max_pool functions cannot be pickled with the module.
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(self.kernel_size)]
        return pool(x, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def deeplift_multipliers(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        half = x.shape[0] // 2
        top, where = self._pool(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, True)
        top_in, top_ref = top[:half], top[half:]
        larger = torch.maximum(top_in, top_ref)
        grad = grad_output[:half]
        plane = x[:half].flatten(2)

        def rows(t: torch.Tensor) -> torch.Tensor:  # reshape, not flatten: vmap has no rule for flatten here
            return t.reshape(*t.shape[:2], -1)

        routed = torch.zeros_like(plane).scatter_add(-1, rows(where[:half]), rows(grad * (larger - top_ref)))
        routed = routed.scatter_add(-1, rows(where[half:]), rows(grad * (top_in - larger)))
        delta = plane - x[half:].flatten(2)
        # A position whose value did not change carries no contribution (see the class notes).
        usable = torch.isfinite(delta) & (delta.abs() >= 1e-7)
        multipliers = torch.where(usable, routed / torch.where(usable, delta, torch.ones_like(delta)),
                                  torch.zeros_like(delta)).reshape(x[:half].shape)
        return torch.cat([multipliers, multipliers])

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")
