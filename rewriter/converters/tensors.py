"""Constants and shape, indexing and layout ops. All are linear in their data input."""

from __future__ import annotations

import torch

from .. import dims, functional
from ..dims import Dims
from . import converter


@converter("Constant")
def constant(ctx):
    for name, make in (
        ("value", lambda v: v),
        ("value_float", lambda v: torch.tensor(v, dtype=torch.float32)),
        ("value_floats", lambda v: torch.tensor(v, dtype=torch.float32)),
        ("value_int", lambda v: torch.tensor(v, dtype=torch.int64)),
        ("value_ints", lambda v: torch.tensor(v, dtype=torch.int64)),
    ):
        if ctx.has_attr(name):
            return make(ctx.attr(name))
    ctx.fail("only numeric Constant values are supported (not strings or sparse tensors)")


@converter("Identity")
def identity(ctx):
    return ctx.raw[0]


@converter("Dropout")
def dropout(ctx):
    # Inference: the data passes through unchanged and the mask keeps everything.
    x = ctx.input(0)
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        return x, ctx.call(torch.ones_like, x, dtype=torch.bool)
    return x


@converter("Shape")
def shape(ctx):
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    shape = ctx.info(0).shape
    if shape is None:
        return ctx.call(functional.onnx_shape, ctx.input(0), start, end)
    x = ctx.input(0)
    items = [d if isinstance(d, int) else ctx.method("size", x, axis) for axis, d in enumerate(shape)]
    return dims.make(items[start:end])


@converter("Size")
def size(ctx):
    return ctx.call(functional.onnx_size, ctx.input(0))


def _dims_input(ctx) -> Dims | None:
    return ctx.raw[0] if isinstance(ctx.raw[0], Dims) else None


@converter("Reshape")
def reshape(ctx):
    target = ctx.int_list(1)
    allowzero = ctx.attr("allowzero", 0)
    shape_value = _dims_input(ctx)
    if shape_value is not None and target is not None and len(target) <= 1:
        # Between 0-d and 1-d: a shape value stays element-wise.
        return dims.make(shape_value.items, scalar=not target)
    if target is None:
        return ctx.call(functional.onnx_reshape, ctx.input(0), ctx.input(1), allowzero)
    if not allowzero and any(isinstance(t, int) and t == 0 for t in target):
        # ONNX's 0 copies the input's dim there.
        shape = ctx.info(0).shape
        x = ctx.input(0)
        target = [(shape[i] if shape is not None and isinstance(shape[i], int) else ctx.method("size", x, i))
                  if isinstance(t, int) and t == 0 else t for i, t in enumerate(target)]
    return ctx.method("reshape", ctx.input(0), target)


@converter("Flatten")
def flatten(ctx):
    axis = ctx.attr("axis", 1)
    if axis == 1 and ctx.info(0).rank != 1:  # torch.flatten(x, 1) refuses a vector; ONNX gives [n, 1]
        return ctx.call(torch.flatten, ctx.input(0), 1)
    return ctx.call(functional.onnx_flatten, ctx.input(0), axis)


@converter("Transpose")
def transpose(ctx):
    perm = ctx.attr("perm") or list(reversed(range(ctx.rank(0))))
    return ctx.method("permute", ctx.input(0), perm)


@converter("Concat")
def concat(ctx):
    parts = [ctx.dims(i) for i in range(len(ctx.raw)) if ctx.raw[i] is not None]
    if any(isinstance(v, Dims) for v in ctx.raw) and all(p is not None and not p[1] for p in parts):
        return dims.make(item for items, _ in parts for item in items)
    return ctx.call(torch.cat, [v for v in ctx.inputs if v is not None], ctx.attr("axis"))


@converter("Split")
def split(ctx):
    axis = ctx.attr("axis", 0)
    count = len(ctx.node.output)
    sizes = ctx.ints(1, attr="split")
    if sizes is None and ctx.input(1) is not None:
        parts = ctx.call(functional.onnx_split, ctx.input(0), axis, ctx.input(1), count)
    else:
        parts = ctx.call(functional.onnx_split, ctx.input(0), axis, sizes, count)
    return tuple(ctx.getitem(parts, i) for i in range(count))


_UNBOUNDED = 2**31


@converter("Slice")
def slice_(ctx):
    if ctx.has_attr("starts"):  # opset < 10
        starts, ends, axes, steps = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None
    else:
        starts, ends, axes, steps = (ctx.ints(i) if ctx.input(i) is not None else None for i in range(1, 5))
        if starts is None or ends is None or (ctx.input(3) is not None and axes is None) \
                or (ctx.input(4) is not None and steps is None):
            return ctx.call(functional.onnx_slice, *ctx.inputs)
    rank = ctx.info(0).rank
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    shape_value = _dims_input(ctx)
    if shape_value is not None and len(starts) == 1:
        return dims.make(shape_value.items[slice(starts[0], ends[0], steps[0])])
    if rank is None or any(s <= 0 for s in steps):
        return ctx.call(functional.onnx_slice, ctx.input(0), starts, ends, axes, steps)
    index = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        # Exporters write "to the end" as INT64_MAX; torch warns about such bounds.
        start = None if start <= -_UNBOUNDED else start
        end = None if end >= _UNBOUNDED else end
        index[axis + rank if axis < 0 else axis] = slice(start, end, None if step == 1 else step)
    while index and index[-1] == slice(None):
        index.pop()
    return ctx.getitem(ctx.input(0), tuple(index))


