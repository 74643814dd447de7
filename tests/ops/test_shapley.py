"""Shapley products (rewriter/ops/shapley.py): ``Δy = f(Δa, b̄) + f(ā, Δb)`` for a bilinear
``f``, so the rule credits exactly the change, an unchanged operand nothing; gates and
attention come out exact with every explainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.ops.shapley import ShapleyProduct

CASES = {"mul": ((3, 4), (3, 4), None), "matmul": ((3, 4), (4, 2), None), "einsum": ((3, 4), (4, 2), "bij,bjk->bik")}


@pytest.mark.parametrize("op", sorted(CASES))
@pytest.mark.parametrize("edge", ["apart", "b unchanged", "from zero"])
def test_the_rule_credits_exactly_the_change(op, edge):
    shape_a, shape_b, equation = CASES[op]
    module = ShapleyProduct(op, shape_a, shape_b, equation).double()
    a, b = torch.randn(2, *shape_a, dtype=torch.float64), torch.randn(2, *shape_b, dtype=torch.float64)
    if edge == "b unchanged":
        b[1] = b[0]
    if edge == "from zero":
        a[1], b[1] = 0, 0
    packed = torch.cat([a.flatten(1), b.flatten(1)], 1)
    grad = torch.randn(1, *module(packed[:1]).shape[1:], dtype=torch.float64).expand(2, *module(packed[:1]).shape[1:])
    m = module.deeplift_multipliers(packed, grad.contiguous())
    change = (grad[0] * (module(packed[:1]) - module(packed[1:]))[0]).sum()
    torch.testing.assert_close((m[0] * (packed[0] - packed[1])).sum(), change)
    if edge == "b unchanged":
        torch.testing.assert_close((m[0] * (packed[0] - packed[1]))[a[0].numel():].sum(),
                                   torch.zeros((), dtype=torch.float64))


class Gated(nn.Module):
    """A gate times its input, and a bilinear attention-like mixing of two projections."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.q, self.k, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        gated = x * torch.sigmoid(self.gate(x))
        q, k = self.q(gated).reshape(-1, 2, 3), self.k(gated).reshape(-1, 3, 2)
        return self.head(torch.matmul(q, k).reshape(-1, 4).repeat(1, 2)[:, :6] + gated)


@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
def test_gates_and_matrix_products_are_exact_with_every_explainer(explainer):
    torch.manual_seed(0)
    model, x = Gated().eval(), torch.randn(5, 6)
    module, report = rewrite(model, x, report=True)
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    assert sum(isinstance(m, ShapleyProduct) for m in module.modules()) == 2
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x))
    result = run_explanation(module, torch.randn(4, 6), torch.randn(6, 6), explainer=explainer, progress=False)
    assert result.worst_error < 1e-4
