"""Fourier transforms: ONNX ``DFT`` (what ``torch.fft`` exports to) and ``STFT`` are linear in
the signal, so the gradient is their exact rule. A frequency-domain filter, an FNet-style
mixing layer and Hugging Face's FNet come out verified and exact."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from explain import captum_relative_delta, shap_relative_error
from onnx import TensorProto, helper
from torch import nn

from rewriter import rewrite
from rewriter.explanation import run_explanation


class FrequencyFilter(nn.Module):
    """A learned filter applied in the frequency domain (``rfft``, a complex product, ``irfft``),
    as forecasting models filter their inputs."""

    def __init__(self, length: int = 16, channels: int = 3) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(length // 2 + 1, channels, 2) * 0.3)
        self.head = nn.Linear(length * channels, 2)

    def forward(self, x):
        spectrum = torch.fft.rfft(x, dim=1) * torch.view_as_complex(self.weights)
        return self.head(torch.relu(torch.fft.irfft(spectrum, n=x.shape[1], dim=1)).flatten(1))


class FourierMixing(nn.Module):
    """FNet's token mixing: the real part of a 2-d Fourier transform, then a feed-forward block."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.norm, self.dense, self.head = nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 2)

    def forward(self, x):
        hidden = self.norm(x + torch.fft.fft2(x).real)
        return self.head(nn.functional.gelu(self.dense(hidden)).mean(1))


@pytest.mark.parametrize("model_class,shape", [(FrequencyFilter, (16, 3)), (FourierMixing, (6, 8))])
def test_fourier_models_are_verified_and_exact(model_class, shape):
    torch.manual_seed(0)
    model = model_class().eval()
    module, report = rewrite(model, torch.randn(2, *shape), report=True)
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    x = torch.randn(5, *shape)
    torch.testing.assert_close(module(x), model(x), rtol=1e-4, atol=1e-5)
    background, rows = torch.randn(8, *shape), torch.randn(3, *shape)
    assert shap_relative_error(module, background, rows) < 1e-4
    assert captum_relative_delta(module, background[:3], rows) < 1e-4


def test_hugging_face_fnet_is_explained_per_token():
    transformers = pytest.importorskip("transformers")
    config = transformers.FNetConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                     max_position_embeddings=32, num_labels=3, use_tpu_fourier_optimizations=False)
    torch.manual_seed(0)
    model = transformers.FNetForSequenceClassification(config).eval()
    ids = torch.randint(3, 60, (3, 10), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, report = rewrite(model, **batch, report=True)
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    for explainer in ("shap", "captum"):
        result = run_explanation(module, batch, reference=0, explainer=explainer, progress=False)
        assert result.attributions[0].shape == (3, 10, 3) and result.worst_error < 1e-4


def _dft_graph(opset: int, inverse: int, onesided: int, complex_input: bool, length: int | None) -> onnx.ModelProto:
    channels = 2 if complex_input else 1
    inputs = ["x", "length" if length else ""]
    initializers = [helper.make_tensor("length", TensorProto.INT64, [], [length])] if length else []
    attributes = {"inverse": inverse, "onesided": onesided}
    if opset >= 20:
        inputs.append("axis")
        initializers.append(helper.make_tensor("axis", TensorProto.INT64, [], [1]))
    else:
        attributes["axis"] = 1
    nodes = [helper.make_node("DFT", inputs, ["spectrum"], **attributes),
             helper.make_node("Relu", ["spectrum"], ["y"])]
    graph = helper.make_graph(nodes, "dft", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 12, channels])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m", "c"])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("inverse,onesided,complex_input,length", [
    (0, 0, False, None), (0, 1, False, None), (0, 0, True, None), (0, 1, False, 16), (0, 0, True, 8),
    (1, 0, True, None), (1, 1, True, 22),
])
def test_onnx_dft_matches_onnxruntime_and_is_exact(opset, inverse, onesided, complex_input, length):
    model = _dft_graph(opset, inverse, onesided, complex_input, length)
    rows = torch.randn(3, 12, 2 if complex_input else 1)
    module, report = rewrite(model, rows, report=True, check=True)  # verified against onnxruntime
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]


def test_onnx_stft_with_a_window_matches_onnxruntime_and_is_exact():
    window = np.hanning(16).astype(np.float32)
    nodes = [helper.make_node("STFT", ["signal", "step", "window", "frame_length"], ["frames"], onesided=1),
             helper.make_node("Relu", ["frames"], ["y"])]
    graph = helper.make_graph(
        nodes, "stft", [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["n", 64, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "frames", "bins", 2])],
        [helper.make_tensor("step", TensorProto.INT64, [], [8]), onnx.numpy_helper.from_array(window, "window"),
         helper.make_tensor("frame_length", TensorProto.INT64, [], [16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module, report = rewrite(model, torch.randn(3, 64, 1), report=True, check=True)
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    assert module(torch.randn(2, 64, 1)).shape == (2, 7 * 9 * 2)