@converter("Gather")
def gather(ctx):
    axis = ctx.attr("axis", 0)
    indices = ctx.const(1)
    shape_value = _dims_input(ctx)
    if shape_value is not None and indices is not None and indices.dim() <= 1:
        picked = [shape_value.items[int(i)] for i in indices.reshape(-1).tolist()]
        return dims.make(picked, scalar=indices.dim() == 0)
    if indices is not None and indices.dim() == 0:
        return ctx.method("select", ctx.input(0), axis, int(indices))
    return ctx.call(functional.onnx_gather, ctx.input(0), ctx.input(1), axis)


@converter("GatherElements")
def gather_elements(ctx):
    return ctx.call(functional.onnx_gather_elements, ctx.input(0), ctx.input(1), ctx.attr("axis", 0))


@converter("GatherND")
def gather_nd(ctx):
    ctx.require(ctx.attr("batch_dims", 0) == 0, "GatherND with batch_dims > 0 is not supported")
    return ctx.call(functional.onnx_gather_nd, ctx.input(0), ctx.input(1))


@converter("ScatterND")
def scatter_nd(ctx):
    return ctx.call(functional.onnx_scatter_nd, *ctx.inputs[:3], ctx.attr("reduction", "none"))


@converter("ScatterElements")
def scatter_elements(ctx):
    return ctx.call(functional.onnx_scatter_elements, *ctx.inputs[:3], ctx.attr("axis", 0),
                    ctx.attr("reduction", "none"))


@converter("Squeeze")
def squeeze(ctx):
    axes = ctx.ints(1, attr="axes")
    shape_value = _dims_input(ctx)
    if shape_value is not None and len(shape_value.items) == 1:
        return dims.make(shape_value.items, scalar=True)
    if axes is None and ctx.input(1) is not None:
        return ctx.call(functional.onnx_squeeze, ctx.input(0), ctx.input(1))
    if axes is None:
        return ctx.call(functional.onnx_squeeze, ctx.input(0))
    return ctx.method("squeeze", ctx.input(0), tuple(axes))


@converter("Unsqueeze")
def unsqueeze(ctx):
    axes = ctx.ints(1, attr="axes")
    shape_value = _dims_input(ctx)
    if shape_value is not None and shape_value.scalar and axes in ([0], [-1]):
        return dims.make(shape_value.items)
    if axes is not None and len(axes) == 1:
        return ctx.method("unsqueeze", ctx.input(0), axes[0])
    return ctx.call(functional.onnx_unsqueeze, ctx.input(0), axes if axes is not None else ctx.input(1))


def _shape_argument(ctx, i: int):
    """A shape input as a list of ints/int nodes when known that way, else its tensor."""
    items = ctx.int_list(i)
    return items if items is not None else ctx.input(i)


@converter("Expand")
def expand(ctx):
    return ctx.call(functional.onnx_expand, ctx.input(0), _shape_argument(ctx, 1))


@converter("Tile")
def tile(ctx):
    return ctx.call(functional.onnx_tile, ctx.input(0), _shape_argument(ctx, 1))


@converter("ConstantOfShape")
def constant_of_shape(ctx):
    value = ctx.attr("value", torch.zeros(1, dtype=torch.float32))
    return ctx.call(functional.onnx_constant_of_shape, _shape_argument(ctx, 0), value)


@converter("Range")
def range_(ctx):
    return ctx.call(functional.onnx_range, *ctx.inputs)


@converter("Pad")
def pad(ctx):
    mode = ctx.attr("mode", "constant")
    if ctx.has_attr("pads"):  # opset < 11
        return ctx.call(functional.onnx_pad, ctx.input(0), ctx.attr("pads"), mode, ctx.attr("value", 0.0))
    value = ctx.const(2)
    ctx.require(ctx.input(2) is None or value is not None, "the Pad value must be a constant")
    fill = 0.0 if value is None or value.numel() == 0 else value.reshape(()).item()
    pads = ctx.ints(1)
    axes = ctx.ints(3) if ctx.input(3) is not None else None
    return ctx.call(functional.onnx_pad, ctx.input(0), pads if pads is not None else ctx.input(1), mode, fill, axes)


def _resize(ctx, scales, sizes, coordinate_mode: str, nearest_mode: str):
    mode = ctx.attr("mode", "nearest")
    ctx.require(not ctx.attr("antialias", 0), "Resize with antialias is not supported")
    ctx.require(ctx.attr("keep_aspect_ratio_policy", "stretch") == "stretch",
                "Resize with a keep_aspect_ratio_policy other than stretch is not supported")
    ctx.require(mode in ("nearest", "linear", "cubic"), f"Resize mode '{mode}' is not supported")
    ctx.require(coordinate_mode != "tf_crop_and_resize", "Resize with tf_crop_and_resize is not supported")
    return ctx.call(functional.onnx_resize, ctx.input(0), scales, sizes, mode, coordinate_mode, nearest_mode,
                    ctx.attr("axes"), ctx.attr("cubic_coeff_a", -0.75), bool(ctx.attr("exclude_outside", 0)))


