"""``ExactMaxPool``: max pooling whose windows overlap, with an exact rule.

Produced by the ``exact_maxima`` pass (``passes/maxima.py``), which marks a MaxPool whose
windows overlap: the same op (its body is MaxPool with the calling node's attributes),
imported as :class:`ExactMaxPool` instead of ``nn.MaxPool*d``.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from onnx import helper

from ..modules import ExactRule
from . import CustomOp, register

_ATTRIBUTES = {"kernel_shape": onnx.AttributeProto.INTS, "strides": onnx.AttributeProto.INTS,
               "pads": onnx.AttributeProto.INTS, "dilations": onnx.AttributeProto.INTS,
               "ceil_mode": onnx.AttributeProto.INT, "auto_pad": onnx.AttributeProto.STRING}


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


def _body(opset: int) -> list[onnx.NodeProto]:
    """MaxPool itself, taking the calling node's attributes."""
    node = helper.make_node("MaxPool", ["X"], ["Y"])
    for name, kind in _ATTRIBUTES.items():
        ref = onnx.AttributeProto()
        ref.name = ref.ref_attr_name = name
        ref.type = kind
        node.attribute.append(ref)
    return [node]


def _convert(ctx):
    from ..converters.pooling import max_pool

    return max_pool(ctx, lambda kernel, strides, padding, dilations, ceil_mode: ExactMaxPool(
        kernel, strides, padding, dilations, ceil_mode))


EXACT_MAX_POOL = register(CustomOp("ExactMaxPool", _body, _convert, attributes=tuple(_ATTRIBUTES)))
