"""Bad input never crashes and never writes a wrong model: every failure is a typed error from
``rewriter.errors`` with a one-paragraph message, a documented exit code, no traceback and no
output file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import fixed_batch_mlp
from torch import nn

from rewriter import (
    ConversionError,
    ExportError,
    InputError,
    OutputError,
    ShapRewriteError,
    UnsupportedOpError,
    VerificationError,
    rewrite,
)

CLI = [sys.executable, "-m", "rewriter.cli"]
F32 = TensorProto.FLOAT


def raw_model(nodes, inputs, outputs, initializers=(), opset: int = 17, domains=()) -> bytes:
    """Serialized model bytes, deliberately not checked."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    proto.ir_version = 8
    return proto.SerializeToString()


def vi(name, shape, elem=F32):
    return helper.make_tensor_value_info(name, elem, shape)


def weight(name, shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


VALID = fixed_batch_mlp(batch=1).SerializeToString()

# name -> (file bytes, expected error type, expected exit code, a phrase the message must hold)
BAD_FILES = {
    "empty_file": (b"", InputError, 3, "empty"),
    "random_bytes": (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), InputError, 3, "ONNX"),
    "truncated": (VALID[: len(VALID) // 2], InputError, 3, ""),
    "dangling_input": (raw_model([helper.make_node("Relu", ["nowhere"], ["y"])], [vi("x", ["n", 2])],
                                 [vi("y", ["n", 2])]), InputError, 3, "not valid"),
    "cycle": (raw_model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                         helper.make_node("Identity", ["a"], ["y"])], [vi("x", ["n", 2])], [vi("y", ["n", 2])]),
              InputError, 3, "not valid"),
    "duplicate_outputs": (raw_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])],
                                    [vi("x", ["n", 2])], [vi("y", ["n", 2])]), InputError, 3, "not valid"),
    "missing_initializer": (raw_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", ["n", 2])],
                                      [vi("y", ["n", 3])]), InputError, 3, "not valid"),
    "wrong_attribute_type": (raw_model([helper.make_node("Transpose", ["x"], ["y"], perm="0,1")],
                                       [vi("x", ["n", 2])], [vi("y", ["n", 2])]), InputError, 3, "not valid"),
    "unknown_opset": (raw_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["n", 2])], [vi("y", ["n", 2])],
                                opset=99), InputError, 3, "opset 99"),
    "unknown_domain": (raw_model([helper.make_node("Fancy", ["x"], ["y"], domain="com.example")],
                                 [vi("x", ["n", 2])], [vi("y", ["n", 2])], domains=["com.example"]),
                       UnsupportedOpError, 4, "com.example.Fancy"),
    "no_converter": (raw_model([helper.make_node("Unique", ["x"], ["y"])], [vi("x", ["n"])],
                               [vi("y", ["m"])]), UnsupportedOpError, 4, "no converter for these standard ops"),
    "shapes_do_not_match": (raw_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", ["n", 2])],
                                      [vi("y", ["n", 3])], [weight("w", (4, 3))]), InputError, 3, ""),
    "outputs_nan": (raw_model([helper.make_node("Sub", ["x", "x"], ["z"]), helper.make_node("Div", ["z", "z"], ["y"])],
                              [vi("x", ["n", 2])], [vi("y", ["n", 2])]), VerificationError, 6, "NaN"),
    "huge_dims": (raw_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 100000, 100000])],
                            [vi("y", [1, 100000, 100000])]), InputError, 3, "too large"),
}


