"""Elementwise arithmetic, comparisons, logic, casts and products."""

from __future__ import annotations

import functools
import operator

import torch
from torch import nn

from .. import dims, functional, modules
from ..dims import Dims
from ..onnx_values import ONNX_TO_TORCH_DTYPE
from . import converter, layer


def operand(ctx, i: int, other: int):
    """Input ``i``, as a Python number when it is a one-element constant that broadcasting
    against the run-time input ``other`` would not change (so ``x * 0.5`` reads as such).
    Between two constants it stays a tensor, so folding keeps ONNX's types."""
    value = ctx.const(i)
    if value is not None and ctx.const(other) is None and value.numel() == 1 and value.dtype != torch.bool:
        other_rank = ctx.info(other).rank
        if value.dim() == 0 or (other_rank is not None and other_rank >= value.dim()):
            return value.reshape(()).item()
    return ctx.input(i)


def on_dims(ctx, fn):
    """Elementwise ``fn`` over shape values known element by element (see ``rewriter.dims``);
    None when neither input is such a value."""
    if not any(isinstance(v, Dims) for v in ctx.raw[:2]):
        return None
    a, b = ctx.dims(0), ctx.dims(1)
    if a is None or b is None:
        return None
    (left, left_scalar), (right, right_scalar) = a, b
    n = max(len(left), len(right))
    if {len(left), len(right)} - {1, n}:
        return None
    left, right = (left * n if len(left) == 1 else left), (right * n if len(right) == 1 else right)
    return dims.make((ctx.call(fn, x, y) for x, y in zip(left, right)), scalar=left_scalar and right_scalar)


def _binary(fn, dims_fn=None):
    def convert(ctx):
        if dims_fn is not None:
            result = on_dims(ctx, dims_fn)
            if result is not None:
                return result
        return ctx.call(fn, operand(ctx, 0, 1), operand(ctx, 1, 0))
    return convert


def _bias_into_linear(ctx):
    """``Linear(x) + bias`` as exporters write an N-d linear layer (MatMul, then Add): the bias
    goes into the Linear the MatMul became, when nothing else reads the MatMul's result."""
    for data, constant in ((0, 1), (1, 0)):
        linear, bias = ctx.submodule(ctx.input(data)), ctx.const(constant)
        if (isinstance(linear, nn.Linear) and linear.bias is None and bias is not None and ctx.readers(data) == 1
                and bias.dim() == 1 and bias.numel() == linear.out_features and bias.dtype == linear.weight.dtype):
            linear.bias = nn.Parameter(bias)
            return ctx.input(data)
    return None


@converter("Add")
def add(ctx):
    return _bias_into_linear(ctx) or _binary(operator.add, operator.add)(ctx)

converter("Sub")(_binary(operator.sub, operator.sub))
converter("Mul")(_binary(operator.mul, operator.mul))
# The operators, not torch.lt & co.: these take a Python number on either side.
converter("Equal")(_binary(operator.eq))
converter("Less")(_binary(operator.lt))
converter("LessOrEqual")(_binary(operator.le))
converter("Greater")(_binary(operator.gt))
converter("GreaterOrEqual")(_binary(operator.ge))
converter("And")(_binary(torch.logical_and))
converter("Or")(_binary(torch.logical_or))
converter("Xor")(_binary(torch.logical_xor))


def _is_float(ctx, i: int) -> bool:
    dtype = ctx.info(i).dtype
    return dtype is None or dtype.is_floating_point


@converter("Div")
def div(ctx):
    result = on_dims(ctx, functional.onnx_trunc_div)
    if result is not None:
        return result
    if not (_is_float(ctx, 0) and _is_float(ctx, 1)):
        return ctx.call(functional.onnx_div, ctx.input(0), ctx.input(1))
    if ctx.const(0) is not None and ctx.const(1) is None:
        # c / x is an elementwise function of x alone: a reciprocal module, then a scale.
        return ctx.call(operator.mul, operand(ctx, 0, 1), ctx.module(modules.Reciprocal(), ctx.input(1)))
    return ctx.call(operator.truediv, operand(ctx, 0, 1), operand(ctx, 1, 0))


