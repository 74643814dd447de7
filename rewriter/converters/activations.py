"""Elementwise nonlinearities and softmax: each node becomes its own leaf module."""

from __future__ import annotations

import operator

import torch
from torch import nn

from .. import functional, modules
from ..onnxkit.graph import softmax_axis
from . import converter


def leaf(ctx, module: nn.Module):
    return ctx.module(module, ctx.input(0))


def is_integer(ctx, i: int = 0) -> bool:
    dtype = ctx.info(i).dtype
    return dtype is not None and not dtype.is_floating_point


@converter(*modules.UNARY_OPS)
def unary(ctx):
    cls = modules.UNARY_OPS[ctx.op_type]
    if is_integer(ctx):
        # Integer tensors are shape arithmetic, never explained: no module needed.
        return ctx.call(cls.fn, ctx.input(0))
    return leaf(ctx, cls())


# Ops whose torch module takes no arguments (the activations the passes fuse: rewriter/ops/fused_activations.py).
_PLAIN = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Softplus": nn.Softplus,
          "Softsign": nn.Softsign, "Mish": nn.Mish, "HardSwish": nn.Hardswish}


@converter(*_PLAIN)
def plain(ctx):
    return leaf(ctx, _PLAIN[ctx.key]())


@converter("LeakyRelu")
def leaky_relu(ctx):
    return leaf(ctx, nn.LeakyReLU(ctx.attr("alpha", 0.01)))


@converter("Elu")
def elu(ctx):
    return leaf(ctx, nn.ELU(ctx.attr("alpha", 1.0)))


@converter("Gelu")
def gelu(ctx):
    return leaf(ctx, nn.GELU(approximate=ctx.attr("approximate", "none")))


@converter("ThresholdedRelu")
def thresholded_relu(ctx):
    return leaf(ctx, modules.ThresholdedRelu(ctx.attr("alpha", 1.0)))


@converter("Shrink")
def shrink(ctx):
    return leaf(ctx, modules.Shrink(ctx.attr("bias", 0.0), ctx.attr("lambd", 0.5)))


@converter("Hardmax")
def hardmax(ctx):
    axis = softmax_axis(ctx.attr("axis"), ctx.opset)
    ctx.require(ctx.opset >= 13 or axis in (-1, ctx.rank(0) - 1),
                "Hardmax over several trailing dims (opset < 13) is not supported", "re-export with opset 13 or newer")
    return ctx.call(functional.onnx_hardmax, ctx.input(0), axis)


@converter("PRelu")
def prelu(ctx):
    """Integer PRelu (opset 16): float ones are rewritten with ReLUs before import
    (``passes.activations``), so this form needs no explainer rule."""
    x = ctx.input(0)
    return ctx.call(torch.where, ctx.call(operator.ge, x, 0), x, ctx.call(operator.mul, x, ctx.input(1)))


@converter("Clip")
def clip(ctx):
    lo = ctx.attr("min") if ctx.has_attr("min") else ctx.const(1)
    hi = ctx.attr("max") if ctx.has_attr("max") else ctx.const(2)
    given = [i for i in (1, 2) if i < len(ctx.raw) and ctx.raw[i] is not None and ctx.const(i) is None]
    if given:
        return _clip_by_values(ctx, given)
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if lo is None and hi is None:
        return ctx.input(0)  # no bounds: the identity
    if is_integer(ctx):
        return ctx.call(torch.clamp, ctx.input(0), lo, hi)
    if lo == 0.0 and hi == 6.0:
        return leaf(ctx, nn.ReLU6())
    if lo is not None and hi is not None:
        return leaf(ctx, nn.Hardtanh(lo, hi))
    return leaf(ctx, modules.Clip(lo, hi))


def _clip_by_values(ctx, given: list[int]):
    """Bounds computed at run time: ``min(max(x, lo), hi)`` (ONNX's order: ``hi`` wins when
    ``lo > hi``) as ReLU trees, ``u = lo + relu(x - lo)``, ``u - relu(u - hi)``, exact under
    the rescale rule whatever varies."""
    x = ctx.input(0)
    if is_integer(ctx):
        bounds = [ctx.input(i) if i < len(ctx.raw) else None for i in (1, 2)]
        return ctx.call(torch.clamp, x, *bounds)
    lo, hi = (ctx.input(i) if i < len(ctx.raw) and ctx.raw[i] is not None else None for i in (1, 2))
    if lo is not None:
        x = ctx.call(operator.add, lo, ctx.module(nn.ReLU(), ctx.call(operator.sub, x, lo), suffix="_above_min"))
    if hi is not None:
        x = ctx.call(operator.sub, x, ctx.module(nn.ReLU(), ctx.call(operator.sub, x, hi), suffix="_above_max"))
    return x


def _softmax_axis(ctx) -> int:
    axis = softmax_axis(ctx.attr("axis"), ctx.opset)
    if ctx.opset < 13:
        # Before opset 13 softmax ran over all dims from `axis` on; same thing when
        # `axis` is the last dim.
        rank = ctx.rank(0)
        ctx.require(axis in (-1, rank - 1), "softmax over several trailing dims (opset < 13) is not supported",
                    "re-export with opset 13 or newer")
    return axis


@converter("Softmax")
def softmax(ctx):
    """One ExactSoftmax over the last dim (moved there and back when the axis is another)."""
    axis = _softmax_axis(ctx)
    rank = ctx.rank(0)
    axis = axis + rank if axis < 0 else axis
    if axis == rank - 1:
        return ctx.module(modules.ExactSoftmax(), ctx.input(0))
    moved = ctx.method("transpose", ctx.input(0), axis, -1)
    return ctx.method("transpose", ctx.module(modules.ExactSoftmax(), moved), axis, -1)


@converter("LogSoftmax")
def log_softmax(ctx):
    return ctx.module(nn.LogSoftmax(dim=_softmax_axis(ctx)), ctx.input(0))
