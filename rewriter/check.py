"""Additivity: how far attributions are from adding up, measured one way everywhere.

For each row, the relative additivity error is ``max_k |Σ attributions_k - Δ_k| / max_k |Δ_k|``,
with ``Δ = f(x) - mean f(references)``. The scale is floored at 1e-3 of how far the
references' own outputs spread and at 1e-2 of the row's own largest output: a row whose
output barely moves from its references' (a saturated classifier, logits of 3 moving by
2e-5) is measured against the float32 rounding of the outputs themselves, not divided by
its near-zero difference. NaN anywhere makes the error infinite: a check never passes on NaN.

The self-check (``rewrite(..., check=True)``) runs each installed explainer on the result
through the explanation step (:mod:`rewriter.explanation`), every output, and records the
worst row's error; the functions below run one explainer directly on a module, as a user
would, for tests and benchmarks.
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


def explainer_inputs(inputs: Sequence[torch.Tensor]):
    """Inputs as shap takes them: one tensor alone, several as a list."""
    return list(inputs) if len(inputs) > 1 else inputs[0]


def additivity_errors(attributions: Sequence[np.ndarray], outputs: np.ndarray,
                      reference_outputs: np.ndarray) -> np.ndarray:
    """Each row's relative additivity error (see the module notes). ``attributions``: one
    array per input, ``[rows, ..., k]``; ``outputs``: ``[rows, k]``; ``reference_outputs``:
    each row's references' outputs, ``[rows, n, k]`` (their mean is the row's reference)."""
    mean = reference_outputs.mean(1)
    delta = outputs.astype(np.float64) - mean
    totals = sum(a.reshape(a.shape[0], -1, a.shape[-1]).sum(axis=1, dtype=np.float64) for a in attributions)
    spread = np.abs(reference_outputs - mean[:, None]).reshape(len(outputs), -1).max(axis=1, initial=0.0)
    floor = np.maximum(np.maximum(1e-2 * np.abs(outputs).max(axis=1), 1e-3 * spread), 1e-12)
    errors = np.abs(totals - delta).max(axis=1) / np.maximum(np.abs(delta).max(axis=1), floor)
    return np.where(np.isfinite(errors), errors, np.inf)


def shap_additivity_error(model: nn.Module, background: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> float:
    """Worst relative additivity error of ``shap.DeepExplainer`` (raises what SHAP raises)."""
    import shap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = shap.DeepExplainer(model, explainer_inputs(background)).shap_values(explainer_inputs(inputs), check_additivity=False)
    drop_shap_leftovers(model)
    per_input = [np.asarray(v) for v in (values if len(inputs) > 1 else [values])]
    with torch.no_grad():
        outputs, references = model(*inputs).numpy(), model(*background).numpy()
    shared = np.broadcast_to(references, (len(outputs), *references.shape))
    return float(additivity_errors(per_input, outputs, shared).max())


def captum_additivity_error(model: nn.Module, baselines: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> float:
    """Worst relative additivity error of Captum ``DeepLift`` (row ``i`` against baseline
    ``i``) over every output column."""
    from captum.attr import DeepLift

    inputs, baselines = tuple(inputs), tuple(baselines)
    with torch.no_grad():
        outputs, references = model(*inputs).numpy(), model(*baselines).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = DeepLift(model)
        per_target = [explainer.attribute(inputs, baselines=baselines, target=k) for k in range(outputs.shape[1])]
    values = [np.stack([t[i].detach().numpy() for t in per_target], axis=-1) for i in range(len(inputs))]
    return float(additivity_errors(values, outputs, references[:, None]).max())


def self_check(model: nn.Module, background: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> dict:
    """Run every installed explainer on every output of ``model`` (a rewritten module, given
    its source's inputs) through the explanation step; the worst row's error, per explainer,
    or what the explainer raised."""
    from .explanation import run_explanation

    found: dict[str, float | str] = {}
    with GATE.run(), torch.no_grad():
        out = model(*model.embed(*(x[:1] for x in inputs)))
    outputs = [None] if isinstance(out, torch.Tensor) else [i for i, o in enumerate(out) if o.is_floating_point()]
    for name in ("shap", "captum"):
        if importlib.util.find_spec(name) is None:
            continue
        try:
            found[name] = max(run_explanation(model, tuple(inputs), tuple(background), explainer=name, output=k,
                                              progress=False, threshold=None).worst_error for k in outputs)
        except Exception as exc:  # an explainer failing on the result is a finding to report
            found[name] = describe(exc, 200)
    return found
