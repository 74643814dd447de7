"""Sparsemax (rewriter/ops/sparsemax.py): its rule averages the Jacobian over the straight
path segment by segment (the support changes at points found in closed form); the sorting
algorithm models write becomes one module, exact with every explainer."""

from __future__ import annotations

import pytest
import torch
from explain import assert_complete, numeric_path_average_vjp
from torch import nn

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.ops.sparsemax import Sparsemax, path_average_vjp, sparsemax

N = 6


def _pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    x, r = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    return {
        "apart": (r, x),
        "far apart": (5 * r, -5 * x),
        "from zero": (torch.zeros(N, dtype=torch.float64), 3 * x),
        "ties": (torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0, 0.0], dtype=torch.float64), x),
        "equal": (x, x.clone()),
        "shifted": (x, x + 2.0),
    }


@pytest.mark.parametrize("name", list(_pairs()))
def test_the_rule_credits_exactly_the_change(name):
    start, end = _pairs()[name]
    for grad in torch.eye(N, dtype=torch.float64):
        assert_complete(path_average_vjp(start, end, grad), start, end, grad, sparsemax)


@pytest.mark.parametrize("name", ["apart", "far apart"])
def test_the_rule_is_the_path_average_of_the_jacobian(name):
    start, end = _pairs()[name]
    grad = torch.linspace(-1, 1, N, dtype=torch.float64)
    want = numeric_path_average_vjp(sparsemax, start, end, grad, steps=20001)
    torch.testing.assert_close(path_average_vjp(start, end, grad), want, rtol=1e-3, atol=1e-4)


def sorted_sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax as libraries write it (entmax, TabNet): sort, cumulative sums, the support."""
    ordered, _ = torch.sort(z, dim=-1, descending=True)
    cumulative = ordered.cumsum(-1) - 1
    ranks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    support = (ranks * ordered > cumulative).sum(-1, keepdim=True)
    tau = cumulative.gather(-1, support - 1) / support.to(z.dtype)
    return torch.clamp(z - tau, min=0)


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scores, self.head = nn.Linear(N, N), nn.Linear(N, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x * sorted_sparsemax(self.scores(x)))


@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
def test_a_sparse_gate_becomes_one_module_exact_with_every_explainer(explainer):
    torch.manual_seed(0)
    model, x = Gate().eval(), 2 * torch.randn(5, N)
    module, report = rewrite(model, x, report=True)
    assert sum(isinstance(m, Sparsemax) for m in module.modules()) == 1 and report.as_dict()["exact"]
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), rtol=1e-5, atol=1e-6)
    result = run_explanation(module, 2 * torch.randn(4, N), 2 * torch.randn(8, N), explainer=explainer,
                             progress=False)
    assert result.worst_error < 1e-4
