"""A saved model that was changed after it was written is refused, whatever was changed and
however: bytes flipped on disk, the stored graph edited, weights scaled or reshaped, a bomb
added to the graph, sizes that lie about the file. Each is an ``InputError`` saying what is
wrong, with bounded memory, and nothing from the file runs.

Changes made with a matching digest written back (someone who knows the format) are caught by
the checks behind the digest: the type and shape of every tensor, the size guard, and the
check batch, whose outputs must be the ones saved."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from rewriter import InputError, load, rewrite, save
from rewriter.artifact import digest


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        hidden = torch.relu(self.a(x))
        return self.b(hidden + hidden.mean(1, keepdim=True))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tamper") / "model.pt"
    save(rewrite(Net().eval(), torch.randn(4, 6)), path)
    return path


def _document(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _write(document: dict, path: Path, *, sign: bool) -> Path:
    if sign:
        document = {**document, "digest": digest(document)}
    torch.save(document, path)
    return path


def _edit_graph(document: dict, edit) -> dict:
    model = onnx.load_from_string(document["graph"])
    edit(model.graph)
    return {**document, "graph": model.SerializeToString()}


def _replace_op(old: str, new: str):
    def edit(graph):
        node = next(n for n in graph.node if n.op_type == old)
        node.op_type = new
    return edit


def _add_bomb(graph):
    shape = helper.make_tensor("bomb_shape", onnx.TensorProto.INT64, [3], [750, 1000, 1000])
    graph.node.insert(0, helper.make_node("ConstantOfShape", ["bomb_shape_value"], ["bomb_values"], name="bomb",
                                          value=helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])))
    graph.node.insert(0, helper.make_node("Constant", [], ["bomb_shape_value"], name="bomb_shape", value=shape))
    graph.node.insert(2, helper.make_node("ReduceSum", ["bomb_values"], ["bomb_total"], name="bomb_sum", keepdims=0))
    output = graph.output[0].name
    producer = next(n for n in graph.node if output in n.output)
    producer.output[0] = "before_bomb"
    graph.node.append(helper.make_node("Add", ["before_bomb", "bomb_total"], [output], name="bomb_add"))


def _scaled(tensors: dict, factor: float) -> dict:
    return {k: v * factor if v.is_floating_point() else v for k, v in tensors.items()}


def _flip_record_byte(path: Path, out: Path, *, fix_crc: bool) -> Path:
    """Flip one byte inside the largest tensor record: in place (the zip's CRC no longer holds),
    or in a zip written again around it (the CRC matches the changed bytes)."""
    with zipfile.ZipFile(path) as archive:
        records = {info.filename: archive.read(info) for info in archive.infolist()}
        largest = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    if fix_crc:
        changed = bytearray(records[largest.filename])
        changed[len(changed) // 2] ^= 0x40
        records[largest.filename] = bytes(changed)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name, data in records.items():
                archive.writestr(name, data)
        out.write_bytes(buffer.getvalue())
        return out
    data = bytearray(path.read_bytes())
    offset = data.find(records[largest.filename][:64])
    data[offset + largest.file_size // 2] ^= 0x40
    out.write_bytes(bytes(data))
    return out


def _lying_sizes(path: Path, out: Path) -> Path:
    """The central directory entry of the largest record declares 4 GiB of data."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        name = max(archive.infolist(), key=lambda i: i.file_size).filename.encode()
    at = data.find(b"PK\x01\x02")
    while data[at + 46:at + 46 + len(name)] != name:
        at = data.find(b"PK\x01\x02", at + 4)
    data[at + 24:at + 28] = (2**32 - 1).to_bytes(4, "little")  # its uncompressed size
    out.write_bytes(bytes(data))
    return out


CASES = {
    # name: (how to make the file, phrase the error must contain)
    "byte_flipped_on_disk": (lambda p, o: _flip_record_byte(p, o, fix_crc=False), "does not match its checksum"),
    "byte_flipped_crc_rewritten": (lambda p, o: _flip_record_byte(p, o, fix_crc=True), "does not match its digest"),
    "relu_to_sigmoid": (lambda p, o: _write(_edit_graph(_document(p), _replace_op("Relu", "Sigmoid")), o, sign=False),
                        "does not match its digest"),
    "relu_to_sigmoid_signed": (lambda p, o: _write(_edit_graph(_document(p), _replace_op("Relu", "Sigmoid")), o,
                                                   sign=True), "does not compute what it computed"),
    "add_to_sub": (lambda p, o: _write(_edit_graph(_document(p), _replace_op("Add", "Sub")), o, sign=False),
                   "does not match its digest"),
    "add_to_sub_signed": (lambda p, o: _write(_edit_graph(_document(p), _replace_op("Add", "Sub")), o, sign=True),
                          "does not compute what it computed"),
    "state_scaled": (lambda p, o: _write({**(d := _document(p)), "state": _scaled(d["state"], 1.5)}, o, sign=False),
                     "does not match its digest"),
    "state_scaled_signed": (lambda p, o: _write({**(d := _document(p)), "state": _scaled(d["state"], 1.5)}, o,
                                                sign=True), "does not compute what it computed"),
    "initializers_scaled_signed": (lambda p, o: _write({**(d := _document(p)), "tensors": _scaled(d["tensors"], 2.0),
                                                        "state": _scaled(d["state"], 2.0)}, o, sign=True),
                                   "does not compute what it computed"),
    "state_of_another_shape_signed": (lambda p, o: _write({**(d := _document(p)), "state": {
        k: torch.zeros(v.numel() + 1) if v.dim() == 2 else v for k, v in d["state"].items()}}, o, sign=True),
        "do not fit its graph"),
    "check_batch_changed": (lambda p, o: _write({**(d := _document(p)), "check": {
        **d["check"], "outputs": [t + 1 for t in d["check"]["outputs"]]}}, o, sign=False), "does not match its digest"),
    "bomb_signed": (lambda p, o: _write(_edit_graph(_document(p), _add_bomb), o, sign=True), "GiB allowed"),
    "sizes_lie": (_lying_sizes, "bytes of records"),
    "digest_removed": (lambda p, o: torch.save({k: v for k, v in _document(p).items() if k != "digest"}, o) or o,
                       "malformed"),
    "old_format_without_digest": (lambda p, o: _write({**_document(p), "version": 1}, o, sign=True),
                                  "format version 1"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_changed_artifact_is_refused(name, saved, tmp_path):
    make, phrase = CASES[name]
    changed = make(saved, tmp_path / f"{name}.pt")
    with pytest.raises(InputError, match=phrase):
        load(changed)


def test_the_genuine_file_loads_and_computes_what_was_saved(saved):
    module = load(saved)
    document = _document(saved)
    out = module(*document["check"]["inputs"])
    torch.testing.assert_close(out, document["check"]["outputs"][0])


def test_a_bomb_in_a_signed_artifact_never_takes_its_memory(saved, tmp_path):
    """The bomb is refused before the importer folds it: the child's peak stays far below 3 GiB."""
    bomb = CASES["bomb_signed"][0](saved, tmp_path / "bomb.pt")
    code = ("import resource, sys\nfrom rewriter import load, InputError\n"
            "try:\n    load(sys.argv[1])\nexcept InputError as e:\n    print('refused', e)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=300)
    assert "refused" in result.stdout and "GiB allowed" in result.stdout, result.stdout + result.stderr
    assert int(result.stdout.split()[-1]) < 1.5 * 2**20


def test_the_command_prints_a_wrong_shape_as_an_input_error(saved, tmp_path):
    import numpy as np

    changed = CASES["state_of_another_shape_signed"][0](saved, tmp_path / "shape.pt")
    np.save(tmp_path / "x.npy", np.zeros((2, 6), np.float32))
    result = subprocess.run([sys.executable, "-m", "rewriter", "explain", str(changed), "--inputs",
                             str(tmp_path / "x.npy"), "--background", str(tmp_path / "x.npy"), "--out",
                             str(tmp_path / "a.npy")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    assert "do not fit its graph" in result.stderr and "internal error" not in result.stderr
    assert result.stderr.count("\n") == 1
