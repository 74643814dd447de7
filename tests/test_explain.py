"""The explanation step: ``rewriter.explain`` and ``shaprewrite explain``, local and on Ray.

Every result is checked here independently of the additivity check inside ``explain``: the
attributions of each row add up to ``f(x) - E[f(background)]``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from architectures import FunctionalMLP, ResNetStyle, TwoInputNet, randomize_batchnorm

from rewriter import AdditivityError, InputError, explain, rewrite, save
from rewriter.cli import main
from rewriter.explanation import run_explanation

CLI = [sys.executable, "-m", "rewriter"]
RNG = np.random.default_rng(0)


def _rows(n: int, *shape: int) -> np.ndarray:
    return RNG.standard_normal((n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn():
    model = rewrite(randomize_batchnorm(ResNetStyle(num_classes=3)), torch.randn(2, 3, 16, 16))
    return model, _rows(20, 3, 16, 16), _rows(8, 3, 16, 16)


@pytest.fixture(scope="module")
def mlp():
    return rewrite(FunctionalMLP(), torch.randn(2, 10)), _rows(30, 10), _rows(12, 10)


@pytest.fixture(scope="module")
def two_inputs():
    a, b = torch.randn(2, 1, 6, 6), torch.randn(2, 6)
    return rewrite(TwoInputNet(), a, b), (_rows(15, 1, 6, 6), _rows(15, 6)), (_rows(6, 1, 6, 6), _rows(6, 6))


def additivity_error(model, inputs, background, attributions) -> float:
    inputs, background = (inputs if isinstance(inputs, tuple) else (inputs,)), \
        (background if isinstance(background, tuple) else (background,))
    attributions = attributions if isinstance(attributions, list) else [attributions]
    with torch.no_grad():
        out = model(*map(torch.from_numpy, inputs)).reshape(len(inputs[0]), -1).double()
        reference = model(*map(torch.from_numpy, background)).reshape(len(background[0]), -1).double().mean(0)
    delta = (out - reference).numpy()
    totals = sum(a.reshape(a.shape[0], -1, a.shape[-1]).sum(1, dtype=np.float64) for a in attributions)
    return float(np.abs(totals - delta).max() / np.abs(delta).max())


@pytest.mark.parametrize("explainer", ["shap", "captum"])
@pytest.mark.parametrize("case", ["cnn", "mlp", "two_inputs"])
def test_attributions_add_up_to_the_output_difference(case, explainer, request):
    model, inputs, background = request.getfixturevalue(case)
    values = explain(model, inputs, background, explainer=explainer, batch_size=7, progress=False)
    with torch.no_grad():
        n_outputs = model(*map(torch.from_numpy, inputs if isinstance(inputs, tuple) else (inputs,))).shape[1]
    for value, rows in zip(values if isinstance(values, list) else [values],
                           inputs if isinstance(inputs, tuple) else (inputs,)):
        assert value.shape == rows.shape + (n_outputs,) and value.dtype == np.float32
    assert additivity_error(model, inputs, background, values) < 1e-4


def test_batches_do_not_change_the_result_and_keep_the_order(mlp):
    model, inputs, background = mlp
    whole = explain(model, inputs, background, batch_size=64, progress=False)
    batched = explain(model, inputs, background, batch_size=4, progress=False)
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6)
    first_rows = explain(model, inputs[:4], background, batch_size=64, progress=False)
    np.testing.assert_allclose(first_rows, whole[:4], rtol=1e-5, atol=1e-6)


def test_a_saved_artifact_explains_like_the_module(cnn, tmp_path):
    model, inputs, background = cnn
    state = set(model.state_dict())
    explain(model, inputs[:2], background, progress=False)
    assert set(model.state_dict()) == state  # SHAP's leftovers are gone: the model saves as it was
    save(model, tmp_path / "model.pt")
    from_file = explain(tmp_path / "model.pt", inputs[:5], background, progress=False)
    np.testing.assert_array_equal(from_file, explain(model, inputs[:5], background, progress=False))


def test_rows_above_the_threshold_are_named(mlp):
    model, inputs, background = mlp
    with pytest.raises(AdditivityError) as caught:
        explain(model, inputs, background, threshold=0.0, batch_size=8, progress=False)
    assert caught.value.rows and all(0 <= r < 8 for r in caught.value.rows)  # the first batch fails
    assert "row(s)" in str(caught.value)


def test_the_summary_reports_the_worst_error_and_the_speed(mlp):
    model, inputs, background = mlp
    result = run_explanation(model, inputs, background, progress=False)
    assert result.rows == len(inputs) and result.rows_per_second > 0
    assert 0 <= result.worst_error < 1e-4


@pytest.mark.parametrize("change, message", [
    (lambda x, b: (x, b[:, :5]), "shape"),
    (lambda x, b: (x, (b, b)), "background array"),
    (lambda x, b: (x.astype(np.int64), b), "int64"),
    (lambda x, b: (x[:0], b), "no rows"),
    (lambda x, b: (x[:, :5], b[:, :5]), "shape"),  # both alike, but not what the model takes
])
def test_bad_inputs_are_refused_before_any_work(mlp, change, message):
    model, inputs, background = mlp
    x, b = change(inputs, background)
    with pytest.raises(InputError, match=message):
        explain(model, x, b, progress=False)


def test_an_unrewritten_model_or_a_bad_artifact_is_refused(tmp_path):
    with pytest.raises(InputError, match="rewrite it first"):
        explain(FunctionalMLP(), _rows(2, 10), _rows(2, 10), progress=False)
    (tmp_path / "fake.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a shaprewrite artifact"):
        explain(tmp_path / "fake.pt", _rows(2, 10), _rows(2, 10), progress=False)


def test_ray_gives_the_local_result_row_for_row(cnn):
    ray = pytest.importorskip("ray")
    model, inputs, background = cnn
    local = explain(model, inputs, background, batch_size=3, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
    try:
        distributed = explain(model, inputs, background, batch_size=3, engine="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(distributed, local)


def test_a_cluster_that_cannot_be_reached_is_an_engine_error(saved, tmp_path, capsys):
    pytest.importorskip("ray")
    returned = main(["explain", str(saved / "model.pt"), "--inputs", str(saved / "rows.npy"), "--background",
                     str(saved / "background.npy"), "--out", str(tmp_path / "a.npy"), "--engine", "ray",
                     "--address", "no-such-address"])
    assert returned == 9 and "cannot start or reach the Ray cluster" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- the command -----------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "explain", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def saved(mlp, tmp_path_factory):
    model, inputs, background = mlp
    folder = tmp_path_factory.mktemp("explain")
    save(model, folder / "model.pt")
    np.save(folder / "rows.npy", inputs)
    np.save(folder / "background.npy", background)
    return folder


def test_the_command_writes_what_the_api_returns_and_a_plot(saved, mlp):
    model, inputs, background = mlp
    done = _cli(str(saved / "model.pt"), "--inputs", str(saved / "rows.npy"), "--background",
                str(saved / "background.npy"), "--out", str(saved / "attr.npy"), "--plot", str(saved / "attr.png"),
                "--batch-size", "16")
    assert done.returncode == 0, done.stderr
    assert "rows/s" in done.stderr and "worst additivity error" in done.stderr
    np.testing.assert_array_equal(np.load(saved / "attr.npy"), explain(model, inputs, background, batch_size=16,
                                                                       progress=False))
    assert (saved / "attr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_takes_npz_for_several_inputs(two_inputs, tmp_path):
    """By the model's input names (the rows' arrays here in the other order), or unnamed
    (numpy's arr_0, arr_1) in the model's order."""
    model, inputs, background = two_inputs
    save(model, tmp_path / "model.pt")
    np.savez(tmp_path / "rows.npz", table=inputs[1], image=inputs[0])
    np.savez(tmp_path / "bg.npz", *background)
    done = _cli(str(tmp_path / "model.pt"), "--inputs", str(tmp_path / "rows.npz"), "--background",
                str(tmp_path / "bg.npz"), "--out", str(tmp_path / "attr.npz"), "--explainer", "captum", "--quiet")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    with np.load(tmp_path / "attr.npz") as written:
        assert written.files == ["image", "table"]
        assert additivity_error(model, inputs, background, [written["image"], written["table"]]) < 1e-4


@pytest.mark.parametrize("case, code, message", [
    ("missing_model", 3, "does not exist"),
    ("mismatched", 3, "background"),
    ("unwritable", 8, "does not exist. Fix: create it first"),
    ("pickle", 3, "plain arrays"),
    ("exists", 8, "already exists"),
])
def test_the_command_fails_with_a_typed_error_and_writes_nothing(saved, tmp_path, case, code, message, capsys):
    model, rows, background, out = saved / "model.pt", saved / "rows.npy", saved / "background.npy", tmp_path / "a.npy"
    if case == "missing_model":
        model = tmp_path / "missing.pt"
    elif case == "mismatched":
        np.save(tmp_path / "bg.npy", _rows(4, 7))
        background = tmp_path / "bg.npy"
    elif case == "unwritable":
        out = tmp_path / "no" / "such" / "dir" / "a.npy"
    elif case == "pickle":
        np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        rows = tmp_path / "objects.npy"
    elif case == "exists":
        out.write_bytes(b"keep me")
    returned = main(["explain", str(model), "--inputs", str(rows), "--background", str(background), "--out", str(out),
                     "--quiet"])  # in this process: the same code as the command, without its start-up time
    stderr = capsys.readouterr().err
    assert returned == code and message in stderr and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in [tmp_path / "bg.npy", tmp_path / "objects.npy", out] if p.exists() and p.parent == tmp_path)
    if case == "exists":
        assert out.read_bytes() == b"keep me"


# -- the exact engine --------------------------------------------------------------------------


def test_the_exact_engine_is_the_default_and_gives_shaps_numbers(cnn):
    model, inputs, background = cnn
    default = run_explanation(model, inputs[:5], background, progress=False)
    by_shap = run_explanation(model, inputs[:5], background, explainer="shap", progress=False)
    scale = np.abs(by_shap.attributions[0]).max()
    np.testing.assert_allclose(default.attributions[0], by_shap.attributions[0], rtol=0, atol=1e-5 * scale)


def test_a_small_memory_budget_chunks_the_pairs_and_changes_nothing(cnn):
    model, inputs, background = cnn
    whole = explain(model, inputs[:6], background, progress=False)
    chunked = explain(model, inputs[:6], background, memory_budget=1, progress=False)  # one pair at a time
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-7)
    with pytest.raises(InputError, match="memory_budget"):
        explain(model, inputs[:2], background, memory_budget=0, progress=False)


def test_outputs_and_top_k_pick_what_is_explained(mlp):
    model, inputs, background = mlp
    every = explain(model, inputs[:6], background, progress=False)
    some = run_explanation(model, inputs[:6], background, outputs=[2, 0], progress=False)
    np.testing.assert_allclose(some.attributions[0], every[..., [2, 0]], rtol=1e-5, atol=1e-7)
    assert (some.outputs == [2, 0]).all()
    top = run_explanation(model, inputs[:6], background, top_k=1, progress=False)
    with torch.no_grad():
        largest = model(torch.from_numpy(inputs[:6])).argmax(1).numpy()
    assert (top.outputs[:, 0] == largest).all()
    np.testing.assert_allclose(top.attributions[0][..., 0], every[np.arange(6), :, largest], rtol=1e-5, atol=1e-7)
    for explainer in ("shap", "captum"):  # the same selection through the other explainers
        picked = run_explanation(model, inputs[:6], background, outputs=[1], explainer=explainer, progress=False)
        np.testing.assert_allclose(picked.attributions[0][..., 0], every[..., 1], rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="outputs \\[7\\]"):
        explain(model, inputs[:2], background, outputs=[7], progress=False)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"))])
def test_the_engine_runs_on_the_device_asked_for(cnn, device):
    model, inputs, background = cnn
    values = explain(model, inputs[:3], background, device=device, progress=False)
    assert values.shape == inputs[:3].shape + (3,)
    assert additivity_error(model.cpu(), inputs[:3], background, values) < 1e-4


def test_the_command_explains_top_k_outputs_into_an_npz(saved, tmp_path):
    done = _cli(str(saved / "model.pt"), "--inputs", str(saved / "rows.npy"), "--background",
                str(saved / "background.npy"), "--out", str(tmp_path / "a.npz"), "--top-k", "2")
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "a.npz") as written:
        assert written.files == ["x", "outputs"]
        assert written["x"].shape == (30, 10, 2) and written["outputs"].shape == (30, 2)
