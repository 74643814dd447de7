"""Self-check: run the real explainers on a rewritten model and measure additivity.

The relative additivity error is ``max |Σ attributions - (f(x) - f(ref))| / max |f(x) - f(ref)|``
over all outputs and rows, with SHAP's reference being the background mean of ``f``.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .concurrency import GATE
from .errors import InputError, describe


class OutputView(nn.Module):
    """One output of a model, as the ``[batch, k]`` matrix the explainers expect: output
    ``index`` of a model that returns several (which must then be chosen), or its only one."""

    def __init__(self, model: nn.Module, index: int | None) -> None:
        super().__init__()
        self.model, self.index = model, index

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(*inputs)
        if isinstance(out, (tuple, list)):
            if self.index is None and len(out) > 1:
                raise InputError(f"the model returns {len(out)} outputs", fix="pick one with output=INDEX")
            out = out[self.index or 0]
        elif self.index not in (None, 0):
            raise InputError(f"output {self.index} was asked for; the model returns one", fix="leave output unset")
        return out.reshape(out.shape[0], -1)


def drop_shap_leftovers(view: nn.Module) -> None:
    """SHAP keeps each leaf's last input and output as parameters ``x`` and ``y`` and deletes them
    only from direct children and containers: below a wrapper such as :class:`OutputView` they would stay, holding a
    batch of activations and turning up in the model's ``state_dict``."""
    for module in view.modules():
        for name in ("x", "y"):
            module._parameters.pop(name, None)


def explainable_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[nn.Module]:
    """One ``[batch, k]``-valued view of ``model`` per float output."""
    with torch.no_grad():
        out = model(*inputs)
    if isinstance(out, torch.Tensor):
        return [OutputView(model, None) if out.dim() != 2 else model]
    return [OutputView(model, i) for i, o in enumerate(out) if o.is_floating_point()]


def _unwrap(inputs: Sequence[torch.Tensor]):
    return list(inputs) if len(inputs) > 1 else inputs[0]


def shap_additivity_error(model: nn.Module, background: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> float:
    """Worst relative additivity error of ``shap.DeepExplainer`` (raises what SHAP raises)."""
    import shap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = shap.DeepExplainer(model, _unwrap(background)).shap_values(_unwrap(inputs), check_additivity=False)
    drop_shap_leftovers(model)
    per_input = values if len(inputs) > 1 else [values]
    totals = sum(np.asarray(v).reshape(np.asarray(v).shape[0], -1, np.asarray(v).shape[-1]).sum(axis=1)
                 for v in per_input)
    with torch.no_grad():
        delta = model(*inputs).numpy() - model(*background).numpy().mean(0)
    return float(np.abs(totals - delta).max() / max(np.abs(delta).max(), 1e-12))


def captum_additivity_error(model: nn.Module, baselines: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> float:
    """Worst relative convergence delta of Captum ``DeepLift`` over every output column."""
    from captum.attr import DeepLift

    inputs, baselines = tuple(inputs), tuple(baselines)
    with torch.no_grad():
        out = model(*inputs)
        gap = (out - model(*baselines)).abs().max().item()
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = DeepLift(model)
        for target in range(out.shape[1]):
            _, delta = explainer.attribute(inputs, baselines=baselines, target=target, return_convergence_delta=True)
            worst = max(worst, delta.abs().max().item())
    return worst / max(gap, 1e-12)


def self_check(model: nn.Module, background: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> dict:
    """Run every installed explainer on every output; the worst errors, per explainer."""
    with GATE.run():
        return _self_check(model, background, inputs)


def _self_check(model: nn.Module, background: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> dict:
    found: dict[str, float | str] = {}
    views = explainable_outputs(model, inputs)
    rows = min(len(inputs[0]), len(background[0]))
    for name, measure, args in (
        ("shap", shap_additivity_error, (background, inputs)),
        ("captum", captum_additivity_error, ([b[:rows] for b in background], [x[:rows] for x in inputs])),
    ):
        if importlib.util.find_spec(name) is None:
            continue
        try:
            found[name] = max(measure(view, *args) for view in views)
        except Exception as exc:  # an explainer failing on the result is a finding to report
            found[name] = describe(exc, 200)
    return found
