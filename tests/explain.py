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


def assert_round_trips(module, *inputs) -> None:
    """``rewriter.save`` then ``rewriter.load`` gives a module with identical outputs."""
    import tempfile
    from pathlib import Path

    import torch

    from rewriter import load, save

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save(module, path)
        loaded = load(path)
    with torch.no_grad():
        want, got = module(*inputs), loaded(*inputs)
    for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(w, g)


def assert_engine_matches_the_explainers(module, background, inputs, rtol: float = 1e-5) -> None:
    """The exact engine's attributions are shap.DeepExplainer's and Captum DeepLiftShap's on
    the same module, rows and background: within ``rtol`` of the largest attribution."""
    import numpy as np

    from rewriter.explanation import run_explanation

    inputs, background = _tuple(inputs), _tuple(background)
    found = {name: run_explanation(module, inputs, background, explainer=name, progress=False, threshold=None)
             for name in ("exact", "shap", "captum")}
    assert found["exact"].worst_error < 1e-4
    for name in ("shap", "captum"):
        for engine, other in zip(found["exact"].attributions, found[name].attributions):
            scale = max(float(np.abs(other).max()), 1e-12)
            assert np.abs(engine - other).max() <= rtol * scale, (name, np.abs(engine - other).max(), scale)


def numeric_path_average_vjp(function, start, end, grad, steps: int = 4001):
    """``J̄ᵀ g`` for ``function`` by brute force: its vector-Jacobian product at ``steps``
    points of the straight path from ``start`` to ``end`` (midpoints), averaged. In float64;
    the reference a path rule is checked against."""
    import torch

    start, end, grad = start.double(), end.double(), grad.double()
    total = torch.zeros_like(start)
    for t in (torch.arange(steps, dtype=torch.float64) + 0.5) / steps:
        point = (start + t * (end - start)).requires_grad_()
        (vjp,) = torch.autograd.grad(function(point), point, grad)
        total += vjp
    return total / steps


def assert_complete(multipliers, start, end, grad, function, rtol: float = 1e-9) -> None:
    """``Σ m Δx = g·Δy`` along the last dim: the rule credits exactly the output's change (to
    ``rtol`` of it, or float64 rounding of the outputs themselves where the change is tiny)."""
    import torch

    terms = multipliers.double() * (end.double() - start.double())
    output = function(end.double())
    changed = (grad.double() * (output - function(start.double()))).sum(-1)
    rounding = 1e-13 * float((grad.double().abs() * output.abs()).sum(-1).max() + terms.abs().sum(-1).max())
    credited = terms.sum(-1)
    torch.testing.assert_close(credited, changed, rtol=rtol, atol=rtol * float(changed.abs().max()) + rounding)
