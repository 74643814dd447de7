"""What bad data, special files and full disks get: a typed error, an exit code, nothing
written, never a traceback and never a check that passes on NaN."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from rewriter import InputError, VerificationError, explain, rewrite, save
from rewriter.arrays import read_arrays

CLI = [sys.executable, "-m", "rewriter"]


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kwargs)


def _log_relu(path: Path) -> Path:
    """``Relu(Log(x))``: NaN for every negative input, as random normal check inputs give."""
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["l"]), helper.make_node("Relu", ["l"], ["y"])],
                              "log_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# -- NaN is never verified -------------------------------------------------------------------


def test_a_source_that_outputs_some_nan_is_refused_naming_the_output(tmp_path):
    with pytest.raises(VerificationError, match="NaN or Inf in 'y' \\(\\d+ of \\d+ elements\\)") as caught:
        rewrite(_log_relu(tmp_path / "log.onnx"), dims={"n": 4})
    assert "--inputs" in str(caught.value)


def test_the_cli_refuses_it_with_exit_6_and_takes_real_rows_instead(tmp_path):
    source, out = _log_relu(tmp_path / "log.onnx"), tmp_path / "out.pt"
    refused = _run(str(source), str(out), "--dim", "n=4")
    assert refused.returncode == 6 and "NaN or Inf" in refused.stderr and not out.exists(), refused.stderr
    rows = np.abs(np.random.default_rng(0).normal(size=(4, 5))).astype(np.float32) + 0.1
    np.savez(tmp_path / "rows.npz", x=rows)
    done = _run(str(source), str(out), "--inputs", str(tmp_path / "rows.npz"))
    assert done.returncode == 0, done.stderr
    np.save(tmp_path / "rows.npy", rows)
    done = _run(str(source), str(tmp_path / "out2.pt"), "--inputs", str(tmp_path / "rows.npy"))
    assert done.returncode == 0, done.stderr
    wrong = _run(str(source), str(tmp_path / "out3.pt"), "--inputs", str(tmp_path / "rows.npz"), "--dim", "n=2")
    assert wrong.returncode == 0  # dims only size random inputs; real rows have their own
    np.savez(tmp_path / "misnamed.npz", z=rows)
    misnamed = _run(str(source), str(tmp_path / "out4.pt"), "--inputs", str(tmp_path / "misnamed.npz"))
    assert misnamed.returncode == 3 and "unknown ['z']" in misnamed.stderr, misnamed.stderr


# -- special files -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_special_files_are_refused_without_reading_them(kind, tmp_path):
    if kind == "fifo":
        path = tmp_path / "model.onnx"
        os.mkfifo(path)
    elif kind == "dev_zero":
        path = Path("/dev/zero")
    else:
        path = tmp_path
    result = _run(str(path), str(tmp_path / "out.pt"))  # a hang or a memory blow-up fails by the timeout
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert "not a regular file" in result.stderr or "directory" in result.stderr
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(InputError):
        read_arrays(path)


def test_a_fifo_as_rows_or_as_a_model_to_explain_is_refused(tmp_path):
    fifo = tmp_path / "rows.npy"
    os.mkfifo(fifo)
    model = tmp_path / "model.pt"
    save(rewrite(nn.Linear(3, 2), torch.randn(2, 3)), model)
    result = _run("explain", str(model), "--inputs", str(fifo), "--background", str(fifo), "--out",
                  str(tmp_path / "a.npy"))
    assert result.returncode == 3 and "not a regular file" in result.stderr, result.stderr
    os.mkfifo(tmp_path / "model_fifo.pt")
    result = _run("explain", str(tmp_path / "model_fifo.pt"), "--inputs", str(fifo), "--background", str(fifo),
                  "--out", str(tmp_path / "a.npy"))
    assert result.returncode == 3 and "not a regular file" in result.stderr, result.stderr


def test_an_array_header_that_declares_more_than_the_file_holds_is_refused(tmp_path):
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    path = tmp_path / "huge.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 64)
    with pytest.raises(InputError, match="declares 4,000,000,000,000 bytes"):
        read_arrays(path)


# -- full disks ----------------------------------------------------------------------------------


def _ignore_file_size_signal() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("disk") / "cnn.onnx"
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 14 * 14, 64)).eval()  # 800 KB
    torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), path, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}}, input_names=["input"])
    return path


def test_a_file_size_limit_ends_in_an_output_error_and_leaves_nothing(onnx_file, tmp_path):
    """The write fails part-way as it does on a full disk (the process may not grow the file)."""
    out = tmp_path / "out.pt"
    result = subprocess.run([*CLI, str(onnx_file), str(out)], capture_output=True, text=True, timeout=300,
                            preexec_fn=_ignore_file_size_signal)
    assert result.returncode == 8, result.stderr
    assert "File too large" in result.stderr and "internal error" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def _small_filesystem_available() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _small_filesystem_available(), reason="no user namespaces to mount a small file system in")
def test_a_full_disk_is_an_output_error_and_an_existing_file_stays(onnx_file, tmp_path):
    """A 256 KiB tmpfs in a mount namespace of its own: the CLI exits 8 'No space left on
    device', removes its temporary file, and leaves the file already there untouched."""
    script = (f"mount -t tmpfs -o size=256k tmpfs {tmp_path} && printf keep > {tmp_path}/out.pt && "
              f"{sys.executable} -m rewriter {onnx_file} {tmp_path}/out.pt --force; code=$?; "
              f"ls -A {tmp_path}; cat {tmp_path}/out.pt; echo; exit $code")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 8, result.stderr
    assert "No space left on device" in result.stderr and "internal error" not in result.stderr
    assert result.stdout.split() == ["out.pt", "keep"]


