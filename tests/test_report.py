"""The report: what was changed, how each explainer treats each node, and the self-check."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import onnx
import pytest
import torch
from architectures import ResNetStyle, randomize_batchnorm
from onnx import TensorProto, helper
from onnx_graphs import model as onnx_model
from torch import nn

from rewriter import inspect, rewrite
from rewriter.report import load_schema

CLI = [sys.executable, "-m", "rewriter.cli"]


class SignFlip(nn.Module):
    """``where(x > 0.5, x, -x)``: a selection by an input-dependent mask has no exact rule."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.where(h > 0.5, h, -h))


@pytest.fixture(scope="module")
def resnet_report():
    model = randomize_batchnorm(ResNetStyle(overlapping_pool=True))
    _, report = rewrite(model, torch.randn(4, 3, 16, 16), report=True, check=True)
    return report.as_dict()


def test_report_validates_against_the_schema(resnet_report):
    jsonschema.validate(resnet_report, load_schema())


def test_report_lists_unshared_activations_and_the_maxpool_rewrite(resnet_report):
    assert resnet_report["unshared_modules"]["layer1.0.relu"] == ["layer1_0_relu", "layer1_0_relu_1"]
    assert set(resnet_report["unshared_modules"]) == {"layer1.0.relu", "layer1.1.relu", "layer2.0.relu"}
    maxima = next(p for p in resnet_report["passes"] if p["pass"] == "exact_maxima")
    assert maxima["changed"] == ["maxpool"]
    nodes = {n["node"]: n for n in resnet_report["nodes"]}
    assert nodes["layer1_0_relu_1"]["shap"] == "rescale (native)"
    assert nodes["maxpool"]["module"] == "ExactMaxPool"
    assert nodes["maxpool"]["shap"] == nodes["maxpool"]["captum"] == "maxpool"
    assert resnet_report["approximate"] == [] and resnet_report["exact"]


def test_check_records_additivity(resnet_report):
    assert resnet_report["shap_additivity_error"] < 1e-4
    assert resnet_report["captum_additivity_error"] < 1e-4
    assert resnet_report["verification"]["verified"]


def test_approximate_nodes_are_named():
    _, report = rewrite(SignFlip().eval(), torch.randn(3, 4), report=True)
    document = report.as_dict()
    jsonschema.validate(document, load_schema())
    where = [n for n in document["nodes"] if n.get("function") == "where"]
    assert where and document["approximate"] == [where[0]["node"]]
    assert "mask" in where[0]["shap"]["reason"]
    assert not document["exact"]


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "resnet.onnx"
    model = randomize_batchnorm(ResNetStyle(overlapping_pool=True))
    torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(path))
    return path


def test_cli_check_passes_and_writes_the_report(resnet_onnx, tmp_path):
    out, report_path = tmp_path / "m.pt", tmp_path / "m.json"
    result = subprocess.run([*CLI, str(resnet_onnx), str(out), "--dim", "batch=4", "--check", "--report",
                             str(report_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "exactness: exact" in result.stderr and "self-check: shap" in result.stderr
    document = json.loads(report_path.read_text())
    jsonschema.validate(document, load_schema())
    assert document["shap_additivity_error"] < 1e-4 and out.exists()


def test_cli_check_fails_below_the_measured_error(resnet_onnx, tmp_path):
    out = tmp_path / "m.pt"
    result = subprocess.run([*CLI, str(resnet_onnx), str(out), "--dim", "batch=4", "--check", "--threshold",
                             "1e-12", "--json", "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 7, result.stderr
    assert "self-check failed" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    document = json.loads(result.stdout)
    assert document["shap_additivity_error"] > 1e-12


def test_inspect_names_unsupported_ops(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="fine"),
             helper.make_node("EyeLike", ["r"], ["y"], name="the_eye")]
    path = tmp_path / "unsupported.onnx"
    onnx.save(onnx_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]), path)
    result = subprocess.run([*CLI, "inspect", str(path), "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 4
    assert "EyeLike" in result.stderr and "the_eye" in result.stderr
    document = json.loads(result.stdout)
    assert document["unsupported"] == {"EyeLike": "the_eye"}
    jsonschema.validate(document, load_schema())
    assert list(tmp_path.iterdir()) == [path]


def test_inspect_reports_without_a_model(resnet_onnx):
    report = inspect(resnet_onnx)
    assert any(p.name == "exact_maxima" and p.count for p in report.passes)
    assert report.nodes and not report.verification and not report.approximate


def test_the_report_reads_the_explainers_tables_without_importing_them():
    """Importing shap costs seconds, more than a whole small rewrite: the report reads its rule
    table from the source, and says what it would say with the explainers imported."""
    script = """
import sys, torch
from torch import nn
from rewriter import rewrite
from rewriter.report import classify
model = nn.Sequential(nn.Linear(6, 8), nn.SELU(), nn.Linear(8, 8), nn.CELU(), nn.Softplus(), nn.ELU(),
                      nn.Hardswish(), nn.Linear(8, 3), nn.Softmax(-1)).eval()
rewritten = rewrite(model, torch.randn(4, 6))
before = classify(rewritten)
assert not [m for m in sys.modules if m.split(".")[0] in ("shap", "captum")], "an explainer was imported"
import shap.explainers._deep.deep_pytorch, captum.attr._core.deep_lift
assert classify(rewritten) == before
print("ok", sum(isinstance(e.get("shap"), str) and e["shap"].startswith("rescale (registered)") for e in before))
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok ") and int(done.stdout.split()[1]) >= 1  # a rule only we add


class ErfGate(nn.Module):
    """``0.5 * z * (1 + erf(x / sqrt 2))``: GELU's pieces gating another tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.b(x) * (1 + torch.erf(self.a(x) / 2 ** 0.5))


def test_near_matches_a_pass_left_alone_are_reported_with_the_reason(capsys):
    _, report = rewrite(ErfGate().eval(), torch.randn(3, 4), report=True)
    document = report.as_dict()
    jsonschema.validate(document, load_schema())
    fusions = next(p for p in document["passes"] if p["pass"] == "fuse_activations")
    (node, reason), = fusions["declined"].items()
    assert "erf" in node.lower() and "not GELU" in reason


def test_every_functional_helper_says_how_it_is_explained():
    """Where it is defined (rewriter.functional), so a new helper cannot be forgotten by the
    report (OneHot once was: reported as having no rule)."""
    import inspect

    from rewriter import functional

    conversion_time = {"ints"}  # runs while importing, never a node of the rewritten graph
    helpers = {name: f for name, f in vars(functional).items() if inspect.isfunction(f)
               and f.__module__ == functional.__name__ and not name.startswith("_") and name not in conversion_time
               and name not in ("linear", "bilinear", "value_free", "discrete")}
    assert len(helpers) > 30
    missing = sorted(name for name, f in helpers.items() if not hasattr(f, "explained_as"))
    assert missing == []
    assert {f.explained_as[0] for f in helpers.values()} <= {"linear", "bilinear", "value_free", "discrete"}


def test_the_schema_knows_the_kind_of_every_module_with_a_rule_of_its_own():
    """A new op's ``report_kind`` must be added to the schema, or every report holding it
    fails validation: caught here rather than by a user's validator."""
    from rewriter.modules import exact_rule_classes

    kinds = set(load_schema()["$defs"]["kind"]["enum"])
    missing = {cls.__name__: cls.report_kind for cls in exact_rule_classes() if cls.report_kind not in kinds}
    assert missing == {}
