"""Run the real explainers and measure how far their attributions are from additive."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def shap_relative_error(model: torch.nn.Module, background, inputs) -> float:
    """Worst relative additivity error of shap.DeepExplainer over all outputs and rows:
    ``max |sum(attributions) - (f(x) - E[f(background)])| / max |f(x) - E[f(background)]|``.
    """
    import shap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.DeepExplainer(model, background)
        values = explainer.shap_values(inputs, check_additivity=False)
    per_input = values if isinstance(inputs, list) else [values]
    totals = sum(np.asarray(v).reshape(np.asarray(v).shape[0], -1, np.asarray(v).shape[-1]).sum(axis=1)
                 for v in per_input)
    with torch.no_grad():
        out = model(*_as_list(inputs)).numpy()
        base = model(*_as_list(background)).numpy().mean(0)
    delta = out - base
    return float(np.abs(totals - delta).max() / max(np.abs(delta).max(), 1e-12))


def captum_relative_delta(model: torch.nn.Module, baselines, inputs) -> float:
    """Worst relative convergence delta of Captum DeepLift over all output targets."""
    from captum.attr import DeepLift

    inputs_t, baselines_t = tuple(_as_list(inputs)), tuple(_as_list(baselines))
    with torch.no_grad():
        n_out = model(*inputs_t).shape[1]
        gap = (model(*inputs_t) - model(*baselines_t)).abs().max().item()
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = DeepLift(model)
        for target in range(n_out):
            _, delta = explainer.attribute(inputs_t, baselines=baselines_t, target=target,
                                           return_convergence_delta=True)
            worst = max(worst, delta.abs().max().item())
    return worst / max(gap, 1e-12)


def shap_outcome(model, background, inputs) -> tuple[str, float | None]:
    """("error", None) when shap raises, else ("ok", relative error)."""
    try:
        return "ok", shap_relative_error(model, background, inputs)
    except Exception as exc:  # the explainers raise many types; any is a failure here
        return f"error: {type(exc).__name__}: {str(exc)[:80]}", None
