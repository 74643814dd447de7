"""ExactMaxPool (rewriter/ops/exact_max_pool.py): overlapping windows, every window's change
routed to its maxima and added up, so the rule credits exactly the change, ties and
unchanged positions included; exact with every explainer where the explainers' own max rule
loses what windows share."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.ops.exact_max_pool import ExactMaxPool


@pytest.mark.parametrize("edge", ["apart", "ties", "partly unchanged"])
def test_the_rule_credits_exactly_the_change(edge):
    pool = ExactMaxPool((3, 3), (2, 2), (1, 1), (1, 1))
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    if edge == "ties":
        x[0] = x[0].round()
        x[1] = x[1].round()
    if edge == "partly unchanged":
        x[1, :, :3] = x[0, :, :3]
    grad = torch.randn(1, *pool(x[:1]).shape[1:], dtype=torch.float64).expand(2, -1, -1, -1).contiguous()
    m = pool.deeplift_multipliers(x, grad)
    change = (grad[0] * (pool(x[:1]) - pool(x[1:]))[0]).sum()
    torch.testing.assert_close((m[0] * (x[0] - x[1])).sum(), change)


class Overlapping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool, self.head = nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(3, 2, 1), nn.Linear(3 * 16, 2)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
def test_an_overlapping_pool_is_exact_with_every_explainer(explainer):
    torch.manual_seed(0)
    model, x = Overlapping().eval(), torch.randn(4, 1, 8, 8)
    module, report = rewrite(model, x, report=True)
    assert report.as_dict()["exact"] and sum(isinstance(m, ExactMaxPool) for m in module.modules()) == 1
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x))
    result = run_explanation(module, torch.randn(3, 1, 8, 8), torch.randn(5, 1, 8, 8), explainer=explainer,
                             progress=False)
    assert result.worst_error < 1e-4