def assert_one_paragraph(message: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message and "Fix:" in message, message


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_onnx_input_gets_a_typed_error(name, tmp_path):
    data, error, _, phrase = BAD_FILES[name]
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    with pytest.raises(error) as info:
        rewrite(path)
    assert phrase in str(info.value)
    assert_one_paragraph(str(info.value))


@pytest.mark.parametrize("name", ["empty_file", "cycle", "unknown_domain", "outputs_nan", "huge_dims"])
def test_cli_exit_codes_for_bad_input(name, tmp_path):
    data, error, code, phrase = BAD_FILES[name]
    path, out = tmp_path / "model.onnx", tmp_path / "out.pt"
    path.write_bytes(data)
    result = subprocess.run([*CLI, str(path), str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == code == error.exit_code, result.stderr
    assert result.stderr.startswith("shaprewrite:") and "Traceback" not in result.stderr
    assert phrase in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        rewrite(tmp_path / "absent.onnx")
    with pytest.raises(InputError, match="directory"):
        rewrite(tmp_path)
    result = subprocess.run([*CLI, str(tmp_path / "absent.onnx"), str(tmp_path / "o.pt")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 3 and "Traceback" not in result.stderr


@pytest.fixture
def valid_file(tmp_path) -> Path:
    path = tmp_path / "valid.onnx"
    path.write_bytes(VALID)
    return path


@pytest.mark.parametrize("where", ["missing_dir", "unwritable_dir", "is_directory"])
def test_output_path_problems(where, valid_file, tmp_path):
    output = {"missing_dir": tmp_path / "no" / "such" / "dir" / "o.pt",
              "unwritable_dir": Path("/proc/shaprewrite-test.pt"),
              "is_directory": tmp_path}[where]
    result = subprocess.run([*CLI, str(valid_file), str(output), "--force"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == OutputError.exit_code, result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("**/*.tmp")) and not list(tmp_path.glob("**/o.pt"))


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


class ReturnsString(nn.Module):
    def forward(self, x):
        return "not a tensor"


@pytest.mark.parametrize("model,phrase", [(DataDependent(), "data-dependent"), (ReturnsString(), "returns str")],
                         ids=["control_flow", "string"])
def test_torch_models_that_cannot_be_exported(model, phrase):
    with pytest.raises(ExportError) as info:
        rewrite(model, torch.randn(3, 4))
    assert phrase in str(info.value)
    assert_one_paragraph(str(info.value))


def test_not_a_module():
    with pytest.raises(InputError, match="cannot rewrite a function"):
        rewrite(lambda x: x, torch.randn(2, 3))
    with pytest.raises(InputError, match="hold no tensor"):
        rewrite(nn.Linear(3, 2), [1, 2, 3])


def test_every_error_is_a_shaprewrite_error():
    for error in (ConversionError, ExportError, InputError, OutputError, UnsupportedOpError, VerificationError):
        assert issubclass(error, ShapRewriteError)
    codes = [InputError, UnsupportedOpError, ExportError, VerificationError, OutputError]
    assert len({e.exit_code for e in codes}) == len(codes)


# -- external data -----------------------------------------------------------------------


def external_data_model(tmp_path: Path, location: str) -> Path:
    """An MLP whose weight lives in an external file at ``location`` (as written)."""
    proto = fixed_batch_mlp(batch=1)
    tensor = next(t for t in proto.graph.initializer if t.name == "w1")
    raw = numpy_helper.to_array(tensor).tobytes()
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    model_dir = tmp_path / "models"
    model_dir.mkdir(exist_ok=True)
    target = Path(location) if os.path.isabs(location) else model_dir / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    path = model_dir / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_external_data_beside_the_model_loads(tmp_path):
    module = rewrite(external_data_model(tmp_path, "weights.bin"))
    assert module(torch.randn(3, 3, 4)).shape == (3, 2)


@pytest.mark.parametrize("location", ["../escape.bin", "/tmp/shaprewrite-absolute.bin", "link.bin"])
def test_external_data_outside_the_model_directory_is_refused(location, tmp_path):
    if location == "link.bin":
        secret = tmp_path / "secret.bin"
        path = external_data_model(tmp_path, "real.bin")
        secret.write_bytes((path.parent / "real.bin").read_bytes())
        (path.parent / "link.bin").symlink_to(secret)
        proto = onnx.load(path, load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "link.bin"
        path.write_bytes(proto.SerializeToString())
    else:
        path = external_data_model(tmp_path, location)
    with pytest.raises(InputError, match="outside the model's directory"):
        rewrite(path)


# -- determinism and idempotence ---------------------------------------------------------


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x))).mean((2, 3))
        return self.fc(torch.sigmoid(self.norm(h)) * h)


def test_same_input_gives_the_same_module():
    torch.manual_seed(0)
    model, x = Small().eval(), torch.randn(3, 2, 8, 8)
    first, second = rewrite(model, x), rewrite(model, x)
    assert first.code == second.code
    a, b = first.state_dict(), second.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_rewriting_a_rewritten_model_changes_nothing():
    torch.manual_seed(0)
    model, x = Small().eval(), torch.randn(3, 2, 8, 8)
    once = rewrite(model, x)
    twice, report = rewrite(once, x, report=True)
    assert twice is not once and twice.code == once.code
    assert not report.passes and report.verified
    assert list(twice.state_dict()) == list(once.state_dict())


@pytest.mark.parametrize("op,attributes,phrase", [
    ("MaxPool", {"kernel_shape": [-1, 2]}, "kernel_shape [-1, 2] holds a value below 1"),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [0, 1]}, "strides [0, 1] holds a value below 1"),
    ("AveragePool", {"kernel_shape": [2, 2], "pads": [0, 0, -1, 0]}, "pads [0, 0, -1, 0] holds a value below 0"),
    ("AveragePool", {"kernel_shape": [2, 2], "pads": [1, 1]}, "has 2 values for a 2-d kernel"),
    ("MaxPool", {"kernel_shape": [2, 2], "dilations": [1, 0]}, "dilations [1, 0] holds a value below 1"),
    ("ReduceSum", {"axes": [1, 1]}, "repeats an axis"),
])
def test_attributes_against_the_spec_are_refused_naming_the_node(op, attributes, phrase, tmp_path):
    """onnxruntime refuses these; before, torch failed on them inside the rewritten module
    ('this is a shaprewrite bug', exit 1)."""
    opset = 11 if op == "ReduceSum" else 17
    node = helper.make_node(op, ["x"], ["y"], name="bad_node", **attributes)
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    with pytest.raises(InputError, match=re.escape(phrase)) as caught:
        rewrite(path, dims={"n": 2})
    assert caught.value.node == "bad_node" and caught.value.op_type == op
    result = subprocess.run([*CLI, str(path), str(tmp_path / "out.pt"), "--dim", "n=2"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 3 and "bad_node" in result.stderr and "Traceback" not in result.stderr
