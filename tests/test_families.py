"""Architecture families from torchvision, timm and Hugging Face, written in the style of their
code (tests/architectures.py), each rewritten, verified and explained exactly.

Each family once failed outright: ``arange(batch)`` pooling and adaptive pooling (a ``Range``
with a batch-dependent limit), a masked attention's NaN guard reported approximate, a
Swin whose shape-only branches the TorchScript fallback refused.
"""

from __future__ import annotations

import pytest
import torch
from architectures import (
    AlbertStyle,
    ConvNeXtStyle,
    GhostNetStyle,
    GPT2Classifier,
    SwinStyle,
    randomize_batchnorm,
)
from explain import (
    assert_engine_matches_the_explainers,
    assert_round_trips,
    captum_relative_delta,
    shap_relative_error,
)
from torch import nn

from rewriter import ExportError, ShapRewriteError, rewrite
from rewriter.verify import Reference, torch_runner, verify

EXACT = 1e-4
FAMILIES = {
    "gpt2": (GPT2Classifier, (8, 16)),
    "convnext": (ConvNeXtStyle, (3, 24, 24)),
    "swin": (SwinStyle, (3, 12, 12)),
    "ghostnet": (GhostNetStyle, (3, 16, 16)),
    "albert": (AlbertStyle, (5, 6)),
}
CASES = [(name, "dynamo") for name in sorted(FAMILIES)] + [("swin", "torchscript"), ("albert", "torchscript")]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(FAMILIES[name][0]()).eval()


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{e}" for n, e in CASES])
def case(request):
    name, exporter = request.param
    model = build(name)
    shape = FAMILIES[name][1]
    rewritten, report = rewrite(model, torch.randn(4, *shape), exporter=exporter, report=True)
    return model, shape, rewritten, report, exporter


def test_exported_by_the_exporter_asked_for(case):
    _, _, _, report, exporter = case
    assert report.exporter == exporter


def test_forward_unchanged(case):
    model, shape, rewritten, _, _ = case
    x = torch.randn(7, *shape)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), atol=1e-5, rtol=1e-4)


def test_artifact_round_trips(case):
    _, shape, rewritten, _, _ = case
    assert_round_trips(rewritten, torch.randn(5, *shape))


def test_reported_exact(case):
    _, _, _, report, _ = case
    assert report.approximate == []


def test_shap_exact(case):
    _, shape, rewritten, _, _ = case
    torch.manual_seed(2)
    assert shap_relative_error(rewritten, torch.randn(10, *shape), torch.randn(3, *shape)) < EXACT


def test_captum_exact(case):
    _, shape, rewritten, _, _ = case
    torch.manual_seed(3)
    assert captum_relative_delta(rewritten, torch.randn(3, *shape), torch.randn(3, *shape)) < EXACT


def test_the_exact_engine_gives_shaps_and_captums_numbers(case):
    _, shape, rewritten, _, _ = case
    torch.manual_seed(4)
    assert_engine_matches_the_explainers(rewritten, torch.randn(6, *shape), torch.randn(3, *shape))


class ValueBranch(nn.Module):
    """A branch on the input's values: a trace follows one side only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(-x)


def test_torchscript_still_refuses_a_branch_on_values():
    with pytest.raises(ExportError, match="data-dependent control flow"):
        rewrite(ValueBranch(), torch.randn(3, 4), exporter="torchscript")


class ShapeBranch(nn.Module):
    """Branches on shapes only, as Hugging Face writes them (``pad > 0``, ``q_len > 1``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (4 - x.shape[-1] % 4) % 4
        if pad > 0:
            x = torch.nn.functional.pad(x, (0, pad))
        is_causal = x.shape[1] > 1
        return self.fc(x.tanh() if is_causal else x)


def test_torchscript_accepts_branches_on_shapes():
    model = ShapeBranch().eval()
    rewritten = rewrite(model, torch.randn(3, 3), exporter="torchscript")
    x = torch.randn(5, 3)
    torch.testing.assert_close(rewritten(x), model(x))


def test_a_crash_of_the_rewritten_module_is_reported_as_ours_with_the_node():
    """A crash inside our module is our bug (exit 1), never the user's fixed batch size."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    rewritten = rewrite(model, torch.randn(3, 4))
    relu = next(name for name, m in rewritten.named_modules() if isinstance(m, nn.ReLU))

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("simulated converter bug")

    rewritten.add_module(relu, Broken())
    with pytest.raises(ShapRewriteError) as caught:
        verify(rewritten, [Reference("model", torch_runner(model))], (torch.randn(3, 4),), ["output"])
    error = caught.value
    assert type(error) is ShapRewriteError and error.exit_code == 1
    assert error.op_type == "Relu" and error.node and "simulated converter bug" in str(error)
    assert "fixed batch" not in error.message and "bug" in str(error)
