"""A model past protobuf's 2 GiB limit, its weights in an external data file: rewritten,
verified, saved and loaded again, with each weight held once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import rewriter

WIDTH = 17_000  # two 17,000 x 17,000 float32 weights: 2.31 GB, past 2 GiB


def _weight(seed: int) -> np.ndarray:
    """A random block tiled over the matrix: quick to build, no symmetry a transposition
    would hide."""
    block = np.random.default_rng(seed).standard_normal((1000, 1000), dtype=np.float32) / np.float32(np.sqrt(WIDTH))
    return np.tile(block, (17, 17))


@pytest.fixture(scope="module")
def large_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("large")
    initializers, offset = [], 0
    with open(folder / "weights.bin", "wb") as data:
        for name, seed in (("w1", 1), ("w2", 2)):
            weight = _weight(seed)
            weight.tofile(data)
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=weight.shape,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(weight.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(tensor)
            offset += weight.nbytes
    assert offset > 2**31
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])], initializers),
        opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "large.onnx"
    onnx.save(model, path)
    return path


def test_a_model_past_2_gib_is_rewritten_verified_saved_and_loaded(large_model, tmp_path):
    module, report = rewriter.rewrite(large_model, report=True)
    assert report.verified and max(check["max_abs"] for check in report.verification) < 1e-4
    x = torch.randn(2, WIDTH)
    expected = torch.relu(x @ torch.from_numpy(_weight(1))) @ torch.from_numpy(_weight(2))
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-4)
    out = tmp_path / "large.pt"
    rewriter.save(module, out)
    assert out.stat().st_size < 1.05 * 2 * WIDTH * WIDTH * 4  # each weight stored once
    with torch.no_grad():
        torch.testing.assert_close(rewriter.load(out)(x), module(x), rtol=0, atol=0)
