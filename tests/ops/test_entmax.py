"""Entmax-1.5 (rewriter/ops/entmax.py): its rule is the Jacobian averaged over the straight
path (quadrature, then corrected along the path to credit exactly the change); the sorting
algorithm libraries write becomes one module, told apart from sparsemax's by what it computes."""

from __future__ import annotations

import pytest
import torch
from explain import assert_complete, numeric_path_average_vjp
from torch import nn

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.ops.entmax import Entmax15, entmax15, path_average_vjp
from rewriter.ops.sparsemax import Sparsemax

N = 6


def _pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    x, r = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    return {
        "apart": (r, x),
        "far apart": (5 * r, -5 * x),
        "from zero": (torch.zeros(N, dtype=torch.float64), 3 * x),
        "ties": (torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0, 0.0], dtype=torch.float64), x),
        "equal": (x, x.clone()),
        "shifted": (x, x + 2.0),
    }


def test_the_forward_is_entmax_and_sums_to_one():
    z = torch.randn(5, N, dtype=torch.float64) * 3
    y = entmax15(z)
    torch.testing.assert_close(y.sum(-1), torch.ones(5, dtype=torch.float64))
    # The defining condition: y = [z/2 - τ]₊² for one τ per row.
    tau = z / 2 - y.sqrt()
    kept = y > 0
    for row, mask in zip(tau, kept):
        assert row[mask].max() - row[mask].min() < 1e-9


@pytest.mark.parametrize("name", list(_pairs()))
def test_the_rule_credits_exactly_the_change(name):
    start, end = _pairs()[name]
    for grad in torch.eye(N, dtype=torch.float64):
        multipliers = path_average_vjp(start, end, grad)
        assert torch.isfinite(multipliers).all()
        assert_complete(multipliers, start, end, grad, entmax15)


@pytest.mark.parametrize("name", ["apart", "far apart", "from zero"])
def test_the_rule_is_the_path_average_of_the_jacobian(name):
    start, end = _pairs()[name]
    grad = torch.linspace(-1, 1, N, dtype=torch.float64)
    want = numeric_path_average_vjp(entmax15, start, end, grad, steps=20001)
    torch.testing.assert_close(path_average_vjp(start, end, grad), want, rtol=1e-4, atol=1e-5)


class Gate(nn.Module):
    """A feature gate with TabNet's own Entmax15 module (its sorting algorithm)."""

    def __init__(self) -> None:
        super().__init__()
        from pytorch_tabnet.sparsemax import Entmax15 as TabNetEntmax15

        self.scores, self.select, self.head = nn.Linear(N, N), TabNetEntmax15(dim=-1), nn.Linear(N, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x * self.select(self.scores(x)))


@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
def test_a_gate_becomes_one_entmax_module_exact_with_every_explainer(explainer):
    pytest.importorskip("pytorch_tabnet")
    torch.manual_seed(0)
    model, x = Gate().eval(), 2 * torch.randn(5, N)
    module, report = rewrite(model, x, report=True)
    kinds = [type(m) for m in module.modules()]
    assert kinds.count(Entmax15) == 1 and Sparsemax not in kinds  # the same outline as sparsemax's
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), rtol=1e-5, atol=1e-6)
    result = run_explanation(module, 2 * torch.randn(4, N), 2 * torch.randn(8, N), explainer=explainer,
                             progress=False)
    assert result.worst_error < 1e-4
