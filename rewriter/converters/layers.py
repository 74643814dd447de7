"""Parametric layers: Conv, ConvTranspose, Gemm, and the normalisations, as ``torch.nn`` modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from ..onnxkit.facts import group_scale_repeats
from . import converter, layer


def spatial_padding(ctx, kernel: list[int], strides: list[int], dilations: list[int]):
    """``(symmetric padding per dim, extra F.pad list or None)`` from ONNX pads/auto_pad.

    torch layers pad both sides equally; ONNX allows different begin and end pads, which
    become an explicit pad in front of the layer.
    """
    n = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = []
        for axis, (k, s, d) in enumerate(zip(kernel, strides, dilations)):
            span = (k - 1) * d + 1
            if s == 1:
                totals.append(span - 1)
                continue
            shape = ctx.info(0).shape
            size = shape[2 + axis] if shape is not None else None
            ctx.require(isinstance(size, int), "auto_pad SAME with stride > 1 needs static spatial dims",
                        "export with explicit pads")
            totals.append(max((math.ceil(size / s) - 1) * s + span - size, 0))
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        begins, ends = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        begins = ends = [0] * n
    else:
        pads = ctx.attr("pads", [0] * (2 * n))
        begins, ends = pads[:n], pads[n:]
    if begins == ends:
        return list(begins), None
    torch_pads: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        torch_pads.extend((b, e))
    return [0] * n, torch_pads


def _window(ctx, kernel: list[int]):
    n = len(kernel)
    return ctx.attr("strides", [1] * n), ctx.attr("dilations", [1] * n)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_CONV_F = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@converter("Conv")
def conv(ctx):
    weight, bias = ctx.const(1), ctx.const(2)
    dynamic_bias = ctx.input(2) is not None and bias is None
    if bias is not None and not bias.any():
        bias = None  # exporters write "no bias" as zeros
    rank = weight.dim() if weight is not None else ctx.rank(1)
    n = rank - 2
    kernel = ctx.attr("kernel_shape") or list((weight.shape if weight is not None else ctx.info(1).shape)[2:])
    ctx.require(n in _CONV and all(isinstance(k, int) for k in kernel),
                f"{n}-d convolution with an unknown kernel size is not supported")
    strides, dilations = _window(ctx, kernel)
    groups = ctx.attr("group", 1)
    padding, extra = spatial_padding(ctx, kernel, strides, dilations)
    x = ctx.input(0)
    if extra is not None:
        x = ctx.call(F.pad, x, extra)
    if weight is None or dynamic_bias:
        return ctx.call(_CONV_F[n], x, ctx.input(1), ctx.input(2), strides, padding, dilations, groups)
    conv_layer = layer(_CONV[n], weight.shape[1] * groups, weight.shape[0], kernel_size=tuple(weight.shape[2:]),
                       stride=strides, padding=padding, dilation=dilations, groups=groups, bias=bias is not None,
                       dtype=weight.dtype, weights={"weight": weight, "bias": bias})
    return ctx.module(conv_layer, x)


_CONV_T_F = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@converter("ConvTranspose")
def conv_transpose(ctx):
    """nn.ConvTranspose*d for constant weights; the functional form for weights (or a bias)
    computed at run time (linear in the data when the weights are fixed, a product when
    both vary, which the report names)."""
    weight, bias = ctx.const(1), ctx.const(2)
    shape = list(weight.shape) if weight is not None else list(ctx.info(1).shape or ())
    n = len(shape) - 2
    ctx.require(n in _CONV_T and all(isinstance(d, int) for d in shape[1:]),
                f"{n}-d transposed convolution (or one with an unknown kernel) is not supported")
    kernel = shape[2:]
    strides, dilations = _window(ctx, kernel)
    groups = ctx.attr("group", 1)
    output_padding = ctx.attr("output_padding", [0] * n)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if ctx.has_attr("output_shape") or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        data_shape = ctx.info(0).shape
        ctx.require(data_shape is not None and all(isinstance(d, int) for d in data_shape[2:]),
                    "ConvTranspose with output_shape or auto_pad SAME needs static spatial input dims",
                    "give explicit pads")
        # SAME asks for input size times stride (the spec's output_shape for it).
        wanted = ctx.attr("output_shape")[-n:] if ctx.has_attr("output_shape") else \
            [s * i for s, i in zip(strides, data_shape[2:])]
        totals = [s * (i - 1) + op + (k - 1) * d + 1 - w for s, i, op, k, d, w in
                  zip(strides, ctx.info(0).shape[2:], output_padding, kernel, dilations, wanted)]
        # A wanted size past the natural one grows the output at the end instead.
        output_padding = [op - min(t, 0) for op, t in zip(output_padding, totals)]
        totals = [max(t, 0) for t in totals]
        upper = auto_pad != "SAME_LOWER"
        begins = [t // 2 if upper else t - t // 2 for t in totals]
        ends = [t - b for t, b in zip(totals, begins)]
    else:
        pads = ctx.attr("pads", [0] * (2 * n))
        begins, ends = pads[:n], pads[n:]
    symmetric = begins == ends
    padding = begins if symmetric else [0] * n
    if weight is None or (ctx.input(2) is not None and bias is None):
        y = ctx.call(_CONV_T_F[n], ctx.input(0), ctx.input(1), ctx.input(2), strides, padding, output_padding,
                     groups, dilations)
    else:
        y = ctx.module(layer(_CONV_T[n], shape[0], shape[1] * groups, kernel_size=tuple(kernel), stride=strides,
                             padding=padding, output_padding=output_padding, groups=groups, bias=bias is not None,
                             dilation=dilations, dtype=weight.dtype, weights={"weight": weight, "bias": bias}),
                       ctx.input(0))
    if symmetric:
        return y
    # Asymmetric pads remove that many outputs from each end of each spatial dim.
    return ctx.call(functional.onnx_slice, y, begins, [-e if e else 2**62 for e in ends],
                    list(range(2, 2 + n)))


@converter("Gemm")
def gemm(ctx):
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    a, b, c = ctx.input(0), ctx.const(1), ctx.input(2)
    if trans_a:
        a = ctx.method("t", a)
    if b is None or not b.is_floating_point():
        b_value = ctx.method("t", ctx.input(1)) if trans_b else ctx.input(1)
        y = ctx.call(torch.matmul, a, b_value)
        if alpha != 1.0:
            y = ctx.call(torch.mul, y, alpha)
        if c is not None:
            y = ctx.call(torch.add, y, ctx.call(torch.mul, c, beta) if beta != 1.0 else c)
        return y
    weight = b if trans_b else b.t()
    weight = weight if alpha == 1.0 else alpha * weight
    n_out = weight.shape[0]
    c_const = ctx.const(2)
    bias_fits = c_const is not None and c_const.numel() in (1, n_out) and (c_const.dim() < 2 or c_const.shape[0] == 1)
    bias = (beta * c_const).reshape(-1).expand(n_out).clone() if bias_fits else None
    y = ctx.module(layer(nn.Linear, weight.shape[1], n_out, bias=bias_fits, dtype=weight.dtype,
                         weights={"weight": weight, "bias": bias}), a)
    if c is not None and not bias_fits:
        y = ctx.call(torch.add, y, ctx.call(torch.mul, c, beta) if beta != 1.0 else c)
    return y


_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


@converter("BatchNormalization")
def batch_norm(ctx):
    ctx.require(not ctx.attr("training_mode", 0), "BatchNormalization in training mode is not supported",
                "export the model in eval mode (model.eval())")
    scale, shift, mean, var = (ctx.const(i) for i in range(1, 5))
    eps = ctx.attr("epsilon", 1e-5)
    rank = ctx.info(0).rank
    if any(t is None for t in (scale, shift, mean, var)) or rank not in _BATCH_NORM:
        return ctx.call(F.batch_norm, ctx.input(0), ctx.input(3), ctx.input(4), ctx.input(1), ctx.input(2),
                        False, 0.0, eps)
    norm = layer(_BATCH_NORM[rank], scale.numel(), eps=eps, dtype=scale.dtype,
                 weights={"weight": scale, "bias": shift, "running_mean": mean, "running_var": var})
    return ctx.module(norm.eval(), ctx.input(0))


@converter("LayerNormalization")
def layer_norm(ctx):
    scale, bias = ctx.const(1), ctx.const(2)
    axis = ctx.attr("axis", -1)
    eps = ctx.attr("epsilon", 1e-5)
    rank = ctx.rank(0)
    axis = axis + rank if axis < 0 else axis
    ctx.require(scale is not None and (ctx.input(2) is None or bias is not None),
                "LayerNormalization with non-constant scale or bias is not supported")
    shape = ctx.info(0).shape[axis:]
    ctx.require(tuple(scale.shape) == tuple(shape),
                "LayerNormalization whose scale does not match the normalised shape is not supported")
    return ctx.module(layer(nn.LayerNorm, tuple(scale.shape), eps=eps, bias=bias is not None, dtype=scale.dtype,
                            weights={"weight": scale, "bias": bias}), ctx.input(0))


_INSTANCE_NORM = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}


@converter("InstanceNormalization")
def instance_norm(ctx):
    scale, bias = ctx.require_const(1, "the InstanceNormalization scale"), ctx.require_const(2, "its bias")
    rank = ctx.rank(0)
    ctx.require(rank in _INSTANCE_NORM, f"InstanceNormalization of a rank-{rank} input is not supported")
    return ctx.module(layer(_INSTANCE_NORM[rank], scale.numel(), eps=ctx.attr("epsilon", 1e-5), affine=True,
                            dtype=scale.dtype, weights={"weight": scale, "bias": bias}), ctx.input(0))


@converter("GroupNormalization")
def group_norm(ctx):
    scale, bias = ctx.require_const(1, "the GroupNormalization scale"), ctx.require_const(2, "its bias")
    groups = ctx.attr("num_groups")
    shape = ctx.info(0).shape
    channels = shape[1] if shape is not None and len(shape) > 1 else None
    ctx.require(isinstance(channels, int), "GroupNormalization needs a static channel dim")
    repeats = group_scale_repeats(scale.numel(), channels, groups)
    if repeats > 1:
        scale, bias = scale.repeat_interleave(repeats), bias.repeat_interleave(repeats)
    return ctx.module(layer(nn.GroupNorm, groups, channels, eps=ctx.attr("epsilon", 1e-5), dtype=scale.dtype,
                            weights={"weight": scale, "bias": bias}), ctx.input(0))


_GRID_MODES = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic",
               "bicubic": "bicubic"}


@converter("GridSample")
def grid_sample(ctx):
    """torch's grid_sample: linear in the data for a fixed grid (the report treats it so),
    nonlinear in a grid that depends on the input (reported approximate)."""
    mode = _GRID_MODES.get(ctx.attr("mode", "linear" if ctx.opset >= 20 else "bilinear"))
    rank = ctx.rank(0)
    ctx.require(mode is not None and (rank == 4 or (rank == 5 and mode != "bicubic")),
                f"GridSample in mode '{ctx.attr('mode')}' on a rank-{rank} input is not supported")
    return ctx.call(F.grid_sample, ctx.input(0), ctx.input(1), mode=mode,
                    padding_mode=ctx.attr("padding_mode", "zeros"), align_corners=bool(ctx.attr("align_corners", 0)))


@converter("Det")
def det(ctx):
    return ctx.call(torch.linalg.det, ctx.input(0))
