"""The edges of a model: called as its users call it (lists, dicts, keyword arguments), returning
what it returns (tuples, dicts, one number per row), the result is one ``[batch, k]`` tensor
that the explainers take as it is returned, and the report says what was done."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import shap
import torch
from explain import captum_relative_delta, shap_relative_error
from onnx import TensorProto, helper
from torch import nn

from rewriter import ExportError, InputError, explain, load, rewrite, save


class Regressor(nn.Module):
    """One number per row, as a regressor's ``.squeeze(-1)`` gives it."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(6, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x))).squeeze(-1)


class LogitsAndProbabilities(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        logits = self.out(torch.tanh(self.hidden(x)))
        return logits, logits.softmax(-1)


class DictOutput(LogitsAndProbabilities):
    def forward(self, x):
        logits, probabilities = super().forward(x)
        return {"probabilities": probabilities, "logits": logits, "aux": None}


class Modalities(nn.Module):
    """``forward(self, xs)`` over a list of modalities."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 8))
        self.table = nn.Linear(5, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, xs):
        image, table = xs
        return self.head(torch.relu(self.image(image)) * torch.sigmoid(self.table(table)))


class KeywordModel(nn.Module):
    """Keyword inputs, one optional and left ``None`` (rtdl's FT-Transformer ``x_cat``)."""

    def __init__(self) -> None:
        super().__init__()
        self.num, self.cat = nn.Linear(4, 6), nn.Embedding(10, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x_num, x_cat=None, scale: float = 1.0):
        hidden = self.num(x_num)
        if x_cat is not None:
            hidden = hidden + self.cat(x_cat).sum(1)
        return self.head(torch.nn.functional.gelu(hidden)) * scale


def _x(n=4, width=6):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(n))


def _additivity(module, inputs, background):
    """The worse of shap's (against the whole background) and Captum's DeepLift (row by row
    against as many background rows) relative additivity errors."""
    inputs, background = (list(t) if isinstance(t, (list, tuple)) else [t] for t in (inputs, background))
    baselines = [b[:len(inputs[0])] for b in background]
    return max(shap_relative_error(module, background, inputs), captum_relative_delta(module, baselines, inputs))


def test_one_number_per_row_comes_back_as_a_column_the_explainers_take():
    model, x = Regressor().eval(), _x()
    module, report = rewrite(model, x, report=True)
    torch.testing.assert_close(module(x), model(x).unsqueeze(-1))
    assert report.as_dict()["interface"]["outputs"]["reshape"] == "[batch] returned as [batch, 1]"
    assert report.as_dict()["exact"]
    assert _additivity(module, _x(3), _x(8)) < 1e-4


@pytest.mark.parametrize("model_class", [LogitsAndProbabilities, DictOutput])
def test_logits_are_kept_from_a_tuple_or_a_dict(model_class):
    model, x = model_class().eval(), _x()
    module, report = rewrite(model, x, report=True)
    logits = model(x)[0] if model_class is LogitsAndProbabilities else model(x)["logits"]
    torch.testing.assert_close(module(x), logits)
    outputs = report.as_dict()["interface"]["outputs"]
    assert outputs["kept"] == (["0"] if model_class is LogitsAndProbabilities else ["logits"])
    assert _additivity(module, _x(3), _x(8)) < 1e-4
    explainer = shap.DeepExplainer(module, _x(8))  # no "'tuple' object has no attribute 'device'"
    explainer.shap_values(_x(2), check_additivity=True)


def test_another_output_is_picked_by_name_or_index_and_a_wrong_one_is_refused():
    model, x = DictOutput().eval(), _x()
    by_name = rewrite(model, x, output="probabilities")
    torch.testing.assert_close(by_name(x), model(x)["probabilities"])
    by_index = rewrite(model, x, output=0)
    torch.testing.assert_close(by_index(x), model(x)["probabilities"])
    with pytest.raises(InputError, match="'nothing' was asked for; the model returns \\['probabilities', 'logits'\\]"):
        rewrite(model, x, output="nothing")
    with pytest.raises(InputError, match="output 5"):
        rewrite(model, x, output=5)


def test_a_list_of_modalities_is_taken_and_given_back_positionally():
    model = Modalities().eval()
    xs = [torch.randn(4, 1, 6, 6), torch.randn(4, 5)]
    module, report = rewrite(model, xs, report=True)
    assert module.input_names == ["xs.0", "xs.1"]
    torch.testing.assert_close(module(*xs), model(xs))
    torch.testing.assert_close(module(*module.embed(xs)), model(xs))
    assert report.as_dict()["interface"]["source_inputs"] == ["xs.0", "xs.1"]
    background = [torch.randn(6, 1, 6, 6), torch.randn(6, 5)]
    assert _additivity(module, [t[:2] for t in xs], background) < 1e-4


def test_keyword_inputs_with_an_optional_one_left_none():
    model, x = KeywordModel().eval(), _x(4, 4)
    module = rewrite(model, x_num=x, x_cat=None, scale=2.0)
    torch.testing.assert_close(module(x), model(x, scale=2.0))
    as_dict = rewrite(model, {"x_num": x})
    torch.testing.assert_close(as_dict(x), model(x))


def test_a_float_input_beside_embedded_categories_is_explained_with_them():
    """Numeric features stay as they are; categorical ids are embedded and attributed per id."""
    model = KeywordModel().eval()
    x_num, x_cat = _x(5, 4), torch.randint(0, 10, (5, 3), generator=torch.Generator().manual_seed(1))
    module, report = rewrite(model, x_num=x_num, x_cat=x_cat, report=True)
    assert [(e["name"], e["role"]) for e in module.interface["inputs"]] == [("x_num", "explained"),
                                                                           ("x_cat_embeds", "explained")]
    torch.testing.assert_close(module(*module.embed(x_num=x_num, x_cat=x_cat)), model(x_num, x_cat))
    assert report.as_dict()["exact"]
    background = {"x_num": _x(6, 4), "x_cat": torch.randint(0, 10, (6, 3))}
    numeric, categorical = explain(module, {"x_num": x_num, "x_cat": x_cat}, background, progress=False)
    assert numeric.shape == (5, 4, 2) and categorical.shape == (5, 3, 2)


def test_a_model_returning_no_tensor_or_given_no_tensor_is_refused():
    class Text(nn.Module):
        def forward(self, x):
            return "text"

    with pytest.raises(ExportError, match="returns str, which holds no tensor"):
        rewrite(Text(), _x())
    with pytest.raises(InputError, match="hold no tensor"):
        rewrite(nn.Linear(2, 2), [1, 2])


def test_several_outputs_kept_on_purpose_are_reported_not_exact():
    model, x = LogitsAndProbabilities().eval(), _x()
    module, report = rewrite(model, x, output=[0, 1], report=True)
    assert isinstance(module(x), tuple)
    document = report.as_dict()
    assert document["exact"] is False
    assert "returns 2 outputs" in document["not_exact_because"][0]


def test_an_onnx_file_with_several_outputs_keeps_the_one_asked_for(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["features"]),
             helper.make_node("ReduceSum", ["features", "axes"], ["score"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "two_outputs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        [onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "w"),
         onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = torch.randn(5, 3)
    first = rewrite(path, dims={"n": 4})
    assert first(x).shape == (5, 4)
    score, report = rewrite(path, dims={"n": 4}, output="score", report=True)
    want = torch.relu(x @ torch.from_numpy(onnx.numpy_helper.to_array(onnx.load(path).graph.initializer[0])))
    torch.testing.assert_close(score(x), want.sum(1, keepdim=True))
    assert report.as_dict()["interface"]["outputs"] == {"outputs": ["features", "score"], "kept": ["score"],
                                                        "reshape": "[batch] returned as [batch, 1]"}
    save(score, tmp_path / "score.pt")
    torch.testing.assert_close(load(tmp_path / "score.pt")(x), score(x))


def test_a_model_in_training_mode_is_verified_as_exported_and_left_as_it_was():
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 2))
    model.train()
    model[3].eval()  # a submodule in its own mode stays in it
    module = rewrite(model, _x())
    assert model.training and model[1].training and not model[3].training
    torch.testing.assert_close(module(_x()), model.eval()(_x()))


def test_a_torch_export_archive_goes_through_the_command(tmp_path):
    """``torch.export.save`` with its example inputs: rewritten as an ONNX file is, verified."""
    import subprocess
    import sys

    model = Regressor().eval()
    x = _x()
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "model.pt2")
    done = subprocess.run([sys.executable, "-m", "rewriter", str(tmp_path / "model.pt2"), str(tmp_path / "out.pt"),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    module = load(tmp_path / "out.pt")
    torch.testing.assert_close(module(_x(6)), model(_x(6)).unsqueeze(-1))


def test_a_torch_export_archive_that_would_unpickle_code_is_refused(tmp_path):
    """The example inputs record swapped for a pickle whose loading would create a file."""
    import io
    import zipfile

    model = Regressor().eval()
    torch.export.save(torch.export.export(model, (_x(),)), tmp_path / "model.pt2")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (__import__("pathlib").Path.touch, (marker,))

    with zipfile.ZipFile(tmp_path / "model.pt2") as archive:
        records = {info.filename: archive.read(info) for info in archive.infolist()}
    payload = io.BytesIO()
    torch.save(Payload(), payload)
    name = next(n for n in records if n.endswith("sample_inputs/model.pt"))  # the example inputs, a pickle
    records[name] = payload.getvalue()
    with zipfile.ZipFile(tmp_path / "hostile.pt2", "w", zipfile.ZIP_STORED) as archive:
        for key, data in records.items():
            archive.writestr(key, data)
    with pytest.raises(InputError, match="plain data"):
        rewrite(tmp_path / "hostile.pt2")
    assert not marker.exists()


class SizedByLengths(nn.Module):
    """Sizes a tensor by a value of its input (``int(lengths.max())``), as forecasting models do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, batch):
        steps = int(batch["lengths"].max())
        return self.fc(batch["values"][:, :steps].reshape(len(batch["values"]), -1).repeat(1, 6 // steps))


def test_fixed_inputs_are_baked_in_checked_and_refused_where_they_cannot_be():
    torch.manual_seed(0)
    batch = {"values": torch.randn(4, 6), "lengths": torch.full((4,), 3)}
    model = SizedByLengths().eval()
    module, report = rewrite(model, batch, fixed=["lengths"], report=True)
    assert report.as_dict()["interface"]["fixed"] == {"batch.lengths": [3]}
    other = {"values": torch.randn(5, 6), "lengths": torch.full((5,), 3)}
    with torch.no_grad():
        torch.testing.assert_close(module(*module.embed(other)), model(other))
    with pytest.raises(InputError, match="was fixed when the model was rewritten"):
        module.embed({"values": torch.randn(2, 6), "lengths": torch.full((2,), 2)})
    varying = {"values": torch.randn(4, 6), "lengths": torch.tensor([3, 3, 2, 3])}
    with pytest.raises(InputError, match="does not hold one value for every row"):
        rewrite(SizedByLengths().eval(), varying, fixed=["lengths"])
    with pytest.raises(InputError, match="names 0 of the model's inputs"):
        rewrite(SizedByLengths().eval(), batch, fixed=["steps"])
