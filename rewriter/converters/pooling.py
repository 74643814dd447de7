"""Pooling and reductions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional, modules
from . import converter
from .layers import spatial_padding

_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_window(ctx):
    kernel = ctx.attr("kernel_shape")
    ctx.require(kernel is not None, "the pooling node has no kernel_shape")
    n = len(kernel)
    strides = ctx.attr("strides", [1] * n)
    dilations = ctx.attr("dilations", [1] * n)
    padding, extra = spatial_padding(ctx, kernel, strides, dilations)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        # torch caps padding at half the kernel; pad explicitly instead.
        extra = [p for p in reversed(padding) for _ in range(2)]
        padding = [0] * n
    return kernel, strides, dilations, padding, extra


@converter("MaxPool")
def max_pool(ctx, exact=None):
    """nn.MaxPool*d; ``exact`` builds the module instead for the windows passes/maxima.py
    found overlapping (see ``rewriter.ops.exact_max_pool``)."""
    ctx.require(len(ctx.node.output) < 2 or not ctx.node.output[1], "MaxPool's Indices output is not supported",
                "use only the pooled values")
    kernel, strides, dilations, padding, extra = _pool_window(ctx)
    n = len(kernel)
    ctx.require(n in _MAX_POOL, f"{n}-d max pooling is not supported")
    x = ctx.input(0)
    if extra is not None:
        x = ctx.call(F.pad, x, extra, "constant", float("-inf"))
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    if exact is None:
        pool = _MAX_POOL[n](kernel_size=tuple(kernel), stride=tuple(strides), padding=tuple(padding),
                            dilation=tuple(dilations), ceil_mode=ceil_mode)
    else:
        pool = exact(kernel, strides, padding, dilations, ceil_mode)
    return ctx.module(pool, x)


def _window_sum(ctx, x, kernel, strides, dilations, padding, extra):
    """Each window's sum (see ``functional.onnx_window_sum``), for dilated or Lp pooling."""
    ctx.require(not ctx.attr("ceil_mode", 0), f"{ctx.op_type} with dilations and ceil_mode is not supported")
    pads = extra if extra is not None else [p for p in reversed(padding) for _ in range(2)]
    return ctx.call(functional.onnx_window_sum, x, kernel, strides, pads, dilations), pads


@converter("AveragePool")
def average_pool(ctx):
    kernel, strides, dilations, padding, extra = _pool_window(ctx)
    n = len(kernel)
    ctx.require(n in _AVG_POOL, f"{n}-d average pooling is not supported")
    include_pad = bool(ctx.attr("count_include_pad", 0))
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    if any(d != 1 for d in dilations):
        pads = extra if extra is not None else [p for p in reversed(padding) for _ in range(2)]
        overhang = _ceil_overhang(ctx, kernel, strides, dilations, pads) if ceil_mode else [0] * len(pads)
        return ctx.call(functional.onnx_dilated_avg_pool, ctx.input(0), kernel, strides, pads, overhang, dilations,
                        include_pad)
    if extra is None:
        return ctx.call(_AVG_POOL[n], ctx.input(0), kernel, strides, padding, ceil_mode, include_pad)
    return ctx.call(functional.onnx_avg_pool_padded, ctx.input(0), kernel, strides, extra, ceil_mode, include_pad)


