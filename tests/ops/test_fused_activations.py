"""The fused activations (rewriter/ops/fused_activations.py): SiLU, Mish, HardSwish and the two
GELUs written out in pieces, as functional code and exporters write them, come out as one
elementwise module each (the rescale rule is exact for it) with every explainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.ops import load

WRITTEN = {
    "Silu": lambda x: x * torch.sigmoid(x),
    "Mish": lambda x: x * torch.tanh(nn.functional.softplus(x)),
    "HardSwish": lambda x: x * nn.functional.hardsigmoid(x),
    "GeluErf": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0))),
    "GeluTanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3)))),
}
MODULES = {"Silu": nn.SiLU, "Mish": nn.Mish, "HardSwish": nn.Hardswish, "GeluErf": nn.GELU, "GeluTanh": nn.GELU}


class Net(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.fc, self.head = name, nn.Linear(5, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(WRITTEN[self.name](self.fc(x)))


def test_every_fused_activation_is_a_registered_op():
    assert set(WRITTEN) <= set(load())


@pytest.mark.parametrize("name", sorted(WRITTEN))
@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
def test_written_out_it_becomes_one_module_exact_with_every_explainer(name, explainer):
    torch.manual_seed(0)
    model, x = Net(name).eval(), 2 * torch.randn(5, 5)
    module, report = rewrite(model, x, report=True)
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    assert sum(isinstance(m, MODULES[name]) for m in module.modules()) == 1
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), rtol=1e-5, atol=1e-5)
    result = run_explanation(module, 2 * torch.randn(4, 5), 2 * torch.randn(6, 5), explainer=explainer,
                             progress=False)
    assert result.worst_error < 1e-4


def test_softplus_guarded_at_a_low_threshold_is_not_taken_for_softplus():
    """``where(x > 1, x, softplus(x))`` is another function; fusing it would change the model."""
    class LowGuard(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.fc(x)
            return self.head(torch.where(h > 1.0, h, nn.functional.softplus(h, threshold=40)))

    torch.manual_seed(0)
    model, x = LowGuard().eval(), torch.randn(6, 4)
    module, report = rewrite(model, x, report=True)  # verified: the model's function is kept
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x))
    assert not report.as_dict()["exact"]  # the guard stays a selection, reported approximate
