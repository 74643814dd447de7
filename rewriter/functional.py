"""Runtime helpers with exact ONNX semantics, for ops that have no one-call torch equivalent.

Each helper takes tensors and plain Python values, so it runs the same whether its inputs
were constants folded at import time or tensors flowing through the rewritten model.
Each helper says, where it is defined, how DeepLIFT treats it (``explained_as``, read by
``rewriter.report``): ``linear`` in its data input (the plain gradient is already the exact
multiplier), ``bilinear`` (linear when one operand depends on the input), ``value_free``
(computes from shapes only) or ``discrete`` (a selection with no gradient: approximate).

The importer calls these through ``torch.fx`` nodes marked as wrapped, so they stay single
calls when a saved model is loaded and re-traced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .errors import InputError

IntsLike = Sequence[int] | torch.Tensor


def _explained_as(kind: str, detail: str | None = None):
    def mark(helper):
        helper.explained_as = (kind, detail)
        return helper

    return mark


linear, bilinear, value_free = _explained_as("linear"), _explained_as("bilinear"), _explained_as("value_free")


def discrete(what: str):
    """A selection, approximate for DeepLIFT: the report names it by ``what``."""
    return _explained_as("discrete", what)


def ints(value: IntsLike | int) -> list[int]:
    """A list of Python ints from an int tensor, a sequence, or a single int."""
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


@linear
def check_input(x: torch.Tensor, shape: Sequence[int | str | None], name: str) -> torch.Tensor:
    """``x`` itself, when its shape is the one the model was rewritten for: the sizes in
    ``shape`` fixed, its strings (the batch) free. Otherwise a clear error, not a failure
    deep inside the graph."""
    if x.dim() != len(shape) or any(isinstance(want, int) and got != want for got, want in zip(x.shape, shape)):
        expected = "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"
        raise InputError(f"input '{name}' has shape {list(x.shape)}; this model was rewritten for {expected}",
                         fix="pass inputs of that shape, or rewrite the model again with example inputs of the "
                             "shape you need")
    return x


@linear
def rows_like(value: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """``value`` with ``x``'s rows: one row repeated for each, or as many rows as ``x`` has as
    they are (a context input bound to a module, see ``ExplainableModule.with_context``)."""
    if value.shape[0] == x.shape[0]:
        return value
    if value.shape[0] == 1:
        return value.expand(x.shape[0], *value.shape[1:])
    raise InputError(f"context '{name}' has {value.shape[0]} rows; the batch has {x.shape[0]}",
                     fix="bind one row of context (with_context(mask[i:i + 1])) or one per row")


@value_free
def zero_state(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Zeros ``[x.shape[axis], size]`` like ``x``: a recurrent layer's state before the first step."""
    return x.new_zeros(x.shape[axis], size)


@value_free
def onnx_dims(items: Sequence[int], scalar: bool = False) -> torch.Tensor:
    """The int64 tensor of a shape computed element by element (see ``rewriter.dims``)."""
    tensor = torch.tensor([int(i) for i in items], dtype=torch.int64)
    return tensor.reshape(()) if scalar else tensor


@value_free
def onnx_trunc_div(a: int, b: int) -> int:
    """Integer division rounding toward zero, as ONNX Div on integers."""
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b >= 0) else -quotient


@value_free
def onnx_shape(x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
    """ONNX Shape: the dims of ``x`` as an int64 tensor, sliced by ``start:end``."""
    return torch.tensor(x.shape[start:end], dtype=torch.int64)


@value_free
def onnx_size(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


@linear
def onnx_reshape(x: torch.Tensor, shape: IntsLike, allowzero: int = 0) -> torch.Tensor:
    """ONNX Reshape: a 0 copies the input's dim (unless ``allowzero``), -1 is inferred."""
    target = ints(shape)
    if not allowzero:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


@linear
def onnx_flatten(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@linear
def onnx_expand(x: torch.Tensor, shape: IntsLike) -> torch.Tensor:
    """ONNX Expand is two-way broadcasting: a target dim of 1 keeps the input's dim."""
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))


@linear
def onnx_unsqueeze(x: torch.Tensor, axes: IntsLike) -> torch.Tensor:
    rank = x.dim() + len(ints(axes))
    for axis in sorted(a + rank if a < 0 else a for a in ints(axes)):
        x = x.unsqueeze(axis)
    return x


@linear
def onnx_squeeze(x: torch.Tensor, axes: IntsLike | None = None) -> torch.Tensor:
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(ints(axes)))


