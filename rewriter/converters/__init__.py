"""The one registry of ONNX op converters.

A converter is a function ``(ctx: NodeContext) -> value | tuple of values`` registered for
one or more ONNX op types with :func:`converter` (``"Relu"``; other domains as
``"shaprewrite.Silu"``). It emits torch code for
the node through ``ctx`` and returns the node's outputs in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..onnxkit.facts import STANDARD_DOMAINS

CONVERTERS: dict[str, Callable[[Any], Any]] = {}


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


def layer(cls: type[nn.Module], *args, weights: Mapping[str, torch.Tensor], **kwargs) -> nn.Module:
    """``cls(*args, **kwargs)`` whose parameters and buffers are ``weights`` (by name), zero
    where not given. The layer holds the tensors themselves, not copies: a weight shares its
    memory with the graph's initializer (a large model is not held twice, and a saved
    artifact stores it once), and no random initialisation is spent on values replaced.
    """
    # Built on the meta device: no memory and no initialisation spent on values replaced
    # (``nn.utils.skip_init`` would allocate every tensor only for it to be dropped here).
    module = cls(*args, device="meta", **kwargs)
    for name, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        given = weights.get(name)
        tensor = torch.zeros(value.shape, dtype=value.dtype) if given is None else given.to(value.dtype)
        setattr(module, name, nn.Parameter(tensor, requires_grad=value.requires_grad)
                if isinstance(value, nn.Parameter) else tensor)
    return module


# Importing the families fills the registry.
from ..ops import load as _load_custom_ops  # noqa: E402  (each custom op registers its converter)
from . import activations, arithmetic, layers, pooling, recurrent, spectral, tensors  # noqa: E402,F401

_load_custom_ops()
