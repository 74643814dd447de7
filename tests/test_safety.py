"""Safe to run anywhere: nothing written outside the output path, bounded memory on hostile
files, rewrites in threads and processes at once, and signals at any moment."""

from __future__ import annotations

import gc
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from architectures import (
    FunctionalMLP,
    ResNetStyle,
    TransformerEncoderStyle,
    TwoInputNet,
    randomize_batchnorm,
)
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import keras_multi_head_attention

from rewriter import InputError, load, rewrite
from rewriter.concurrency import collector_paused
from rewriter.files import write_atomically

CLI = [sys.executable, "-m", "rewriter.cli"]
F32 = TensorProto.FLOAT


def _saved(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, path)
    return path


# -- nothing written outside the output path ------------------------------------------------


def test_a_rewrite_writes_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference used to save the model as
    sym_shape_infer_temp.onnx (and a .data file) in the working directory, following a
    symlink planted under that name."""
    work, outside = tmp_path / "work", tmp_path / "precious.txt"
    work.mkdir()
    outside.write_text("keep me")
    (work / "sym_shape_infer_temp.onnx").symlink_to(outside)
    monkeypatch.chdir(work)
    rewrite(keras_multi_head_attention())
    rewrite(TransformerEncoderStyle().eval(), torch.randn(2, 6, 4), exporter="torchscript")
    assert outside.read_text() == "keep me"
    assert sorted(p.name for p in work.iterdir()) == ["sym_shape_infer_temp.onnx"]


def test_the_cli_writes_only_its_output(tmp_path):
    source = _saved(keras_multi_head_attention(), tmp_path / "mha.onnx")
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out" / "mha.pt"
    out.parent.mkdir()
    result = subprocess.run([*CLI, str(source), str(out), "--quiet"], cwd=work, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert list(work.iterdir()) == [] and [p.name for p in out.parent.iterdir()] == ["mha.pt"]


# -- bounded memory on hostile files ---------------------------------------------------------


def _bomb(kind: str, op: str = "ConstantOfShape", lie: bool = False) -> onnx.ModelProto:
    """A graph that asks for a huge tensor: ``op`` (ConstantOfShape, or an Expand or a Tile of
    a one-element constant) to a literal shape, a shape computed from a float constant, or
    one from the batch times a constant. ``lie``: the file's value_info declares it one
    element."""
    inits, nodes = [numpy_helper.from_array(np.ones([1, 1, 1], np.float32), "one")], []
    if kind == "literal":
        inits.append(numpy_helper.from_array(np.array([750, 1000, 1000], np.int64), "shape"))
    elif kind == "computed":
        inits.append(numpy_helper.from_array(np.array([40000.0, 40000.0, 4.0], np.float32), "float_shape"))
        nodes.append(helper.make_node("Cast", ["float_shape"], ["shape"], to=TensorProto.INT64, name="cast"))
    else:
        inits.append(numpy_helper.from_array(np.array([40000, 40000], np.int64), "rest"))
        nodes += [helper.make_node("Shape", ["x"], ["full"], start=0, end=1, name="batch_size"),
                  helper.make_node("Concat", ["full", "rest"], ["shape"], axis=0, name="shape")]
    if op == "ConstantOfShape":
        nodes.append(helper.make_node(op, ["shape"], ["big"], value=helper.make_tensor("v", F32, [1], [1.0]), name="bomb"))
    else:
        nodes.append(helper.make_node(op, ["one", "shape"], ["big"], name="bomb"))
    nodes += [helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0, name="total"),
              helper.make_node("Add", ["x", "total"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("x", F32, ["N", 2])],
                              [helper.make_tensor_value_info("y", F32, ["N", 2])], inits,
                              value_info=[helper.make_tensor_value_info("big", F32, [1, 1, 1])] if lie else [])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


BOMBS = [("literal", "ConstantOfShape", False), ("computed", "ConstantOfShape", False),
         ("batch_times", "ConstantOfShape", False), ("literal", "Expand", False), ("computed", "Tile", False),
         ("literal", "ConstantOfShape", True), ("computed", "Expand", True)]


@pytest.mark.parametrize("kind,op,lie", BOMBS)
def test_a_bomb_is_refused_before_anything_allocates_it(kind, op, lie):
    with pytest.raises(InputError, match="GiB allowed") as caught:
        rewrite(_bomb(kind, op, lie), dims={"N": 2})
    assert caught.value.node == "bomb" and caught.value.op_type == op


def test_a_constant_bomb_is_refused_under_a_two_gib_memory_limit(tmp_path):
    """The CLI, its address space capped at 2 GiB, refuses a 209-byte file asking for 2.8 GiB
    (exit 3, a clear message), where allocating it would fail with MemoryError."""
    source = _saved(_bomb("literal"), tmp_path / "bomb.onnx")
    limit = 2 * 2**30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run([*CLI, str(source), str(tmp_path / "out.pt")], preexec_fn=cap, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    assert "2.8 GiB" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.pt").exists()


# Runs the CLI as its child and prints the child's peak resident memory (KiB) last.
_PEAK_OF_CHILD = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                  "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


@pytest.mark.parametrize("kind,op,lie", [("literal", "Expand", False), ("computed", "Tile", False),
                                         ("literal", "ConstantOfShape", True)])
def test_a_bomb_never_takes_its_memory(tmp_path, kind, op, lie):
    """Without a cap, what refusing the file costs: constant folding computed a small
    constant expanded or tiled to 2.8 GiB before checking its size, and the size check
    believed a file that declared the value one element (the importer then allocated it)."""
    source = _saved(_bomb(kind, op, lie), tmp_path / "bomb.onnx")
    result = subprocess.run([sys.executable, "-c", _PEAK_OF_CHILD, *CLI, str(source), str(tmp_path / "out.pt")],
                            capture_output=True, text=True, timeout=300)
    code, peak_kib = map(int, result.stdout.split()[-2:])
    assert code == 3 and "GiB allowed" in result.stderr, result.stderr
    assert peak_kib < 1.5 * 2**20, f"peak {peak_kib / 2**20:.1f} GiB"


def test_the_limit_can_be_raised_for_a_model_that_needs_it():
    small = _bomb("batch_times")
    with pytest.raises(InputError):
        rewrite(small, dims={"N": 2}, max_tensor_bytes=2**20)


# -- concurrency -----------------------------------------------------------------------------


def _jobs():
    torch.manual_seed(0)
    return [
        (randomize_batchnorm(ResNetStyle()), (torch.randn(2, 3, 16, 16),)),
        (FunctionalMLP().eval(), (torch.randn(3, 10),)),
        (TransformerEncoderStyle().eval(), (torch.randn(2, 6, 4),)),
        (TwoInputNet().eval(), (torch.randn(3, 1, 6, 6), torch.randn(3, 6))),
    ]


def test_the_collector_is_off_while_any_thread_converts_and_as_it_was_after():
    entered, leave = threading.Event(), threading.Event()

    def convert() -> None:
        with collector_paused():
            entered.set()
            leave.wait(30)

    other = threading.Thread(target=convert)
    other.start()
    entered.wait(30)
    with collector_paused(), collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread is still inside
    leave.set()
    other.join(30)
    assert gc.isenabled()
    gc.disable()  # switched off by the user: it stays off
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_export_waits_for_runs_of_modules_and_holds_new_ones_back():
    """torch's tracer patches nn.Module.__call__ for the whole process while it exports: a
    module called from another thread then fails inside the tracer ("Unexpected key")."""
    from rewriter.concurrency import GATE

    events: list[str] = []
    exporting = threading.Event()

    def export() -> None:
        with GATE.export():
            events.append("export starts")
            exporting.set()
            time.sleep(0.2)
            events.append("export ends")

    def late_run() -> None:
        exporting.wait()
        with GATE.run(), GATE.run():  # nested in one thread: no wait of its own
            events.append("late run")

    with GATE.run():
        exporter = threading.Thread(target=export)
        exporter.start()
        time.sleep(0.2)
        events.append("first run ends")
    late = threading.Thread(target=late_run)
    late.start()
    exporter.join()
    late.join()
    assert events == ["first run ends", "export starts", "export ends", "late run"]


def test_four_threads_at_once_give_what_one_after_the_other_gives():
    jobs = _jobs()
    alone = [rewrite(model, *inputs, report=True) for model, inputs in jobs]
    stdout, stderr = sys.stdout, sys.stderr
    results: list = [None] * len(jobs)
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = rewrite(jobs[i][0], *jobs[i][1], report=True)
        except Exception as exc:  # collected, the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sys.stdout is stdout and sys.stderr is stderr
    for (_, inputs), (together, together_report), (single, single_report) in zip(jobs, results, alone):
        assert together_report.exporter == single_report.exporter
        assert together.code == single.code
        with torch.no_grad():
            torch.testing.assert_close(together(*inputs), single(*inputs), rtol=0, atol=0)


def test_two_processes_writing_one_output_one_wins_the_other_exits_8(tmp_path):
    source = _saved(keras_multi_head_attention(), tmp_path / "mha.onnx")
    out = tmp_path / "mha.pt"
    runs = [subprocess.Popen([*CLI, str(source), str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in runs)
    for p in runs:
        p.stderr.close()
    assert codes == [0, 8]
    load(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- signals ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory) -> Path:
    """An ONNX file whose rewrite takes a few seconds."""
    path = tmp_path_factory.mktemp("slow") / "resnet.onnx"
    model = randomize_batchnorm(ResNetStyle(width=16))
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(path))
    return path


@pytest.mark.parametrize("sig,after", [(signal.SIGTERM, 1.0), (signal.SIGTERM, 3.0), (signal.SIGINT, 2.0),
                                       (signal.SIGTERM, 5.0)])
def test_a_signal_at_any_moment_leaves_no_partial_file(sig, after, slow_source, tmp_path):
    out = tmp_path / "model.pt"
    process = subprocess.Popen([*CLI, str(slow_source), str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    process.send_signal(sig)
    code = process.wait(timeout=300)
    stderr = process.stderr.read()
    process.stderr.close()
    assert code in (0, 130 if sig == signal.SIGINT else 143), stderr
    assert "Traceback" not in stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != "model.pt"] == []
    if code == 0:
        load(out)  # finished before the signal: complete
    else:
        assert not out.exists()


def test_an_interrupt_while_writing_leaves_neither_output_nor_temporary_file(tmp_path):
    out = tmp_path / "model.pt"

    def interrupted(handle) -> None:
        handle.write(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(interrupted, out)
    assert list(tmp_path.iterdir()) == []
    assert os.path.exists(tmp_path)


@pytest.mark.parametrize("carrier", [ImportError("initialization failed"),
                                     InputError("the source model failed on check inputs")])
def test_a_signal_a_library_turns_into_an_error_of_its_own_still_ends_the_run_as_signalled(
        carrier, monkeypatch, tmp_path, capsys):
    """onnxruntime's import, hit by our SIGTERM handler's exception, raises "initialization
    failed", which verification reported as the model's fault (exit 3): seen in CI-like runs."""
    import rewriter.api
    from rewriter.cli import main

    def rewrite_hit_by_a_signal(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException:  # what a library that catches everything does with it
            raise carrier from None

    monkeypatch.setattr(rewriter.api, "rewrite", rewrite_hit_by_a_signal)
    source = tmp_path / "in.onnx"
    source.write_bytes(b"")
    before = signal.getsignal(signal.SIGTERM)
    assert main([str(source), str(tmp_path / "out.pt"), "--quiet"]) == 143
    assert "terminated" in capsys.readouterr().err and not (tmp_path / "out.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_while_the_engines_import_is_recorded_and_raised_after_it():
    """Raised into torch's or onnxruntime's initialisation, our exception aborted the process
    from C++ ("terminate called ... _Terminated"): the CLI imports them with signals recorded."""
    from rewriter import cli

    cli._received.clear()
    cli._deferring.set()
    try:
        cli._raise_signalled(signal.SIGTERM, None)  # as if inside the import: must not raise
    finally:
        cli._deferring.clear()
    with pytest.raises(cli._Terminated):
        cli._import_engines()
    cli._received.clear()
