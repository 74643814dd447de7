"""``shaprewrite IN.onnx OUT.pt`` as a pipeline runs it: a subprocess, exit codes, files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from architectures import ResNetStyle, randomize_batchnorm
from explain import shap_relative_error
from onnx import TensorProto, helper
from onnx_graphs import fixed_batch_mlp, model

from rewriter import load

CLI = [sys.executable, "-m", "rewriter.cli"]


def shaprewrite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def load_in_fresh_process_and_run(model_path, inputs: torch.Tensor, tmp_path) -> np.ndarray:
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import torch, rewriter\n"
        f"m = rewriter.load(r'{model_path}')\n"
        f"y = m(torch.load(r'{tmp_path / 'inputs.pt'}'))\n"
        f"torch.save(y.detach(), r'{tmp_path / 'outputs.pt'}')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    return torch.load(tmp_path / "outputs.pt").numpy()


def ort_outputs(path, x: np.ndarray, fixed_batch: int | None = None) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if fixed_batch is None:
        return session.run(None, {name: x})[0]
    return np.concatenate([session.run(None, {name: x[i:i + fixed_batch]})[0]
                           for i in range(0, len(x), fixed_batch)])


@pytest.fixture(scope="module")
def torch_exported_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "resnet.onnx"
    model = randomize_batchnorm(ResNetStyle())
    program = torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), dynamo=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(path))
    return path


def test_cli_rewrites_a_torch_exported_file(torch_exported_onnx, tmp_path):
    out = tmp_path / "resnet.pt"
    result = shaprewrite(str(torch_exported_onnx), str(out), "--dim", "batch=3")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr
    x = torch.randn(5, 3, 16, 16)
    got = load_in_fresh_process_and_run(out, x, tmp_path)
    np.testing.assert_allclose(got, ort_outputs(torch_exported_onnx, x.numpy()), atol=1e-5, rtol=1e-4)
    model = load(out)
    assert shap_relative_error(model, torch.randn(6, 3, 16, 16), torch.randn(2, 3, 16, 16)) < 1e-4


def test_cli_rewrites_a_fixed_batch_one_file(tmp_path):
    source = tmp_path / "fixed.onnx"
    onnx.save(fixed_batch_mlp(batch=1), source)
    out = tmp_path / "fixed.pt"
    result = shaprewrite(str(source), str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    x = torch.randn(17, 3, 4)
    got = load_in_fresh_process_and_run(out, x, tmp_path)
    np.testing.assert_allclose(got, ort_outputs(source, x.numpy(), fixed_batch=1), atol=1e-5, rtol=1e-4)


def test_cli_refuses_to_overwrite_without_force(tmp_path):
    source = tmp_path / "fixed.onnx"
    onnx.save(fixed_batch_mlp(batch=1), source)
    out = tmp_path / "out.pt"
    out.write_bytes(b"precious")
    result = shaprewrite(str(source), str(out))
    assert result.returncode == 8
    assert "--force" in result.stderr and "Traceback" not in result.stderr
    assert out.read_bytes() == b"precious"
    assert shaprewrite(str(source), str(out), "--force").returncode == 0
    assert out.read_bytes() != b"precious"


def test_cli_bad_input_exits_non_zero_without_traceback(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    out = tmp_path / "out.pt"
    result = shaprewrite(str(garbage), str(out))
    assert result.returncode == 3
    assert "not an ONNX model" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [garbage]


def test_cli_keeps_a_fixed_batch_the_model_mixes_rows_of(tmp_path):
    """A fixed-batch model that mixes rows across the batch cannot be made batch-dynamic:
    verification at another batch size catches it, and the rewrite keeps the batch fixed."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Sub", ["x", "m"], ["y"])]
    proto = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], opset=13)
    source = tmp_path / "batch_mixing.onnx"
    onnx.save(proto, source)
    out = tmp_path / "out.pt"
    result = shaprewrite(str(source), str(out))
    assert result.returncode == 0, result.stderr
    assert "the fixed batch of 2 was kept" in result.stderr
    x = torch.randn(2, 4)
    torch.testing.assert_close(load(out)(x), x - x.mean(0, keepdim=True))


def test_cli_failed_verification_writes_nothing(tmp_path):
    """With zero tolerance, a float16 product fails verification (the result computes in
    float32, onnxruntime rounds to float16): exit 6, nothing written."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    proto = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 256])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", 64])],
                  [onnx.numpy_helper.from_array(rng.normal(size=(256, 64)).astype(np.float16), "w")])
    source = tmp_path / "product.onnx"
    onnx.save(proto, source)
    out = tmp_path / "out.pt"
    result = shaprewrite(str(source), str(out), "--dim", "n=16", "--atol", "0", "--rtol", "0")
    assert result.returncode == 6, result.stderr
    assert "max abs diff" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["product.onnx"]


def test_cli_help_shows_an_example():
    result = shaprewrite("--help")
    assert result.returncode == 0
    assert "shaprewrite model.onnx model.pt" in result.stdout


def test_the_help_lists_each_commands_exit_codes_from_the_errors_themselves():
    from rewriter import errors
    from rewriter.cli import build_parser
    from rewriter.cli_explain import build_explain_parser

    rewrite_help, explain_help = build_parser().epilog, build_explain_parser().epilog
    for error in (errors.InputError, errors.UnsupportedOpError, errors.ExportError, errors.VerificationError,
                  errors.AdditivityError, errors.OutputError):
        assert f"{error.exit_code} {error.exit_text}" in " ".join(rewrite_help.split())
    for error in (errors.InputError, errors.AdditivityError, errors.OutputError, errors.EngineError):
        assert f"{error.exit_code} {error.exit_text}" in " ".join(explain_help.split())
    assert "5 export failed" not in explain_help  # explain never exports
