"""RMSNorm (rewriter/ops/rms_norm.py): its rule is the Jacobian averaged over the straight
path, in closed form; the exporters' ways of writing it become one module; attributions add
up where the decomposition's rules lost everything to rounding (a reference row at 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain import assert_complete, numeric_path_average_vjp
from torch import nn

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.ops.rms_norm import RMSNorm, path_average_vjp, rms_norm

N = 8


def _pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    return {
        "apart": (r, x),
        "from zero": (torch.zeros(N, dtype=torch.float64), x),
        "through zero": (-x, x),
        "parallel": (x, 3 * x),
        "tiny": (1e-7 * r, 1e-7 * x),
        "large": (1e4 * r, 1e4 * x),
        "nearly equal": (x, x + 1e-9 * r),
    }


@pytest.mark.parametrize("name", list(_pairs()))
@pytest.mark.parametrize("eps", [1e-12, 1e-6, 1.0])
def test_the_rule_credits_exactly_the_change(name, eps):
    start, end = _pairs()[name]
    for grad in torch.eye(N, dtype=torch.float64):
        assert_complete(path_average_vjp(start, end, grad, eps), start, end, grad, lambda p: rms_norm(p, eps))


@pytest.mark.parametrize("name", ["apart", "from zero", "parallel"])
def test_the_rule_is_the_path_average_of_the_jacobian(name):
    """The closed form (peaked) and the quadrature (smooth) against brute force."""
    start, end = _pairs()[name]
    grad = torch.linspace(-1, 1, N, dtype=torch.float64)
    for eps in (1e-2, 1.0, 100.0):
        want = numeric_path_average_vjp(lambda p, eps=eps: rms_norm(p, eps), start, end, grad)
        torch.testing.assert_close(path_average_vjp(start, end, grad, eps), want, rtol=1e-5, atol=1e-7)


def test_an_input_equal_to_its_reference_takes_the_jacobian_there():
    x = torch.randn(N, dtype=torch.float64)
    grad = torch.randn(N, dtype=torch.float64)
    _, want = torch.autograd.functional.vjp(lambda p: rms_norm(p, 1e-6), x, grad)
    torch.testing.assert_close(path_average_vjp(x, x, grad, 1e-6), want)


def test_multipliers_stay_finite_at_zero_without_epsilon():
    zero = torch.zeros(N, dtype=torch.float64)
    result = path_average_vjp(zero, zero, torch.ones(N, dtype=torch.float64), 0.0)
    assert torch.isfinite(result).all()


class WrittenOut(nn.Module):
    """The ways models write RMSNorm: ``x * rsqrt(mean(x²) + ε)`` (LLaMA, Gemma), ``x / sqrt``
    with ``x * x``, and ``nn.RMSNorm``; a mean over another axis is not one."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.fc1, self.fc2 = nn.Linear(6, 12, bias=False), nn.Linear(12, 12, bias=False)
        self.norm = nn.RMSNorm(12, eps=eps)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = self.fc2(h)
        h = h / torch.sqrt((h * h).mean(-1, keepdim=True) + self.eps)
        return self.head(self.norm(h))


def test_each_written_form_becomes_one_module_and_the_output_is_unchanged():
    torch.manual_seed(0)
    model, x = WrittenOut().eval(), torch.randn(5, 6)
    module, report = rewrite(model, x, report=True)
    assert sum(isinstance(m, RMSNorm) for m in module.modules()) == 3
    assert report.as_dict()["exact"]
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
@pytest.mark.parametrize("eps", [1e-12, 1e-6])
def test_attributions_add_up_against_a_zero_reference(explainer, eps):
    """Bias-free layers make the norm's input 0 at a zero reference: the decomposition's rules
    gave attributions of ε^-1/2 that cancel only in exact arithmetic. The path average's grow
    with log(1/ε) only; where float32 still cannot add them up, the row is explained again in
    float64 and the result says so."""
    torch.manual_seed(0)
    module = rewrite(WrittenOut(eps).eval(), torch.randn(5, 6))
    rows = torch.randn(4, 6)
    result = run_explanation(module, rows, torch.zeros(1, 6), explainer=explainer, progress=False)
    assert result.worst_error < 1e-4
    assert abs(result.attributions[0]).max() < 1e4
    if result.attributions[0].dtype == np.float64:
        assert any("explained in float64" in note for note in result.notes)


def test_rows_float32_cannot_add_up_are_explained_again_in_float64():
    """Against a zero reference with ε = 1e-12 the exact attributions are ~1000x the output
    change: float32 misses the threshold, the float64 copy of the model meets it."""
    torch.manual_seed(0)
    module = rewrite(WrittenOut(1e-12).eval(), torch.randn(5, 6))
    rows, zero = torch.randn(4, 6), torch.zeros(1, 6)
    narrow = run_explanation(module, rows, zero, progress=False, threshold=None)
    assert narrow.worst_error > 1e-4 and narrow.attributions[0].dtype == np.float32
    wide = run_explanation(module, rows, zero, progress=False)
    assert wide.worst_error < 1e-4 and wide.attributions[0].dtype == np.float64
    assert any(note.startswith("row(s) [") and "explained in float64" in note for note in wide.notes)
