"""The one registry of ONNX op converters.

A converter is a function ``(ctx: NodeContext) -> value | tuple of values`` registered for
one or more ONNX op types with :func:`converter` (``"Relu"``; other domains as
``"shaprewrite.Silu"``). It emits torch code for
the node through ``ctx`` and returns the node's outputs in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CONVERTERS: dict[str, Callable[[Any], Any]] = {}
STANDARD_DOMAINS = ("", "ai.onnx")


def op_key(domain: str, op_type: str) -> str:
    """Registry key: the op type for standard ONNX ops, ``domain.op_type`` otherwise."""
    return op_type if domain in STANDARD_DOMAINS else f"{domain}.{op_type}"


def converter(*op_types: str) -> Callable:
    def register(fn: Callable) -> Callable:
        for op in op_types:
            if op in CONVERTERS:
                raise RuntimeError(f"two converters registered for {op}")
            CONVERTERS[op] = fn
        return fn
    return register


# Importing the families fills the registry.
from . import activations, arithmetic, layers, pooling, recurrent, tensors  # noqa: E402,F401