def _ceil_overhang(ctx, kernel, strides, dilations, pads) -> list[int]:
    """How far past the end padding ``ceil_mode``'s last windows reach (F.pad order): one more
    window where the floor leaves a remainder, unless it would start in the end padding."""
    sizes = (ctx.info(0).shape or ())[2:]
    ctx.require(len(sizes) == len(kernel) and all(isinstance(d, int) for d in sizes),
                "ceil_mode pooling over dilated windows needs the input's spatial size")
    overhang = [0] * len(pads)
    for axis, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        begin, end = pads[2 * (len(kernel) - 1 - axis)], pads[2 * (len(kernel) - 1 - axis) + 1]
        span, reach = size + begin + end, d * (k - 1) + 1
        windows = -(-(span - reach) // s) + 1
        if (windows - 1) * s >= size + begin:
            windows -= 1
        overhang[2 * (len(kernel) - 1 - axis) + 1] = max(0, (windows - 1) * s + reach - span)
    return overhang


@converter("LpPool")
def lp_pool(ctx):
    """``(sum over the window of |x|^p)^(1/p)``: elementwise powers around a linear window
    sum, each exact."""
    kernel, strides, dilations, padding, extra = _pool_window(ctx)
    ctx.require(len(kernel) in _AVG_POOL, f"{len(kernel)}-d Lp pooling is not supported")
    p = float(ctx.attr("p", 2))
    x = ctx.input(0)
    if p % 2:
        x = ctx.module(modules.Abs(), x, suffix="_abs")
    powered = ctx.module(modules.Pow(p), x, suffix="_pow")
    total, _ = _window_sum(ctx, powered, kernel, strides, dilations, padding, extra)
    return ctx.module(modules.Pow(1.0 / p), total, suffix="_root")


def _spatial_dims(ctx) -> tuple[int, ...]:
    return tuple(range(2, ctx.rank(0)))


@converter("GlobalAveragePool")
def global_average_pool(ctx):
    return ctx.call(torch.mean, ctx.input(0), _spatial_dims(ctx), keepdim=True)


@converter("GlobalMaxPool")
def global_max_pool(ctx):
    shape = ctx.info(0).shape
    spatial = shape[2:] if shape is not None else None
    if spatial and all(isinstance(d, int) for d in spatial) and len(spatial) in _MAX_POOL:
        # One window over the whole map: a non-overlapping max pool.
        return ctx.module(_MAX_POOL[len(spatial)](kernel_size=tuple(spatial)), ctx.input(0))
    return ctx.call(torch.amax, ctx.input(0), _spatial_dims(ctx), keepdim=True)


def _reduce_dims(ctx) -> tuple[int, ...] | None:
    """The reduced dims, or None for the identity (empty axes with noop_with_empty_axes)."""
    axes = ctx.ints(1, attr="axes")
    if axes is None and ctx.input(1) is not None:
        ctx.fail("the reduction axes must be constant", "fold the axes into an initializer")
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return None
        return tuple(range(ctx.rank(0)))
    return tuple(axes)


def _reduction(body):
    def convert(ctx):
        dims = _reduce_dims(ctx)
        if dims is None:
            return ctx.input(0)
        return body(ctx, dims, bool(ctx.attr("keepdims", 1)))
    return convert


def _sum(ctx, x, dims, keep):
    return ctx.call(torch.sum, x, dims, keepdim=keep)


converter("ReduceSum")(_reduction(lambda ctx, d, k: _sum(ctx, ctx.input(0), d, k)))
converter("ReduceMean")(_reduction(lambda ctx, d, k: ctx.call(torch.mean, ctx.input(0), d, keepdim=k)))
converter("ReduceMax")(_reduction(lambda ctx, d, k: ctx.call(torch.amax, ctx.input(0), d, keepdim=k)))
converter("ReduceMin")(_reduction(lambda ctx, d, k: ctx.call(torch.amin, ctx.input(0), d, keepdim=k)))
converter("ReduceLogSumExp")(_reduction(lambda ctx, d, k: ctx.call(torch.logsumexp, ctx.input(0), d, keepdim=k)))
# The rest are elementwise modules around a sum, which keeps each piece exactly explainable.
converter("ReduceSumSquare")(_reduction(
    lambda ctx, d, k: _sum(ctx, ctx.module(modules.Pow(2.0), ctx.input(0), suffix="_square"), d, k)))
converter("ReduceL1")(_reduction(
    lambda ctx, d, k: _sum(ctx, ctx.module(modules.Abs(), ctx.input(0), suffix="_abs"), d, k)))
converter("ReduceL2")(_reduction(lambda ctx, d, k: ctx.module(
    modules.Sqrt(), _sum(ctx, ctx.module(modules.Pow(2.0), ctx.input(0), suffix="_square"), d, k), suffix="_sqrt")))
converter("ReduceLogSum")(_reduction(
    lambda ctx, d, k: ctx.module(modules.Log(), _sum(ctx, ctx.input(0), d, k), suffix="_log")))


@converter("ReduceProd")
@_reduction
def reduce_prod(ctx, dims, keep):
    x = ctx.input(0)
    for dim in sorted((d + ctx.rank(0) if d < 0 else d for d in dims), reverse=True):
        x = ctx.call(torch.prod, x, dim, keepdim=keep)
    return x


def _arg_extreme(fn):
    def convert(ctx):
        axis, keep = ctx.attr("axis", 0), bool(ctx.attr("keepdims", 1))
        if ctx.attr("select_last_index", 0):
            flipped = ctx.call(torch.flip, ctx.input(0), (axis,))
            size = ctx.call(functional.onnx_gather, ctx.call(functional.onnx_shape, ctx.input(0)), axis)
            index = ctx.call(fn, flipped, axis, keepdim=keep)
            return ctx.call(torch.sub, ctx.call(torch.sub, size, 1), index)
        return ctx.call(fn, ctx.input(0), axis, keepdim=keep)
    return convert


converter("ArgMax")(_arg_extreme(torch.argmax))
converter("ArgMin")(_arg_extreme(torch.argmin))
