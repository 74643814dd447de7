"""Fourier transforms: DFT and STFT, linear in the signal (the gradient is the exact rule)."""

from __future__ import annotations

from .. import functional
from . import converter


@converter("DFT")
def dft(ctx):
    if ctx.opset >= 20:
        axis = ctx.const(2)
        ctx.require(len(ctx.raw) < 3 or ctx.raw[2] is None or axis is not None, "the DFT axis must be a constant")
        axis = -2 if axis is None else int(axis)
    else:
        axis = ctx.attr("axis", 1)
    length = None
    if len(ctx.raw) > 1 and ctx.raw[1] is not None:
        length = ctx.require_const(1, "the DFT length")
        length = int(length.reshape(-1)[0])
    rank = ctx.rank(0)
    ctx.require(-rank <= axis < rank - 1 and axis != -1, f"DFT axis {axis} is not a signal axis of a rank-{rank} input")
    return ctx.call(functional.onnx_dft, ctx.input(0), length, axis, ctx.attr("inverse", 0), ctx.attr("onesided", 0))


@converter("STFT")
def stft(ctx):
    step = int(ctx.require_const(1, "the STFT frame step").reshape(-1)[0])
    window = ctx.input(2) if len(ctx.raw) > 2 and ctx.raw[2] is not None else None
    length = ctx.const(3) if len(ctx.raw) > 3 and ctx.raw[3] is not None else None
    if length is None:
        window_info = ctx.info(2)
        ctx.require(window_info.shape is not None and isinstance(window_info.shape[0], int),
                    "the STFT frame length must be a constant or follow from a window of known size")
        length = window_info.shape[0]
    ctx.require(ctx.rank(0) == 3, "the STFT signal must be [batch, time, 1 or 2]")
    return ctx.call(functional.onnx_stft, ctx.input(0), step, window, int(length), ctx.attr("onesided", 1))
