"""ShapleyPow (rewriter/ops/shapley_pow.py): a power whose base and exponent both depend on the
input is split between them by their two-player Shapley values: exact with every explainer,
where ``Pow`` alone was reported approximate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.ops.shapley_pow import ShapleyPow


class LearnedExponent(nn.Module):
    def __init__(self, broadcast: bool = False) -> None:
        super().__init__()
        self.base, self.exponent = nn.Linear(4, 4), nn.Linear(4, 1 if broadcast else 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.pow(torch.sigmoid(self.base(x)) + 0.5, torch.tanh(self.exponent(x))))


def test_the_rule_credits_exactly_the_change_and_nothing_to_an_unchanged_operand():
    module = ShapleyPow((3,), (3,))
    a, b = torch.rand(2, 3, dtype=torch.float64) + 0.5, torch.randn(2, 3, dtype=torch.float64)
    b[1, 0] = b[0, 0]  # the exponent unchanged at element 0
    packed = torch.cat([a, b], 1)
    grad = torch.randn(2, 3, dtype=torch.float64)
    grad[1] = grad[0]
    m = module.deeplift_multipliers(packed, grad)
    delta = packed[0] - packed[1]
    change = (grad[0] * (torch.pow(a[0], b[0]) - torch.pow(a[1], b[1]))).sum()
    torch.testing.assert_close((m[0] * delta).sum(), change)
    assert m[0, 3] == 0  # the exponent's element 0 did not change: no credit


@pytest.mark.parametrize("broadcast", [False, True], ids=["same shape", "broadcast exponent"])
@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
def test_a_learned_exponent_is_exact_with_every_explainer(broadcast, explainer):
    torch.manual_seed(0)
    model, x = LearnedExponent(broadcast).eval(), torch.randn(5, 4)
    module, report = rewrite(model, x, report=True)
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    assert sum(isinstance(m, ShapleyPow) for m in module.modules()) == 1
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x))
    result = run_explanation(module, torch.randn(4, 4), torch.randn(6, 4), explainer=explainer, progress=False)
    assert result.worst_error < 1e-4


def test_a_constant_exponent_stays_a_pow_with_the_rescale_rule():
    class Squared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.pow(torch.sigmoid(self.fc(x)), 1.5))

    module, report = rewrite(Squared().eval(), torch.randn(5, 4), report=True)
    assert report.as_dict()["exact"] and not any(isinstance(m, ShapleyPow) for m in module.modules())
