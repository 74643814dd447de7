"""Standardize (rewriter/ops/standardize.py), LayerNorm without its affine map: its rule is
RMSNorm's path average on the centred values, projected back; exact where the reference row
is constant (a zero or padding embedding), which BERT's ε = 1e-12 turned into 10⁵-sized
attributions that float32 could not add up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain import assert_complete, numeric_path_average_vjp
from torch import nn
from torch.nn import functional as F

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.ops.standardize import Standardize

N = 8


def _standardize(eps: float):
    return lambda p: F.layer_norm(p, p.shape[-1:], None, None, eps)


def _multipliers(start: torch.Tensor, end: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    """The rule as the explainers call it: a batch ``[rows; references]``, the rows' half."""
    both = torch.stack([end, start])
    return Standardize(eps).deeplift_multipliers(both, torch.stack([grad, grad]))[0]


def _pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    return {
        "apart": (r, x),
        "from a constant row": (torch.full((N,), 0.3, dtype=torch.float64), x),
        "shifted": (x, x + 5.0),
        "through a constant": (-x, x),
        "equal": (x, x.clone()),
    }


@pytest.mark.parametrize("name", list(_pairs()))
@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_the_rule_credits_exactly_the_change(name, eps):
    start, end = _pairs()[name]
    for grad in torch.eye(N, dtype=torch.float64):
        multipliers = _multipliers(start, end, grad, eps)
        assert torch.isfinite(multipliers).all()
        assert_complete(multipliers, start, end, grad, _standardize(eps))


def test_the_rule_is_the_path_average_of_the_jacobian():
    start, end = _pairs()["apart"]
    grad = torch.linspace(-1, 1, N, dtype=torch.float64)
    want = numeric_path_average_vjp(_standardize(0.1), start, end, grad)
    torch.testing.assert_close(_multipliers(start, end, grad, 0.1), want, rtol=1e-5, atol=1e-7)


class Encoder(nn.Module):
    """A BERT-style block's norms: LayerNorm with ε = 1e-12 after bias-free layers."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12, bias=False), nn.Linear(12, 12, bias=False)
        self.norm1, self.norm2 = nn.LayerNorm(12, eps=eps), nn.LayerNorm(12, eps=eps)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm2(self.fc2(torch.tanh(self.norm1(self.fc1(x))))))


@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_attributions_add_up_against_a_zero_reference(explainer, eps):
    torch.manual_seed(0)
    model, x = Encoder(eps).eval(), torch.randn(5, 6)
    module, report = rewrite(model, x, report=True)
    assert sum(isinstance(m, Standardize) for m in module.modules()) == 2 and report.as_dict()["exact"]
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), rtol=1e-5, atol=1e-5)
    result = run_explanation(module, torch.randn(4, 6), torch.zeros(1, 6), explainer=explainer, progress=False)
    assert result.worst_error < 1e-4
    assert np.abs(result.attributions[0]).max() < 1e3