@linear
def onnx_slice(x: torch.Tensor, starts: IntsLike, ends: IntsLike,
               axes: IntsLike | None = None, steps: IntsLike | None = None) -> torch.Tensor:
    """ONNX Slice, including negative steps and out-of-range clamping."""
    starts, ends = ints(starts), ints(ends)
    axes = ints(axes) if axes is not None else list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    reversed_axes = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + x.dim() if axis < 0 else axis
        lo, hi, st = slice(start, end, step).indices(x.shape[axis])
        if st > 0:
            index[axis] = slice(lo, max(hi, lo), st)
        else:
            reversed_axes.append((axis, lo, hi, st))
    out = x[tuple(index)]
    for axis, lo, hi, st in reversed_axes:
        out = out.index_select(axis, torch.arange(lo, hi, st, device=x.device))
    return out


@linear
def onnx_gather(x: torch.Tensor, indices: torch.Tensor | int, axis: int = 0) -> torch.Tensor:
    """ONNX Gather: the indexed axis is replaced by the shape of ``indices``."""
    axis = axis + x.dim() if axis < 0 else axis
    idx = torch.as_tensor(indices, device=x.device).long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    picked = x.index_select(axis, idx.reshape(-1))
    return picked.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


@linear
def onnx_gather_elements(x: torch.Tensor, indices: torch.Tensor, axis: int = 0) -> torch.Tensor:
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return torch.gather(x, axis, idx)