def test_save_onto_a_full_disk_raises_an_output_error_in_the_api(tmp_path):
    module = rewrite(nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 4)), torch.randn(2, 64))
    code = ("import resource, signal, sys, torch\nfrom rewriter import load, save, OutputError\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nmodule = load(sys.argv[1])\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
            "try:\n    save(module, sys.argv[2])\nexcept OutputError as e:\n    print('OutputError', e)\n")
    save(module, tmp_path / "source.pt")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "source.pt"), str(tmp_path / "out.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.startswith("OutputError") and "File too large" in result.stdout, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.pt"]


# -- the explanation step on bad data ------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    return rewrite(model, torch.randn(2, 4)), np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)


@pytest.mark.parametrize("where", ["rows", "background"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_rows_are_refused_naming_them(small, where, value):
    module, rows = small
    bad = rows.copy()
    bad[[1, 4], 2] = value
    inputs, background = (bad, rows) if where == "rows" else (rows, bad)
    with pytest.raises(InputError, match=r"NaN or Inf in row\(s\) \[1, 4\]"):
        explain(module, inputs, background, progress=False)


@pytest.mark.parametrize("threshold", [float("nan"), -1.0, float("inf")])
def test_a_threshold_that_checks_nothing_is_refused(small, threshold):
    module, rows = small
    with pytest.raises(InputError, match="threshold"):
        explain(module, rows, rows, threshold=threshold, progress=False)


def test_the_command_refuses_nan_rows_and_a_nan_threshold(small, tmp_path):
    module, rows = small
    save(module, tmp_path / "model.pt")
    bad = rows.copy()
    bad[3, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "rows.npy", rows)
    result = _run("explain", str(tmp_path / "model.pt"), "--inputs", str(tmp_path / "bad.npy"), "--background",
                  str(tmp_path / "rows.npy"), "--out", str(tmp_path / "a.npy"))
    assert result.returncode == 3 and "row(s) [3]" in result.stderr and not (tmp_path / "a.npy").exists()
    result = _run("explain", str(tmp_path / "model.pt"), "--inputs", str(tmp_path / "rows.npy"), "--background",
                  str(tmp_path / "rows.npy"), "--out", str(tmp_path / "a.npy"), "--threshold", "nan")
    assert result.returncode == 2 and "finite number" in result.stderr


@pytest.mark.parametrize("dtype", [np.float16, np.float64, "bfloat16"])
def test_other_float_types_are_converted_with_a_note(small, dtype):
    from rewriter.explanation import run_explanation

    module, rows = small
    given = torch.from_numpy(rows).to(torch.bfloat16) if dtype == "bfloat16" else rows.astype(dtype)
    result = run_explanation(module, given, rows, progress=False)
    assert result.attributions[0].dtype == np.float32 and result.worst_error < 1e-4
    assert any("converted to float32" in note for note in result.notes)


def test_the_wrong_number_of_arrays_names_what_the_model_takes(small):
    module, rows = small
    with pytest.raises(InputError, match="2 inputs array\\(s\\) given; the model takes 1"):
        explain(module, (rows, rows), rows, progress=False)
    two = rewrite(_TwoInputs(), torch.randn(2, 4), torch.randn(2, 2))
    with pytest.raises(InputError, match="the model takes 2: a, b"):
        explain(two, rows, rows, progress=False)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, a, b):
        return torch.relu(self.a(a) + self.b(b))


def test_writing_attributions_past_the_file_size_limit_is_an_output_error(small, tmp_path):
    module, rows = small
    save(module, tmp_path / "model.pt")
    np.save(tmp_path / "rows.npy", np.repeat(rows, 700, axis=0))  # 4,200 rows: 200 KiB of attributions
    np.save(tmp_path / "background.npy", rows)
    result = subprocess.run([*CLI, "explain", str(tmp_path / "model.pt"), "--inputs", str(tmp_path / "rows.npy"),
                             "--background", str(tmp_path / "background.npy"), "--out", str(tmp_path / "a.npy"),
                             "--explainer", "captum", "--batch-size", "1024", "--quiet"],
                            capture_output=True, text=True, timeout=600, preexec_fn=_ignore_file_size_signal)
    assert result.returncode == 8 and "File too large" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["background.npy", "model.pt", "rows.npy"]
