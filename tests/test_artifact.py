"""The saved model is data: ``rewriter.load`` rebuilds it without running anything from the
file, and refuses what is not a well-formed artifact, also when the file was made to run
code."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
import torch.fx.graph_module
from architectures import ResNetStyle, randomize_batchnorm
from torch import nn

from rewriter import InputError, OutputError, load, rewrite, save
from rewriter.artifact import FORMAT, VERSION, digest


@pytest.fixture(scope="module")
def rewritten():
    model = randomize_batchnorm(ResNetStyle())
    return rewrite(model, torch.randn(3, 3, 16, 16))


def test_the_artifact_loads_as_plain_data_with_torch(rewritten, tmp_path):
    path = tmp_path / "model.pt"
    save(rewritten, path)
    document = torch.load(path, weights_only=True)
    assert document["format"] == FORMAT and document["version"] == VERSION
    assert isinstance(document["graph"], bytes) and all(isinstance(t, torch.Tensor) for t in document["tensors"].values())


def test_load_gives_the_same_module(rewritten, tmp_path):
    path = tmp_path / "model.pt"
    save(rewritten, path)
    loaded = load(path)
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(loaded(x), rewritten(x))
    assert type(loaded).__name__ == type(rewritten).__name__
    assert loaded.code == rewritten.code


def test_weights_changed_after_the_rewrite_are_kept(rewritten, tmp_path):
    """A rewritten model can be fine-tuned; its artifact holds the new weights."""
    tuned = rewrite(rewritten, torch.randn(3, 3, 16, 16))
    with torch.no_grad():
        for p in tuned.parameters():
            p.mul_(1.5)
    path = tmp_path / "tuned.pt"
    save(tuned, path)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(load(path)(x), tuned(x))
    assert not torch.equal(load(path)(x), rewritten(x))


def test_save_refuses_to_overwrite_when_asked(rewritten, tmp_path):
    path = tmp_path / "model.pt"
    save(rewritten, path)
    with pytest.raises(OutputError, match="already exists"):
        save(rewritten, path, overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_plain_module_cannot_be_saved_as_an_artifact(tmp_path):
    with pytest.raises(InputError, match="does not carry the graph"):
        save(nn.Linear(2, 2), tmp_path / "x.pt")


# -- hostile files ---------------------------------------------------------------------


class Payload:
    """A classic pickle payload: unpickling calls ``Path(marker).touch()``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


class EditedGraphModule:
    """What a pickled GraphModule whose code text was edited looks like: torch.fx's own
    rebuild function, with a body whose forward source carries a payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        rebuild, (body, imports) = torch.fx.symbolic_trace(nn.Identity()).__reduce__()
        body = {**body, "_code": ("\ndef forward(self, x):\n"
                                  f"    __import__('pathlib').Path({str(self.marker)!r}).touch()\n"
                                  "    return x\n")}
        return rebuild, (body, imports)


def _hostile_files(tmp_path: Path, rewritten) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, phrase the error must contain)."""
    marker = tmp_path / "pwned"

    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    genuine = torch.load(_write(tmp_path / "genuine.pt", rewritten), weights_only=True)

    def variant(**changes) -> bytes:
        """A file changed by someone who also writes a matching digest: the checks behind the
        digest must hold on their own."""
        document = {**genuine, **changes}
        return saved({**document, "digest": digest(document)})

    return {
        "reduce_payload": (saved(Payload(marker)), "cannot be read as data only"),
        "edited_graph_module": (saved(EditedGraphModule(marker)), "cannot be read as data only"),
        "pickled_module": (saved(rewritten), "cannot be read as data only"),
        "plain_checkpoint": (saved({"weight": torch.ones(2)}), "not a shaprewrite artifact"),
        "future_version": (variant(version=99), "format version 99"),
        "graph_not_onnx": (variant(graph=b"\xff\xfe not protobuf"), "ONNX"),
        "missing_initializer": (variant(tensors={}), "initializers"),
        "wrong_initializer_shape": (variant(tensors={k: v.reshape(-1)[:1] for k, v in genuine["tensors"].items()}),
                                    "declared type and shape"),
        "wrong_state": (variant(state={"nonsense": torch.ones(1)}), "do not fit its graph"),
        "bad_class_name": (variant(class_name="import os"), "malformed"),
        "truncated": (saved(genuine)[:300], "not a shaprewrite artifact"),
        "not_a_zip": (b"hello, this is text", "not a shaprewrite artifact"),
    }


def _write(path: Path, module) -> Path:
    save(module, path)
    return path


@pytest.mark.parametrize("name", ["reduce_payload", "edited_graph_module", "pickled_module", "plain_checkpoint",
                                  "future_version", "graph_not_onnx", "missing_initializer",
                                  "wrong_initializer_shape", "wrong_state", "bad_class_name", "truncated",
                                  "not_a_zip"])
def test_hostile_or_foreign_files_are_refused_without_running_them(name, rewritten, tmp_path):
    data, phrase = _hostile_files(tmp_path, rewritten)[name]
    path = tmp_path / f"{name}.pt"
    path.write_bytes(data)
    with pytest.raises(InputError, match=phrase):
        load(path)
    assert not (tmp_path / "pwned").exists()


def test_a_genuine_pickle_still_runs_its_code_under_torch_load(rewritten, tmp_path):
    """Why the artifact exists: torch.load(weights_only=False) of the edited module runs it."""
    marker = tmp_path / "pwned"
    path = tmp_path / "edited.pt"
    torch.save(EditedGraphModule(marker), path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_missing_file_and_a_directory_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="not a file"):
        load(tmp_path)


def test_the_artifact_is_a_zip_of_data_records(rewritten, tmp_path):
    """What torch.save writes for the artifact: pickled data and tensor storages, no code."""
    path = _write(tmp_path / "model.pt", rewritten)
    with zipfile.ZipFile(path) as archive:
        pickled = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    assert b"torch.fx" not in pickled and b"GraphModule" not in pickled
    assert os.path.getsize(path) > 0


def test_a_model_checked_with_shap_saves_and_loads(tmp_path):
    """SHAP leaves each leaf's last activations as parameters below a wrapper; the self-check
    (which wraps a model of several outputs) must not leave them in the state it saves."""
    from architectures import MultiOutputNet

    checked = rewrite(MultiOutputNet(), torch.randn(3, 6), check=True)
    save(checked, tmp_path / "model.pt")
    assert set(load(tmp_path / "model.pt").state_dict()) == set(checked.state_dict())
