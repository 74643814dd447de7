"""Half precision and mixed precision models come out as clean float32 modules."""

from __future__ import annotations

import subprocess
import sys
import warnings

import onnx
import pytest
import shap
import torch
from architectures import FunctionalMLP, ResNetStyle, randomize_batchnorm
from explain import shap_relative_error
from onnx_graphs import keras_mixed_float16_cnn

from rewriter import load, rewrite

EXACT = 1e-4


def assert_float32_only(module: torch.nn.Module, output) -> None:
    tensors = [*module.parameters(), *module.buffers()]
    assert tensors and all(t.dtype in (torch.float32, torch.int64, torch.bool) for t in tensors)
    assert all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    assert output.dtype == torch.float32


def gradient_explainer_runs(module, background, inputs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = shap.GradientExplainer(module, background).shap_values(inputs, nsamples=20)
    assert values is not None


def half_resnet() -> torch.nn.Module:
    return randomize_batchnorm(ResNetStyle()).half()


def torch_fp16_onnx() -> onnx.ModelProto:
    """An ONNX file with float16 initializers and float16 graph inputs and outputs."""
    model = FunctionalMLP().eval().half()
    program = torch.onnx.export(model, (torch.randn(3, 10).half(),), dynamo=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto


@pytest.mark.parametrize("make,shape,dtype", [
    (half_resnet, (3, 16, 16), torch.float16),
    (lambda: FunctionalMLP().eval().to(torch.bfloat16), (10,), torch.bfloat16),
], ids=["fp16_cnn", "bf16_mlp"])
def test_half_precision_torch_model(make, shape, dtype):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(4, *shape).to(dtype)
    rewritten, report = rewrite(model, x, report=True)
    y = rewritten(x.float())
    assert_float32_only(rewritten, y)
    references = {d["reference"] for d in report.verification}
    assert references == {"float32 copy of the model", f"model ({str(dtype)[6:]})"}
    tight = [d for d in report.verification if d["reference"].startswith("float32")]
    assert all(d["rtol"] == 1e-4 and d["ok"] for d in tight)
    loose = [d for d in report.verification if not d["reference"].startswith("float32")]
    assert all(d["ok"] for d in loose) and max(d["max_abs"] for d in loose) > 0
    with torch.no_grad():
        torch.testing.assert_close(y, model(x).float(), atol=5e-2, rtol=5e-2)
    background, inputs = torch.randn(8, *shape), torch.randn(2, *shape)
    assert shap_relative_error(rewritten, background, inputs) < EXACT
    gradient_explainer_runs(rewritten, background, inputs)


@pytest.mark.parametrize("make,shape", [(torch_fp16_onnx, (10,)), (keras_mixed_float16_cnn, (6, 6, 3))],
                         ids=["fp16_io", "keras_mixed_float16"])
def test_half_precision_onnx(make, shape):
    proto = make()
    rewritten, report = rewrite(proto, report=True)
    upcast = next(p for p in report.passes if p.name == "upcast_half_precision")
    assert upcast.changed
    y = rewritten(torch.randn(5, *shape))
    assert_float32_only(rewritten, y)
    assert {d["reference"] for d in report.verification} == {"onnxruntime", "onnxruntime on a float32 copy"}
    background, inputs = torch.randn(8, *shape), torch.randn(2, *shape)
    assert shap_relative_error(rewritten, background, inputs) < EXACT
    gradient_explainer_runs(rewritten, background, inputs)


def test_mixed_graph_loses_its_casts():
    rewritten, report = rewrite(keras_mixed_float16_cnn(), report=True)
    upcast = next(p for p in report.passes if p.name == "upcast_half_precision")
    assert "model_conv2d_cast" in upcast.removed
    assert ".to(" not in rewritten.code  # the cast writing the output stays in ONNX, a no-op in torch


def test_cli_writes_a_float32_module_from_a_float16_file(tmp_path):
    source, out = tmp_path / "half.onnx", tmp_path / "half.pt"
    onnx.save(torch_fp16_onnx(), source)
    result = subprocess.run([sys.executable, "-m", "rewriter.cli", str(source), str(out), "--dim", "batch=3"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    module = load(out)
    assert_float32_only(module, module(torch.randn(2, 10)))
