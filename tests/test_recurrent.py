"""Recurrent networks explained exactly: LSTM, GRU and RNN (from torch through both exporters,
or as ONNX written by other tools, Loops included), unrolled over time into affine maps,
rescaled activations and Shapley products."""

from __future__ import annotations

import onnx
import pytest
import torch
from explain import assert_engine_matches_the_explainers, assert_round_trips
from onnx import TensorProto, helper
from onnx_graphs import keras_rnn_loop, recurrent_layer
from torch import nn

from rewriter import ConversionError, rewrite
from rewriter.cells import GRUStep, LSTMStep
from rewriter.check import self_check
from rewriter.explanation import run_explanation

EXACT = 1e-4
SEQ, FEATURES = 5, 4


class SequenceClassifier(nn.Module):
    """A recurrent layer over ``[batch, seq, features]`` and a head on its last output. A
    layer that is not batch-first gets the input transposed, as model code does."""

    def __init__(self, cell: type[nn.Module], **options) -> None:
        super().__init__()
        self.batch_first = options.get("batch_first", False)
        self.rnn = cell(FEATURES, 6, **options)
        self.head = nn.Linear(6 * (2 if options.get("bidirectional") else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rnn(x if self.batch_first else x.transpose(0, 1))[0]
        return self.head((out if self.batch_first else out.transpose(0, 1))[:, -1])


class GRUThenLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(FEATURES, 5, batch_first=True)
        self.lstm = nn.LSTM(5, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.gru(x)[0])[0].mean(1))


class LSTMWithState(nn.Module):
    """Initial states given as inputs, batch first as explainers need them."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x, (h0.transpose(0, 1).contiguous(), c0.transpose(0, 1).contiguous()))
        return self.head(out[:, -1])


MODELS = {
    "lstm": lambda: SequenceClassifier(nn.LSTM),
    "lstm_2_layers_bidirectional": lambda: SequenceClassifier(nn.LSTM, num_layers=2, bidirectional=True,
                                                              batch_first=True),
    "gru": lambda: SequenceClassifier(nn.GRU, batch_first=True),
    "gru_bidirectional": lambda: SequenceClassifier(nn.GRU, bidirectional=True),
    "rnn_tanh": lambda: SequenceClassifier(nn.RNN, batch_first=True),
    "rnn_relu": lambda: SequenceClassifier(nn.RNN, nonlinearity="relu"),
    "gru_then_lstm": GRUThenLSTM,
    "lstm_with_state": LSTMWithState,
}


def inputs_for(name: str, batch: int) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, SEQ, FEATURES)
    if name == "lstm_with_state":
        return x, torch.randn(batch, 2, 6) * 0.5, torch.randn(batch, 2, 6) * 0.5
    return (x,)


CASES = [(name, exporter) for name in sorted(MODELS) for exporter in ("dynamo", "torchscript")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{e}" for n, e in CASES])
def case(request):
    name, exporter = request.param
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    rewritten, report = rewrite(model, *inputs_for(name, 3), exporter=exporter, report=True)
    return name, model, rewritten, report


def test_forward_unchanged(case):
    name, model, rewritten, _ = case
    x = inputs_for(name, 7)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(*x), model(*x), atol=1e-5, rtol=1e-4)
    assert_round_trips(rewritten, *x)


def test_every_node_is_exact(case):
    _, _, _, report = case
    assert report.approximate == []


def test_shap_and_captum_are_exact(case):
    name, _, rewritten, _ = case
    torch.manual_seed(2)
    errors = self_check(rewritten, inputs_for(name, 10), inputs_for(name, 3))
    assert errors["shap"] < EXACT and errors["captum"] < EXACT, errors


def test_the_exact_engine_gives_shaps_and_captums_numbers(case):
    name, _, rewritten, _ = case
    torch.manual_seed(4)
    assert_engine_matches_the_explainers(rewritten, inputs_for(name, 6), inputs_for(name, 3))


def test_one_module_per_step_named_after_it(case):
    name, _, rewritten, report = case
    if name.startswith("rnn") and report.exporter == "dynamo":
        # dynamo writes torch's RNN already unrolled: one activation per step, torch's names.
        activations = [m for m in rewritten.modules() if isinstance(m, (nn.Tanh, nn.ReLU))]
        assert len(activations) == SEQ
        return
    steps = {n: type(m).__name__ for n, m in rewritten.named_modules() if n.endswith("_t3")}
    assert steps and set(steps.values()) <= {"LSTMStep", "GRUStep", "Tanh", "ReLU"}, steps
    kinds = {e["node"]: e["shap"] for e in report.nodes if e["node"] in steps}
    assert set(kinds.values()) <= {"recurrent", "rescale (native)"}


def test_the_steps_of_one_direction_share_its_recurrent_weights(case):
    """One tensor per layer and direction, as in the source, not a copy per step (which left
    it out of cache at every step and grew memory with the sequence length)."""
    _, model, rewritten, _ = case
    steps = [m for m in rewritten.modules() if isinstance(m, (LSTMStep, GRUStep))]
    if not steps:
        return  # plain RNNs: their steps are activation modules
    recurrences = [n for n, _ in model.named_parameters() if ".weight_hh_" in n]
    assert len(steps) == SEQ * len(recurrences)
    assert len({m.recurrent.data_ptr() for m in steps}) == len(recurrences)


# -- ONNX recurrent ops as other producers write them -----------------------------------------

ONNX_CASES = {
    "lstm_peepholes_clip_reverse": dict(op="LSTM", peepholes=True, clip=1.5, direction="reverse"),
    "lstm_bidirectional_all_outputs": dict(op="LSTM", direction="bidirectional", outputs=("Y", "Y_h", "Y_c")),
    "lstm_layout_1": dict(op="LSTM", layout=1, direction="bidirectional", outputs=("Y", "Y_h", "Y_c")),
    "lstm_activations_overridden": dict(op="LSTM", activations=["HardSigmoid", "LeakyRelu", "Softsign"],
                                        alphas=[0.3, 0.1], betas=[0.4]),
    "lstm_initial_state_inputs": dict(op="LSTM", initial_state=True, outputs=("Y", "Y_h", "Y_c")),
    "lstm_opset_9": dict(op="LSTM", opset=9),
    "gru_linear_after_reset": dict(op="GRU", linear_before_reset=0),
    "gru_linear_before_reset_bidirectional": dict(op="GRU", linear_before_reset=1, direction="bidirectional"),
    "rnn_relu": dict(op="RNN", activations=["Relu"]),
}


def random_inputs(proto: onnx.ModelProto, batch: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn([d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim])
                 for vi in proto.graph.input)


@pytest.mark.parametrize("name", sorted(ONNX_CASES) + ["keras_simple_rnn_loop"])
def test_onnx_recurrences_are_verified_and_exact(name):
    proto = keras_rnn_loop() if name == "keras_simple_rnn_loop" else recurrent_layer(**ONNX_CASES[name])
    rewritten, report = rewrite(proto, dims={"N": 3}, report=True)
    assert report.verified and report.approximate == []
    torch.manual_seed(2)
    errors = self_check(rewritten, random_inputs(proto, 10), random_inputs(proto, 3))
    assert errors["shap"] < EXACT and errors["captum"] < EXACT, errors


def test_layout_1_is_verified_by_the_reference_evaluator():
    """onnxruntime cannot run batch-first recurrences; ONNX's reference evaluator can."""
    _, report = rewrite(recurrent_layer("LSTM", layout=1), dims={"N": 3}, report=True)
    assert {d["reference"] for d in report.verification} == {"ONNX reference evaluator"}


def test_constant_sequence_lengths_mask_the_steps_past_each_row():
    """Fixed per-row lengths need a fixed batch; the result matches onnxruntime row by row."""
    proto = recurrent_layer("LSTM", batch=3, sequence_lens=[5, 2, 4], direction="bidirectional",
                            outputs=("Y", "Y_h", "Y_c"))
    _, report = rewrite(proto, dynamic_batch=False, report=True)
    assert report.verified


def test_input_dependent_sequence_lengths_are_refused_naming_the_node():
    proto = recurrent_layer("GRU")
    graph = proto.graph
    graph.input.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["N"]))
    node = next(n for n in graph.node if n.op_type == "GRU")
    node.input[4:] = ["lengths"]
    with pytest.raises(ConversionError, match="sequence_lens depend on the input") as caught:
        rewrite(proto, dims={"N": 3}, check_inputs=None)
    assert caught.value.node == "encoder_gru" and caught.value.op_type == "GRU"


