"""Every rule at its edges: an input equal to its reference, zeros, the edge of a domain where
the derivative is infinite. Multipliers stay finite, so attributions add up instead of
turning into NaN; and no rule module sits on a value that carries no gradient (Captum refuses
to hook one), while what such a value changes is reported."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from explain import captum_relative_delta, shap_relative_error
from torch import nn

from rewriter import modules, registration, rewrite
from rewriter.explanation import run_explanation

# Where each function is finite but its derivative is not (at 0 otherwise; a pole such as
# log's or 1/x's at 0 gives an infinite output, which verification refuses).
EDGES = {"Sqrt": 0.0, "Pow": 0.0, "Asin": 1.0, "Acos": 1.0, "Acosh": 1.0}


def _instances() -> list[nn.Module]:
    found = []
    for cls in registration.rescale_modules():
        if cls is modules.Pow:
            found.append(cls(0.5))
        elif cls is modules.Clip:
            found.append(cls(0.0, 1.0))
        else:
            try:
                found.append(cls())
            except TypeError:
                continue
    return found


def _points(module: nn.Module) -> torch.Tensor:
    """Pairs (input, reference): equal at the edge, equal at 0.5, and a few apart."""
    edge = EDGES.get(type(module).__name__, 0.0)
    inputs = torch.tensor([edge, 0.5, edge, 0.25, -0.5])
    references = torch.tensor([edge, 0.5, edge + 1e-9, 0.75, 0.5])
    return torch.cat([inputs, references]).reshape(10, 1)


@pytest.mark.parametrize("module", _instances(), ids=lambda m: type(m).__name__)
def test_registered_rescale_rules_give_finite_multipliers_where_nothing_changed(module):
    import shap.explainers._deep.deep_pytorch as deep_pytorch
    from captum.attr._core import deep_lift

    x = _points(module).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = module(x)
    usable = torch.isfinite(y.detach()).reshape(2, -1).all(0).repeat(2).reshape(-1, 1)
    grad_output = torch.ones_like(y)
    (grad_input,) = torch.autograd.grad(y, x, grad_output)
    handler = deep_pytorch.op_handler.get(type(module).__name__)
    if handler is not None and handler.__name__ == "nonlinear_1d":
        module.x, module.y = x.detach(), y.detach()
        shap_multipliers = handler(module, (grad_input,), (grad_output,))[0]
        assert torch.isfinite(shap_multipliers[usable]).all(), shap_multipliers
    rule = deep_lift.SUPPORTED_NON_LINEAR.get(type(module))
    if rule is not None:
        captum_multipliers = rule(module, x.detach(), y.detach(), grad_input, grad_output)
        assert torch.isfinite(captum_multipliers[usable]).all(), captum_multipliers


class SquareRootOfClamp(nn.Module):
    """``Linear → sqrt(clamp(·, 0)) → Linear``: every row and its reference meet at 0 somewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.sqrt(torch.clamp(self.a(x), min=0)))


class CountNormalised(nn.Module):
    """Divided by a count of positive inputs: a value decided by a comparison, with no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) / ((x > 0).sum(-1, keepdim=True) + 1))


class MaskedMeanPooling(nn.Module):
    """sentence-transformers' pooling: embeddings times the mask, summed, over the clamped count."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(20, 6), nn.Linear(6, 2)

    def forward(self, ids, mask):
        hidden = torch.tanh(self.embed(ids)) * mask.unsqueeze(-1)
        return self.head(hidden.sum(1) / torch.clamp(mask.sum(1, keepdim=True), min=1e-9))


def test_a_square_root_at_zero_gives_finite_additive_attributions():
    torch.manual_seed(0)
    module, report = rewrite(SquareRootOfClamp().eval(), torch.randn(4, 5), report=True)
    assert report.as_dict()["exact"]
    background, rows = torch.randn(6, 5), torch.randn(3, 5)
    rows[0] = background[0]  # an input equal to its reference
    assert shap_relative_error(module, background, rows) < 1e-4
    assert captum_relative_delta(module, background[:3], rows) < 1e-4


def test_no_module_sits_on_a_value_without_gradient_and_the_report_says_what_it_changes():
    torch.manual_seed(0)
    module, report = rewrite(CountNormalised().eval(), torch.randn(4, 5), report=True)
    document = report.as_dict()
    assert not document["exact"]
    reasons = [entry for entry in document["nodes"] if entry["node"] in document["approximate"]]
    assert any("carries no gradient" in str(entry) for entry in reasons)
    background, rows = torch.randn(6, 5), torch.randn(3, 5)
    assert math.isfinite(captum_relative_delta(module, background[:3], rows))  # no "cannot register a hook"


def test_mean_pooling_over_a_context_mask_is_exact():
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (4, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    module, report = rewrite(MaskedMeanPooling().eval(), ids, mask, report=True)
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    for explainer in ("shap", "captum"):
        result = run_explanation(module, (ids, mask), reference=0, explainer=explainer, progress=False)
        assert result.worst_error < 1e-4
        np.testing.assert_array_equal(result.attributions[0][1, 4:], 0.0)
