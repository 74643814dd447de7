"""Measure how far real explainers' attributions are from additive (see rewriter.check)."""

from __future__ import annotations

from rewriter.check import captum_additivity_error, shap_additivity_error


def _tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def shap_relative_error(model, background, inputs) -> float:
    """Worst relative additivity error of shap.DeepExplainer over all outputs and rows."""
    return shap_additivity_error(model, _tuple(background), _tuple(inputs))


def captum_relative_delta(model, baselines, inputs) -> float:
    """Worst relative convergence delta of Captum DeepLift over all output targets."""
    return captum_additivity_error(model, _tuple(baselines), _tuple(inputs))


def shap_outcome(model, background, inputs) -> tuple[str, float | None]:
    """("error: ...", None) when shap raises, else ("ok", relative error)."""
    try:
        return "ok", shap_relative_error(model, background, inputs)
    except Exception as exc:  # the explainers raise many types; any is a failure here
        return f"error: {type(exc).__name__}: {str(exc)[:80]}", None