def test_a_loop_with_an_input_dependent_trip_count_is_refused():
    proto = keras_rnn_loop()
    graph = proto.graph
    largest = helper.make_node("ReduceMax", ["input_1"], ["largest"], keepdims=0, name="largest")
    steps = helper.make_node("Cast", ["largest"], ["steps"], to=TensorProto.INT64, name="steps")
    loop = next(n for n in graph.node if n.op_type == "Loop")
    loop.input[0] = "steps"
    graph.node.insert(0, steps)
    graph.node.insert(0, largest)
    with pytest.raises(ConversionError, match="trip count") as caught:
        rewrite(proto, dims={"N": 3})
    assert caught.value.op_type == "Loop"


class PackedFullLength(nn.Module):
    """An LSTM packed with lengths built in forward, all the window's length, sorted as
    ``enforce_sorted=False`` sorts them (pytorch-forecasting's packing)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(3, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, x):
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        return self.head(out[:, -1])


def test_a_packed_lstm_whose_lengths_are_all_full_is_unrolled_and_exact():
    torch.manual_seed(0)
    model, x = PackedFullLength().eval(), torch.randn(4, 6, 3)
    module, report = rewrite(model, x, exporter="torchscript", report=True)
    document = report.as_dict()
    assert document["exact"], document["not_exact_because"]
    assert any(p["pass"] == "drop_full_sequence_lengths" and p["changed"] for p in document["passes"])
    for explainer in ("exact", "shap", "captum"):
        result = run_explanation(module, torch.randn(3, 6, 3), torch.randn(5, 6, 3), explainer=explainer,
                                 progress=False)
        assert result.worst_error < 1e-4


def test_topk_puts_equal_values_in_index_order_as_onnx_does():
    from rewriter.functional import onnx_topk

    values, indices = onnx_topk(torch.tensor([[2.0, 5.0, 5.0, 2.0, 5.0]]), [4])
    assert indices.tolist() == [[1, 2, 4, 0]] and values.tolist() == [[5.0, 5.0, 5.0, 2.0]]
