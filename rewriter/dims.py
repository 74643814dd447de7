"""Shape values known element by element at import time.

ONNX computes shapes with int64 tensors (Shape, Gather, Concat, then Reshape). Most of their
elements are static; only dims like the batch are not. A :class:`Dims` keeps each element
either as a Python int or as an fx node that yields a Python int at run time
(``x.size(0)``), so shape arithmetic folds to ``x.reshape([x.size(0), -1])`` instead of a
chain of small tensor ops. Anything that needs a real tensor gets one built on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

Item = int | fx.Node


@dataclass(frozen=True, eq=False)
class Dims:
    """A 1-D (or, with ``scalar``, 0-d) int64 tensor given element by element."""

    items: tuple[Item, ...]
    scalar: bool = False


def make(items, scalar: bool = False) -> Dims | torch.Tensor:
    """A Dims, or a plain constant tensor when every element is known."""
    items = tuple(items)
    if all(isinstance(i, int) for i in items):
        tensor = torch.tensor(items, dtype=torch.int64)
        return tensor.reshape(()) if scalar else tensor
    return Dims(items, scalar)


def items_of(value) -> tuple[tuple[Item, ...], bool] | None:
    """``(elements, is_scalar)`` of a Dims or of a small constant int tensor, else None."""
    if isinstance(value, Dims):
        return value.items, value.scalar
    if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dim() <= 1 \
            and value.dtype != torch.bool:
        return tuple(int(v) for v in value.reshape(-1).tolist()), value.dim() == 0
    return None