def _given(ctx, i: int):
    """An optional Resize input: its constant value, the runtime value, or None when absent/empty."""
    if ctx.input(i) is None:
        return None
    value = ctx.const(i)
    if value is None:
        return ctx.input(i)
    return value.tolist() if value.numel() else None


@converter("Resize")
def resize(ctx):
    if ctx.opset < 11:
        scales, sizes = _given(ctx, 1), None
    else:
        scales, sizes = _given(ctx, 2), _given(ctx, 3)
    return _resize(ctx, scales, sizes, ctx.attr("coordinate_transformation_mode", "half_pixel"),
                   ctx.attr("nearest_mode", "round_prefer_floor"))


@converter("Upsample")
def upsample(ctx):
    scales = ctx.attr("scales") or _given(ctx, 1)
    return _resize(ctx, scales, None, "asymmetric", "floor")


@converter("DepthToSpace")
def depth_to_space(ctx):
    return ctx.call(functional.onnx_depth_to_space, ctx.input(0), ctx.attr("blocksize"), ctx.attr("mode", "DCR"))


@converter("SpaceToDepth")
def space_to_depth(ctx):
    return ctx.call(functional.onnx_space_to_depth, ctx.input(0), ctx.attr("blocksize"), ctx.attr("mode", "DCR"))


@converter("Col2Im")
def col2im(ctx):
    image, block = ctx.ints(1), ctx.ints(2)
    ctx.require(image is not None and block is not None, "Col2Im needs a constant image and block shape")
    # torch's fold is two-dimensional (as nn.Fold, which exports to Col2Im); onnxruntime's own
    # one-dimensional Col2Im disagrees with the spec past the first channel.
    ctx.require(len(image) == 2, f"Col2Im over {len(image)} spatial dims is not supported (2 are)")
    return ctx.call(functional.onnx_col2im, ctx.input(0), image, block, ctx.attr("dilations", [1, 1]),
                    ctx.attr("pads", [0, 0, 0, 0]), ctx.attr("strides", [1, 1]))


@converter("Trilu")
def trilu(ctx):
    k = ctx.ints(1)
    return ctx.call(functional.onnx_trilu, ctx.input(0), k[0] if k else 0, ctx.attr("upper", 1))


@converter("CumSum")
def cumsum(ctx):
    axis = ctx.ints(1)
    ctx.require(axis is not None, "the CumSum axis must be a constant")
    return ctx.call(functional.onnx_cumsum, ctx.input(0), axis[0], ctx.attr("exclusive", 0), ctx.attr("reverse", 0))


@converter("TopK")
def topk(ctx):
    k = ctx.ints(1, attr="k")
    result = ctx.call(functional.onnx_topk, ctx.input(0), k if k is not None else ctx.input(1),
                      ctx.attr("axis", -1), ctx.attr("largest", 1), ctx.attr("sorted", 1))
    return ctx.getitem(result, 0), ctx.getitem(result, 1)


@converter("NonZero")
def nonzero(ctx):
    return ctx.call(functional.onnx_nonzero, ctx.input(0))


@converter("OneHot")
def one_hot(ctx):
    return ctx.call(functional.onnx_one_hot, *ctx.inputs, ctx.attr("axis", -1))



# Sequences: a split into a sequence, read back by position, is how the dynamo exporter
# writes torch.chunk / torch.split / unbind.


@converter("SplitToSequence")
def split_to_sequence(ctx):
    axis, keepdims = ctx.attr("axis", 0), ctx.attr("keepdims", 1)
    if ctx.input(1) is None:
        return ctx.call(functional.onnx_split_to_sequence, ctx.input(0), axis, None, keepdims)
    sizes = ctx.const(1)
    ctx.require(sizes is not None, "the SplitToSequence sizes must be constant")
    split = int(sizes) if sizes.dim() == 0 else functional.ints(sizes)
    return ctx.call(functional.onnx_split_to_sequence, ctx.input(0), axis, split, keepdims)


@converter("SequenceAt")
def sequence_at(ctx):
    position = ctx.const(1)
    ctx.require(position is not None, "the SequenceAt position must be constant")
    return ctx.getitem(ctx.input(0), int(position))


@converter("SequenceConstruct")
def sequence_construct(ctx):
    return list(ctx.inputs)


@converter("SequenceLength")
def sequence_length(ctx):
    return ctx.call(functional.onnx_sequence_length, ctx.input(0))


@converter("ConcatFromSequence")
def concat_from_sequence(ctx):
    fn = torch.stack if ctx.attr("new_axis", 0) else torch.cat
    return ctx.call(fn, ctx.input(0), ctx.attr("axis"))
