"""End to end: torch model -> rewrite -> SHAP and Captum explain it exactly.

For each model the original is shown to crash SHAP's DeepExplainer or to give attributions
that do not add up, and the rewritten one to match the original and be additive to float
rounding.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys

import pytest
import torch
from architectures import (
    DeadBranchNet,
    FunctionalMLP,
    MultiOutputNet,
    PoolingNet,
    ResNetStyle,
    TransformerEncoderStyle,
    TwoInputNet,
    randomize_batchnorm,
)
from explain import captum_relative_delta, shap_outcome, shap_relative_error
from torch import fx, nn

from rewriter import RewriteReport, rewrite, save
from rewriter.verify import OnnxRunner

EXACT = 1e-4

CASES = {
    "resnet_inplace_reused_relu": (lambda: randomize_batchnorm(ResNetStyle()), [(3, 16, 16)]),
    "mlp_functional_activations": (lambda: FunctionalMLP().eval(), [(10,)]),
    "two_inputs_shared_relu": (lambda: TwoInputNet().eval(), [(1, 8, 8), (6,)]),
    "dead_branch": (lambda: DeadBranchNet().eval(), [(8,)]),
    "non_overlapping_maxpool": (lambda: PoolingNet().eval(), [(2, 8, 8)]),
}


def batch(shapes, n):
    return [torch.randn(n, *s) for s in shapes]


def unwrap(tensors):
    return tensors if len(tensors) > 1 else tensors[0]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    make, shapes = CASES[request.param]
    model = make()
    torch.manual_seed(1)
    examples = batch(shapes, 4)
    rewritten, report = rewrite(model, *examples, report=True)
    return request.param, model, shapes, rewritten, report


def test_original_fails_or_is_not_additive(case):
    _, model, shapes, _, _ = case
    outcome, error = shap_outcome(model, unwrap(batch(shapes, 8)), unwrap(batch(shapes, 3)))
    assert outcome.startswith("error") or error > 1e-2, (outcome, error)


def test_rewritten_matches_original(case):
    _, model, shapes, rewritten, report = case
    for n in (1, 2, 17):
        inputs = batch(shapes, n)
        with torch.no_grad():
            torch.testing.assert_close(rewritten(*inputs), model(*inputs), atol=1e-5, rtol=1e-4)
    assert all(entry["ok"] for entry in report.verification)
    assert {entry["batch"] for entry in report.verification} == {4, 5}


def test_rewritten_is_exact_under_shap(case):
    _, _, shapes, rewritten, _ = case
    error = shap_relative_error(rewritten, unwrap(batch(shapes, 8)), unwrap(batch(shapes, 3)))
    assert error < EXACT


def test_rewritten_is_exact_under_captum(case):
    _, _, shapes, rewritten, _ = case
    assert captum_relative_delta(rewritten, tuple(batch(shapes, 3)), tuple(batch(shapes, 3))) < EXACT


def test_rewritten_module_structure(case):
    name, _, _, rewritten, _ = case
    assert isinstance(rewritten, fx.GraphModule)
    leaves = [m for m in rewritten.modules() if not list(m.children())]
    assert len({id(m) for m in leaves}) == len(leaves)
    assert not any(getattr(m, "inplace", False) for m in leaves)
    if name == "resnet_inplace_reused_relu":
        names = dict(rewritten.named_children())
        # One module per call of the reused self.relu, named after it.
        for expected in ("relu", "layer1_0_relu", "layer1_0_relu_1", "layer1_1_relu", "layer1_1_relu_1",
                         "layer2_0_relu", "layer2_0_relu_1", "maxpool", "layer1_0_conv1", "layer1_0_bn1"):
            assert expected in names, sorted(names)
        assert isinstance(names["layer1_0_relu_1"], nn.ReLU)
        assert isinstance(names["layer1_0_bn1"], nn.BatchNorm2d)
        assert isinstance(names["maxpool"], nn.MaxPool2d)
        assert isinstance(names["fc"], nn.Linear)


def test_rewrite_after_a_failed_shap_attempt_leaves_no_trace():
    """Users reach for the tool after SHAP failed on their model, which leaves hooks behind."""
    model = randomize_batchnorm(ResNetStyle())
    outcome, _ = shap_outcome(model, torch.randn(4, 3, 16, 16), torch.randn(2, 3, 16, 16))
    assert outcome.startswith("error")
    rewritten = rewrite(model, torch.randn(2, 3, 16, 16))
    assert shap_relative_error(rewritten, torch.randn(6, 3, 16, 16), torch.randn(2, 3, 16, 16)) < EXACT


def test_the_first_of_several_outputs_is_returned_unless_others_are_asked_for():
    model = MultiOutputNet().eval()
    x = torch.randn(3, 6)
    want = model(x)
    first, report = rewrite(model, x, report=True)
    torch.testing.assert_close(first(x), want[0])
    assert report.as_dict()["interface"]["outputs"] == {"outputs": ["0", "1"], "kept": ["0"], "reshape": None}
    torch.testing.assert_close(rewrite(model, x, output=1)(x), want[1])
    both, report = rewrite(model, x, output=[0, 1], report=True)
    got = both(x)
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert not report.as_dict()["exact"] and "2 outputs" in report.as_dict()["not_exact_because"][0]


def test_batch_one_example_is_enough():
    model = FunctionalMLP().eval()
    rewritten = rewrite(model, torch.randn(1, 10))
    x = torch.randn(17, 10)
    torch.testing.assert_close(rewritten(x), model(x))


def test_torchscript_exporter_gives_the_same_model():
    model = randomize_batchnorm(ResNetStyle())
    x = torch.randn(2, 3, 16, 16)
    rewritten, report = rewrite(model, x, exporter="torchscript", report=True)
    assert report.exporter == "torchscript"
    assert "layer1_0_relu_1" in dict(rewritten.named_children())
    torch.testing.assert_close(rewritten(x), model(x), atol=1e-5, rtol=1e-4)
    assert shap_relative_error(rewritten, torch.randn(6, 3, 16, 16), x) < EXACT


def test_report_times_each_stage():
    model = FunctionalMLP().eval()
    _, report = rewrite(model, torch.randn(2, 10), report=True)
    assert isinstance(report, RewriteReport)
    assert report.exporter == "dynamo"
    assert set(report.timings) == {"export", "passes", "import", "verify"}
    assert all(t >= 0 for t in report.timings.values())


@pytest.mark.parametrize("how", ["artifact", "pickle"])
def test_saved_model_loads_in_a_fresh_process(how, tmp_path):
    """The artifact loads with rewriter.load; a pickle of the module still works for those
    who choose it (and loading it registers the explainer rules)."""
    model = randomize_batchnorm(ResNetStyle())
    x = torch.randn(2, 3, 16, 16)
    rewritten = rewrite(model, x)
    path = tmp_path / "model.pt"
    if how == "artifact":
        save(rewritten, path)
    else:
        torch.save(rewritten, path)
    torch.save(x, tmp_path / "x.pt")
    expected = model(x).detach()
    loader = "__import__('rewriter').load(path)" if how == "artifact" else "torch.load(path, weights_only=False)"
    script = (
        "import sys, torch\n"
        f"path = r'{path}'\n"
        f"m = {loader}\n"
        f"x = torch.load(r'{tmp_path / 'x.pt'}')\n"
        "y = m(x)\n"
        f"torch.save(y, r'{tmp_path / 'y.pt'}')\n"
        "print(type(m).__name__)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make,shape", [(lambda: PoolingNet(), (2, 8, 8)),
                                        (lambda: ResNetStyle(overlapping_pool=True), (3, 16, 16))],
                         ids=["pooling", "overlapping_pool"])
def test_result_is_picklable_and_copyable(make, shape):
    model = randomize_batchnorm(make())
    x = torch.randn(2, *shape)
    rewritten = rewrite(model, x)
    clone = pickle.loads(pickle.dumps(rewritten))
    torch.testing.assert_close(clone(x), rewritten(x))
    moved = clone.to(torch.device("cpu"))
    torch.testing.assert_close(moved(x), rewritten(x))


# -- the export: at a fixed batch, made batch-free ------------------------------------------




def test_a_transformer_exported_at_a_fixed_batch_runs_at_any_batch():
    """The dynamo exporter takes twice as long with a dynamic batch on transformers: the export
    is static, at a prime batch, and the shapes that held it are made to follow the batch."""
    from rewriter.export import export_module

    torch.manual_seed(0)
    model = TransformerEncoderStyle().eval()
    exported = export_module(model, (torch.randn(3, 6, 4),), exporter="dynamo")
    assert exported.model.proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    run = OnnxRunner(exported.model.proto, held=exported.model.held)
    for rows in (2, 5):
        x = torch.randn(rows, 6, 4)
        with torch.no_grad():
            torch.testing.assert_close(run([x])[0], model(x), rtol=1e-4, atol=1e-5)


def test_torchs_op_translations_are_built_once_for_every_export():
    """The public export builds its table of op translations anew each time (0.9 s); ours
    builds it once, and the exports it serves still run at any batch."""
    from rewriter.export import _torchlib_registry, export_module

    _torchlib_registry.cache_clear()
    for model in (TransformerEncoderStyle().eval(), FunctionalMLP().eval()):
        x = torch.randn(3, 6, 4) if isinstance(model, TransformerEncoderStyle) else torch.randn(3, 10)
        exported = export_module(model, (x,), exporter="dynamo")
        run = OnnxRunner(exported.model.proto, held=exported.model.held)
        x5 = torch.randn(5, *x.shape[1:])
        with torch.no_grad():
            torch.testing.assert_close(run([x5])[0], model(x5), rtol=1e-4, atol=1e-5)
    info = _torchlib_registry.cache_info()
    assert (info.misses, info.hits) == (1, 1)


class PerRowPick(nn.Module):
    """Indexes each row with ``arange(batch)`` (GPT-2's last-token pick): a range whose limit
    a static export writes as a number."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        return h[torch.arange(x.shape[0]), torch.zeros(x.shape[0], dtype=torch.long)].unsqueeze(1) * h


class BatchScaled(nn.Module):
    """Scales by the square root of the batch size: a float the trace computes in Python."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * x.shape[0] ** 0.5


def _debug_messages(run) -> list[str]:
    said: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("shaprewrite")
    level, logger.level = logger.level, logging.DEBUG
    logger.addHandler(handler)
    try:
        run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return said


def test_a_range_over_the_batch_follows_the_batch_after_a_static_export():
    model = PerRowPick().eval()
    rewritten, report = rewrite(model, torch.randn(3, 4), report=True)
    assert not any("dynamic batch" in note for note in report.notes)
    x = torch.randn(6, 4)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x))


def test_a_batch_a_static_export_bakes_in_is_found_by_verification_and_exported_again():
    """The static export writes sqrt(97) as a number no shape rule can see; verification at
    two other batches finds it, and the dynamic export computes it from the batch."""
    model = BatchScaled().eval()
    rewritten, report = rewrite(model, torch.randn(3, 4), report=True)
    assert report.notes[0].startswith("exported with a dynamic batch (slower): at a fixed batch, the rewritten "
                                      "model does not match the source")
    x = torch.randn(6, 4)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x))


def test_inputs_too_large_to_repeat_for_the_export_batch_are_exported_with_a_dynamic_batch(monkeypatch):
    import rewriter.export

    monkeypatch.setattr(rewriter.export, "_STATIC_EXPORT_BYTES", 1000)
    said = _debug_messages(lambda: rewrite(FunctionalMLP().eval(), torch.randn(3, 10)))
    assert any("MiB" in message and "dynamic batch" in message for message in said)
    _, report = rewrite(FunctionalMLP().eval(), torch.randn(3, 10), report=True)
    assert any("MiB" in note and "dynamic batch" in note for note in report.notes)