@linear
def onnx_gather_nd(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    idx = indices.long()
    k = idx.shape[-1]
    dims = torch.tensor(x.shape[:k], device=x.device)
    idx = torch.where(idx < 0, idx + dims, idx)
    return x[tuple(idx[..., i] for i in range(k))]


@linear
def onnx_scatter_nd(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor,
                    reduction: str = "none") -> torch.Tensor:
    idx = indices.long()
    k = idx.shape[-1]
    key = tuple(idx[..., i] for i in range(k))
    if reduction == "none":
        return x.index_put(key, updates)
    if reduction == "add":
        return x.index_put(key, updates, accumulate=True)
    out = x.clone()
    current = out[key]
    out[key] = current * updates if reduction == "mul" else (
        torch.maximum(current, updates) if reduction == "max" else torch.minimum(current, updates))
    return out


@linear
def onnx_scatter_elements(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor,
                          axis: int = 0, reduction: str = "none") -> torch.Tensor:
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    if reduction == "none":
        return x.scatter(axis, idx, updates)
    reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return x.scatter_reduce(axis, idx, updates, reduce=reduce)


@linear
def onnx_split(x: torch.Tensor, axis: int, sizes: IntsLike | None, count: int) -> tuple[torch.Tensor, ...]:
    """ONNX Split into ``count`` outputs: explicit ``sizes``, else equal parts, the last smaller."""
    if sizes is not None:
        return torch.split(x, ints(sizes), dim=axis)
    dim = x.shape[axis]
    part = -(-dim // count)
    return torch.split(x, [part] * (count - 1) + [dim - part * (count - 1)], dim=axis)


@linear
def onnx_constant_of_shape(shape: IntsLike, value: torch.Tensor) -> torch.Tensor:
    return torch.full(ints(shape), value.reshape(()).item(), dtype=value.dtype)


@value_free
def onnx_range(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@linear
def onnx_tile(x: torch.Tensor, repeats: IntsLike) -> torch.Tensor:
    return x.repeat(ints(repeats))


@bilinear
def onnx_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div: integer division truncates toward zero."""
    if not a.is_floating_point() and not (isinstance(b, torch.Tensor) and b.is_floating_point()):
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@linear
def onnx_cumsum(x: torch.Tensor, axis: int, exclusive: int = 0, reverse: int = 0) -> torch.Tensor:
    if reverse:
        x = x.flip(axis)
    out = torch.cumsum(x, axis)
    if exclusive:
        out = out - x
    return out.flip(axis) if reverse else out


@linear
def onnx_pad(x: torch.Tensor, pads: IntsLike, mode: str = "constant", value: float = 0.0,
             axes: IntsLike | None = None) -> torch.Tensor:
    """ONNX Pad: ``pads`` holds all begins then all ends, for ``axes`` (default: every axis)."""
    pads = ints(pads)
    axes = [a + x.dim() if a < 0 else a for a in (ints(axes) if axes is not None else range(x.dim()))]
    n = len(axes)
    per_axis = {axis: (pads[i], pads[i + n]) for i, axis in enumerate(axes)}
    first = min((a for a, p in per_axis.items() if p != (0, 0)), default=x.dim())
    torch_pads: list[int] = []
    for axis in range(x.dim() - 1, first - 1, -1):
        torch_pads.extend(per_axis.get(axis, (0, 0)))
    if not torch_pads:
        return x
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    if torch_mode == "constant":
        return F.pad(x, torch_pads, mode="constant", value=value)
    return F.pad(x, torch_pads, mode=torch_mode)


def _source_coordinates(out_len: int, in_len: int, scale: float, mode: str, device) -> torch.Tensor:
    """Where each output position samples the input, per ONNX Resize's coordinate modes;
    the resized length in them is ``in_len * scale``, not rounded (as the spec has it)."""
    i = torch.arange(out_len, dtype=torch.float64, device=device)
    if mode == "asymmetric":
        return i / scale
    if mode == "align_corners":
        resized = in_len * scale
        return i * ((in_len - 1) / (resized - 1)) if resized > 1 else torch.zeros_like(i)
    if mode == "pytorch_half_pixel" and out_len == 1:
        return torch.zeros_like(i)
    if mode in ("half_pixel", "pytorch_half_pixel"):
        return (i + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        center = in_len / 2
        offset = center * (1 - adjustment)
        return offset + (i + 0.5) / scale - 0.5
    raise ValueError(f"coordinate_transformation_mode '{mode}' is not supported")


def _round_nearest(coords: torch.Tensor, nearest_mode: str) -> torch.Tensor:
    if nearest_mode == "floor":
        return torch.floor(coords)
    if nearest_mode == "ceil":
        return torch.ceil(coords)
    if nearest_mode == "round_prefer_ceil":
        return torch.floor(coords + 0.5)
    return torch.ceil(coords - 0.5)  # round_prefer_floor, ONNX's default


def _cubic_weights(t: torch.Tensor, a: float) -> list[torch.Tensor]:
    """Keys' cubic kernel with coefficient ``a`` at the four neighbours ``-1, 0, 1, 2`` of a
    point ``t`` past the lower one."""
    def kernel(d: torch.Tensor) -> torch.Tensor:
        d = d.abs()
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))
    return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]


def _taps(coords: torch.Tensor, in_len: int, mode: str, nearest_mode: str, cubic_a: float,
          exclude_outside: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For every output position, the input indices it blends and their weights."""
    if mode == "nearest":
        index = _round_nearest(coords, nearest_mode).clamp(0, in_len - 1).long()
        return [(index, torch.ones_like(coords))]
    if mode == "linear":
        coords = coords.clamp(0, in_len - 1)
        low = coords.floor()
        return [(low.long(), 1 - (coords - low)), ((low + 1).clamp(max=in_len - 1).long(), coords - low)]
    low = coords.floor()
    positions = [low + k for k in (-1, 0, 1, 2)]
    weights = _cubic_weights(coords - low, cubic_a)
    if exclude_outside:
        weights = [torch.where((p >= 0) & (p <= in_len - 1), w, torch.zeros_like(w)) for p, w in zip(positions, weights)]
        total = sum(weights)
        weights = [w / total for w in weights]
    return [(p.clamp(0, in_len - 1).long(), w) for p, w in zip(positions, weights)]


@linear
def onnx_resize(x: torch.Tensor, scales: Sequence[float] | None, sizes: IntsLike | None,
                mode: str = "nearest", coordinate_mode: str = "half_pixel",
                nearest_mode: str = "round_prefer_floor", axes: IntsLike | None = None,
                cubic_a: float = -0.75, exclude_outside: bool = False) -> torch.Tensor:
    """ONNX Resize in nearest, (multi)linear or cubic mode, one axis at a time.

    Each mode is a gather and a fixed-weight blend of input elements (edge elements
    repeated past the border), so the result is linear in ``x``: exact under DeepLIFT.
    """
    axes = [a + x.dim() if a < 0 else a for a in (ints(axes) if axes is not None else range(x.dim()))]
    if sizes is not None:
        out_sizes = ints(sizes)
        factors = [o / x.shape[a] for o, a in zip(out_sizes, axes)]
    else:
        factors = [float(s) for s in scales]
        out_sizes = [int(math.floor(x.shape[a] * s)) for a, s in zip(axes, factors)]
    for axis, out_len, scale in zip(axes, out_sizes, factors):
        in_len = x.shape[axis]
        if out_len == in_len and scale == 1.0:
            continue
        coords = _source_coordinates(out_len, in_len, scale, coordinate_mode, x.device)
        shape = [1] * x.dim()
        shape[axis] = out_len
        blended = None
        for index, weight in _taps(coords, in_len, mode, nearest_mode, cubic_a, exclude_outside):
            term = x.index_select(axis, index) * weight.to(x.dtype).reshape(shape)
            blended = term if blended is None else blended + term
        x = blended
    return x


@linear
def onnx_depth_to_space(x: torch.Tensor, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@linear
def onnx_space_to_depth(x: torch.Tensor, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    n, c, h, w = x.shape
    b = blocksize
    y = x.reshape(n, c, h // b, b, w // b, b)
    y = y.permute(0, 3, 5, 1, 2, 4) if mode == "DCR" else y.permute(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@linear
def onnx_col2im(x: torch.Tensor, image_shape: Sequence[int], block_shape: Sequence[int], dilations: Sequence[int],
                pads: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    """ONNX Col2Im over two spatial dims: the blocks summed back into the image (torch's
    ``fold``), padded by ``pads`` (begins, then ends) and cropped to ``image_shape``."""
    begin, end = list(pads[:2]), list(pads[2:])
    padded = [size + b + e for size, b, e in zip(image_shape, begin, end)]
    folded = F.fold(x, padded, list(block_shape), dilation=list(dilations), padding=0, stride=list(strides))
    return folded[..., begin[0]:begin[0] + image_shape[0], begin[1]:begin[1] + image_shape[1]]


@linear
def onnx_trilu(x: torch.Tensor, k: int = 0, upper: int = 1) -> torch.Tensor:
    return torch.triu(x, k) if upper else torch.tril(x, k)


@discrete("top-k selection")
def onnx_topk(x: torch.Tensor, k: IntsLike, axis: int = -1, largest: int = 1,
              sorted: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    # ONNX puts equal elements in index order; torch.topk does not promise any order for them
    # (a sort by lengths that are all equal, as packing code does, must keep the rows in place).
    values, indices = torch.sort(x, dim=axis, descending=bool(largest), stable=True)
    count = ints(k)[0]
    return values.narrow(axis, 0, count), indices.narrow(axis, 0, count)


@discrete("non-zero positions")
def onnx_nonzero(x: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(x).t().contiguous()


@linear
def onnx_one_hot(indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor,
                 axis: int = -1) -> torch.Tensor:
    d = int(depth.reshape(()).item())
    idx = indices.long()
    idx = torch.where(idx < 0, idx + d, idx)
    hot = F.one_hot(idx.clamp(0, d - 1), d) * ((idx >= 0) & (idx < d)).unsqueeze(-1)
    off, on = values[0], values[1]
    out = hot.to(values.dtype) * (on - off) + off
    return out.movedim(-1, axis) if axis != -1 else out


@linear
def onnx_avg_pool_padded(x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int],
                         ceil_mode: bool, count_include_pad: bool) -> torch.Tensor:
    """Average pooling with asymmetric zero padding (``pads`` in F.pad order).

    Without ``count_include_pad`` each window is divided by its count of real elements,
    found by pooling a map of ones the same way.
    """
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    total = pool(F.pad(x, pads), kernel, strides, 0, ceil_mode, True)
    if count_include_pad:
        return total
    ones = F.pad(torch.ones_like(x[:1, :1]), pads)
    return total / pool(ones, kernel, strides, 0, ceil_mode, True)


@linear
def onnx_window_sum(x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int],
                    dilations: list[int]) -> torch.Tensor:
    """The sum of each (dilated) pooling window, zero padding ``pads`` (F.pad order): a
    depthwise convolution with a kernel of ones, linear in ``x``."""
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
    channels = x.shape[1]
    ones = x.new_ones(channels, 1, *kernel)
    return conv(F.pad(x, pads), ones, None, strides, 0, dilations, channels)


@linear
def onnx_dilated_avg_pool(x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int],
                          overhang: list[int], dilations: list[int], count_include_pad: bool) -> torch.Tensor:
    """Average pooling over dilated windows: each window's sum (see :func:`onnx_window_sum`)
    over its count. ``pads`` (F.pad order) are the node's; ``overhang`` (F.pad order) extends
    the last windows of ``ceil_mode`` past them, counted by no divisor."""
    full = [p + o for p, o in zip(pads, overhang)]
    total = onnx_window_sum(x, kernel, strides, full, dilations)
    ones = torch.ones_like(x[:1, :1])
    if count_include_pad:  # the node's pads count, the overhang does not
        return total / onnx_window_sum(F.pad(F.pad(ones, pads, value=1.0), overhang), kernel, strides,
                                       [0] * len(pads), dilations)
    return total / onnx_window_sum(ones, kernel, strides, full, dilations)


@discrete("arg max (Hardmax)")
def onnx_hardmax(x: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Hardmax: 1 at the first maximum along ``axis``, 0 elsewhere."""
    index = x.argmax(axis, keepdim=True)
    return torch.zeros_like(x).scatter_(axis, index, 1.0)


@linear
def onnx_split_to_sequence(x: torch.Tensor, axis: int, split: int | list[int] | None,
                           keepdims: int = 1) -> tuple[torch.Tensor, ...]:
    """ONNX SplitToSequence: chunks of ``split`` (size or sizes), or single slices when absent."""
    if split is None:
        parts = torch.split(x, 1, dim=axis)
        return parts if keepdims else tuple(p.squeeze(axis) for p in parts)
    return torch.split(x, split, dim=axis)


@value_free
def onnx_sequence_length(sequence: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.tensor(len(sequence), dtype=torch.int64)


@linear
def pack_operands(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` and ``b`` side by side, each flattened per batch row (a ShapleyProduct's input).

    An operand with a batch of 1 is broadcast to the other's batch first.
    """
    rows = max(a.shape[0], b.shape[0])
    a, b = a.expand(rows, *a.shape[1:]), b.expand(rows, *b.shape[1:])
    return torch.cat([a.reshape(rows, -1), b.reshape(rows, -1)], 1)


def _signal(x: torch.Tensor) -> torch.Tensor:
    """ONNX's signal layout ``[..., 1]`` (real) or ``[..., 2]`` (real, imaginary) as a tensor."""
    return x[..., 0] if x.shape[-1] == 1 else torch.complex(x[..., 0], x[..., 1])


@linear
def onnx_dft(x: torch.Tensor, length: int | None, axis: int, inverse: int = 0, onesided: int = 0) -> torch.Tensor:
    """ONNX DFT along ``axis`` of ``x`` (``[..., n, 1 or 2]``); linear in ``x``. The result is
    ``[..., m, 2]``, or ``[..., m, 1]`` for the real signal of an inverse one-sided transform."""
    axis = axis % x.dim()
    signal = _signal(x)
    if inverse:
        if onesided:
            n = length if length is not None else 2 * (signal.shape[axis] - 1)
            return torch.fft.irfft(signal, n=n, dim=axis).unsqueeze(-1)
        out = torch.fft.ifft(signal, n=length, dim=axis)
    elif onesided and not signal.is_complex():
        out = torch.fft.rfft(signal, n=length, dim=axis)
    else:
        out = torch.fft.fft(signal, n=length, dim=axis)
        if onesided:
            out = out.narrow(axis, 0, out.shape[axis] // 2 + 1)
    return torch.view_as_real(out)


@bilinear
def onnx_stft(signal: torch.Tensor, step: int, window: torch.Tensor | None, length: int,
              onesided: int = 0) -> torch.Tensor:
    """ONNX STFT of ``signal`` (``[batch, time, 1 or 2]``): frames of ``length`` every ``step``,
    weighted by ``window``, each transformed; linear in the signal (and in the window)."""
    frames = signal.unfold(-2, length, step).movedim(-1, -2)  # [batch, frames, length, 1 or 2]
    if window is not None:
        frames = frames * window.reshape(-1, 1)
    return onnx_dft(frames, length, -2, 0, onesided)
