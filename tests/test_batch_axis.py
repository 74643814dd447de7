"""Exact wherever the batch axis goes: sequence-first layers, transformers from other
producers, and ONNX files with a symbolic sequence length.

Explainers pair row ``i`` of a module's input with row ``i + n/2`` along dim 0. Shapes are
measured by running the graph at two batch sizes, so the batch axis of every value is
known; a module whose input has the batch elsewhere gets it moved to the front around it.
"""

from __future__ import annotations

import io

import onnx
import pytest
import torch
from architectures import SequenceFirstAttention, SequenceFirstEncoder, SequenceFirstGate
from explain import assert_round_trips, captum_relative_delta, shap_relative_error
from onnx_graphs import keras_multi_head_attention
from torch import nn

from rewriter import InputError, rewrite

EXACT = 1e-4


class Encoder(nn.Module):
    """A batch-first transformer encoder over feature vectors, mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def symbolic_sequence_file(exporter: str) -> onnx.ModelProto:
    """The encoder exported as most transformer ONNX files are: batch and sequence dynamic."""
    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(2, 6, 4)
    if exporter == "dynamo":
        shapes = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
        return torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=shapes, input_names=["x"]).model_proto
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 1: "seq"}})
    return onnx.load_from_string(buffer.getvalue())


def assert_exact(rewritten: nn.Module, report, shape: tuple) -> None:
    assert report.approximate == []
    assert_round_trips(rewritten, torch.randn(5, *shape))
    torch.manual_seed(2)
    assert shap_relative_error(rewritten, torch.randn(10, *shape), torch.randn(3, *shape)) < EXACT
    assert captum_relative_delta(rewritten, torch.randn(3, *shape), torch.randn(3, *shape)) < EXACT


def test_keras_multi_head_attention_from_tf2onnx_is_exact():
    proto = keras_multi_head_attention()
    rewritten, report = rewrite(proto, report=True)
    assert max(d["max_abs"] for d in report.verification) < 1e-5
    assert_exact(rewritten, report, (5, 8))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("make", [SequenceFirstEncoder, SequenceFirstAttention, SequenceFirstGate],
                         ids=["torch_layer", "attention_by_hand", "gate"])
def test_sequence_first_layers_are_exact(make, exporter):
    torch.manual_seed(0)
    model = make().eval()
    rewritten, report = rewrite(model, torch.randn(4, 5, 8), exporter=exporter, report=True)
    x = torch.randn(6, 5, 8)
    torch.testing.assert_close(rewritten(x), model(x), atol=1e-5, rtol=1e-4)
    assert_exact(rewritten, report, (5, 8))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_symbolic_sequence_length_is_specialised_and_exact(exporter):
    proto = symbolic_sequence_file(exporter)
    rewritten, report = rewrite(proto, dims={"seq": 6, "batch": 3}, report=True)
    note = next(p.note for p in report.passes if p.name == "measure_shapes")
    assert "('seq') fixed at 6" in note, note
    assert_exact(rewritten, report, (6, 4))
    with pytest.raises(InputError, match=r"rewritten for \[batch, 6, 4\]"):
        rewritten(torch.randn(3, 7, 4))
