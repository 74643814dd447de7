"""The one registry of ONNX op converters.

A converter is a function ``(ctx: NodeContext) -> value | tuple of values`` registered for
one or more ONNX op types (default domain) with :func:`converter`. It emits torch code for
the node through ``ctx`` and returns the node's outputs in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CONVERTERS: dict[str, Callable[[Any], Any]] = {}


def converter(*op_types: str) -> Callable:
    def register(fn: Callable) -> Callable:
        for op in op_types:
            if op in CONVERTERS:
                raise RuntimeError(f"two converters registered for {op}")
            CONVERTERS[op] = fn
        return fn
    return register


# Importing the families fills the registry.
from . import activations, arithmetic, layers, pooling, tensors  # noqa: E402,F401