@converter("Pow")
def power(ctx):
    exponent = ctx.const(1)
    if exponent is not None and exponent.numel() == 1 and _is_float(ctx, 0) and ctx.const(0) is None:
        value = exponent.reshape(()).item()
        return ctx.input(0) if value == 1 else ctx.module(modules.Pow(value), ctx.input(0))
    return ctx.call(torch.pow, operand(ctx, 0, 1), operand(ctx, 1, 0))


@converter("Neg")
def neg(ctx):
    return ctx.call(operator.neg, ctx.input(0))


@converter("Not")
def logical_not(ctx):
    return ctx.call(torch.logical_not, ctx.input(0))


@converter("IsNaN")
def is_nan(ctx):
    return ctx.call(torch.isnan, ctx.input(0))


@converter("IsInf")
def is_inf(ctx):
    x = ctx.input(0)
    if ctx.attr("detect_negative", 1) and ctx.attr("detect_positive", 1):
        return ctx.call(torch.isinf, x)
    return ctx.call(torch.isneginf if ctx.attr("detect_negative", 1) else torch.isposinf, x)


@converter("Mod")
def mod(ctx):
    fn = torch.fmod if ctx.attr("fmod", 0) else torch.remainder
    return ctx.call(fn, ctx.input(0), operand(ctx, 1, 0))


@converter("Where")
def where(ctx):
    return ctx.call(torch.where, ctx.input(0), operand(ctx, 1, 2), operand(ctx, 2, 1))


@converter("Sum")
def variadic_sum(ctx):
    return functools.reduce(lambda a, b: ctx.call(operator.add, a, b), ctx.inputs)


@converter("Mean")
def variadic_mean(ctx):
    return ctx.call(operator.truediv, variadic_sum(ctx), float(len(ctx.inputs)))


def _extremum(ctx, fn, bound: str):
    """Max/Min: against one constant scalar it is a clip of the other input (one module);
    otherwise a pairwise torch.maximum/minimum."""
    if len(ctx.inputs) == 2 and _is_float(ctx, 0):
        for var, const in ((0, 1), (1, 0)):
            value = ctx.const(const)
            if ctx.const(var) is None and value is not None and value.numel() == 1:
                clip = modules.Clip(**{bound: value.reshape(()).item()})
                return ctx.module(clip, ctx.input(var))
    return functools.reduce(lambda a, b: ctx.call(fn, a, b), ctx.inputs)


@converter("Max")
def maximum(ctx):
    return _extremum(ctx, torch.maximum, "min")


@converter("Min")
def minimum(ctx):
    return _extremum(ctx, torch.minimum, "max")


@converter("Cast")
def cast(ctx):
    dtype = ONNX_TO_TORCH_DTYPE.get(ctx.attr("to"))
    ctx.require(dtype is not None, f"Cast to ONNX type {ctx.attr('to')} is not supported",
                "cast to a numeric or bool type")
    if ctx.info(0).dtype == dtype or (isinstance(ctx.raw[0], Dims) and dtype in (torch.int32, torch.int64)):
        return ctx.raw[0]
    return ctx.method("to", ctx.input(0), dtype)


@converter("CastLike")
def cast_like(ctx):
    like = ctx.input(1)
    dtype = like.dtype if isinstance(like, torch.Tensor) else ctx.info(1).dtype
    ctx.require(dtype is not None, "the target type of CastLike is unknown", "use Cast with a fixed type")
    return ctx.method("to", ctx.input(0), dtype)


@converter("MatMul")
def matmul(ctx):
    weight = ctx.const(1)
    if weight is not None and weight.dim() == 2 and ctx.const(0) is None and weight.is_floating_point():
        return ctx.module(layer(nn.Linear, weight.shape[0], weight.shape[1], bias=False, dtype=weight.dtype,
                                weights={"weight": weight.t()}), ctx.input(0))
    return ctx.call(torch.matmul, ctx.input(0), ctx.input(1))


@converter("Einsum")
def einsum(ctx):
    return ctx.call(torch.einsum, ctx.attr("equation"), *ctx.inputs)
