"""A seeded mutation fuzzer over three small real models: a CNN, a transformer block, a GRU.

Each mutant is a byte-level or protobuf-level edit of an exported model: flipped bytes, a cut
file, op types swapped, inputs dropped, attribute types swapped, huge or negative dims,
initializers whose declared size lies, dangling names, duplicate outputs, cycles. Each goes
through the command (``rewriter.cli.main``, in this process to keep it fast) and must end
in a verified model that loads, or a typed error with its exit code: never an internal
error, a hang, a file left behind, or a memory peak above 2 GiB.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import random
import resource
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from rewriter import load
from rewriter.cli import main

MUTANTS_PER_MODEL = 250
SECONDS_PER_MUTANT = 60
OPS = ["Relu", "Sigmoid", "Add", "Mul", "MatMul", "Conv", "Gemm", "Softmax", "Transpose", "Reshape", "Concat",
       "MaxPool", "Identity", "Tanh", "Gather", "Slice", "LayerNormalization", "GRU", "Unknown"]


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1), nn.Conv2d(6, 8, 3), nn.ReLU())
        self.head = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TransformerBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


SEEDS = {"cnn": (CNN, (2, 3, 8, 8)), "transformer": (TransformerBlock, (2, 5, 8)), "gru": (GRUClassifier, (2, 5, 4))}


def exported(name: str) -> bytes:
    model_class, shape = SEEDS[name]
    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model_class().eval(), (torch.randn(*shape),), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    return buffer.getvalue()


# -- mutations -----------------------------------------------------------------------------------


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    changed = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        changed[rng.randrange(len(changed))] ^= 1 << rng.randrange(8)
    return bytes(changed)


def cut(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def swap_op(model: onnx.ModelProto, rng: random.Random) -> None:
    rng.choice(model.graph.node).op_type = rng.choice(OPS)


def drop_input(model: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice([n for n in model.graph.node if n.input] or list(model.graph.node))
    if node.input:
        del node.input[rng.randrange(len(node.input))]


def swap_attribute_type(model: onnx.ModelProto, rng: random.Random) -> None:
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return
    attr = rng.choice(rng.choice(nodes).attribute)
    if attr.type == onnx.AttributeProto.INTS:
        attr.type, attr.f = onnx.AttributeProto.FLOAT, 1.5
    elif attr.type == onnx.AttributeProto.INT:
        attr.type = onnx.AttributeProto.INTS
        attr.ints.extend([attr.i, -attr.i])
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.type, attr.i = onnx.AttributeProto.INT, -7
    else:
        attr.type = onnx.AttributeProto.STRING
        attr.s = b"nonsense"


def attribute_value(model: onnx.ModelProto, rng: random.Random) -> None:
    """A value the checker cannot judge: a window, an axis, a permutation entry, a flag."""
    nodes = [n for n in model.graph.node if any(a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)
                                                for a in n.attribute)]
    if not nodes:
        return
    attr = rng.choice([a for a in rng.choice(nodes).attribute
                       if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)])
    value = rng.choice([-3, -1, 0, 1, 2, 5, 40, 2**20])
    if attr.type == onnx.AttributeProto.INT:
        attr.i = value
    elif attr.ints:
        attr.ints[rng.randrange(len(attr.ints))] = value


def huge_or_negative_dim(model: onnx.ModelProto, rng: random.Random) -> None:
    value = rng.choice([-1, -100, 0, 2**31, 10**6, 2**40])
    if rng.random() < 0.5 and model.graph.initializer:
        tensor = rng.choice(model.graph.initializer)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = value
        return
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[rng.randrange(len(dims))].dim_value = value


def lying_initializer(model: onnx.ModelProto, rng: random.Random) -> None:
    tensor = rng.choice(list(model.graph.initializer))
    tensor.dims.append(rng.choice([2, 7, 1000]))


def dangling_name(model: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice([n for n in model.graph.node if n.input] or list(model.graph.node))
    if node.input:
        node.input[rng.randrange(len(node.input))] = "nowhere"


def duplicate_output(model: onnx.ModelProto, rng: random.Random) -> None:
    first, second = rng.sample(list(model.graph.node), 2)
    second.output[0] = first.output[0]


def cycle(model: onnx.ModelProto, rng: random.Random) -> None:
    nodes = list(model.graph.node)
    early, late = sorted(rng.sample(range(len(nodes)), 2))
    if nodes[early].input:
        nodes[early].input[0] = nodes[late].output[0]


def duplicate_graph_output(model: onnx.ModelProto, rng: random.Random) -> None:
    model.graph.output.append(model.graph.output[0])


PROTOBUF_EDITS = [swap_op, drop_input, swap_attribute_type, attribute_value, attribute_value, huge_or_negative_dim, lying_initializer, dangling_name,
                  duplicate_output, cycle, duplicate_graph_output]
BYTE_EDITS = [flip_bytes, cut]


def mutant(seed: bytes, rng: random.Random) -> tuple[str, bytes]:
    edits = []
    data = seed
    for _ in range(rng.choice([1, 1, 2])):
        if rng.random() < 0.25:
            edit = rng.choice(BYTE_EDITS)
            data = edit(data, rng)
        else:
            edit = rng.choice(PROTOBUF_EDITS)
            try:
                model = onnx.load_from_string(data)
            except Exception:  # an earlier byte edit broke the protobuf: keep the bytes
                continue
            edit(model, rng)
            data = model.SerializeToString()
        edits.append(edit.__name__)
    return "+".join(edits) or "none", data


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    def expire(signum, frame):
        raise Hang(f"no answer in {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# Exit codes a mutant may end with: verified (0) or a typed error. Never 1 (internal error).
TYPED = {0, 3, 4, 5, 6, 7, 8}


def fuzz(name: str, folder: Path) -> dict:
    """Run every mutant of ``name`` through the command; the outcomes and what went wrong."""
    seed = exported(name)
    rng = random.Random(f"shaprewrite-{name}")
    outcomes: collections.Counter = collections.Counter()
    failures = []
    for index in range(MUTANTS_PER_MODEL):
        edits, data = mutant(seed, rng)
        case = folder / f"m{index}"
        case.mkdir()
        source, out = case / "model.onnx", case / "out.pt"
        source.write_bytes(data)
        stderr = io.StringIO()
        try:
            with deadline(SECONDS_PER_MUTANT), warnings.catch_warnings(), contextlib.redirect_stderr(stderr):
                warnings.simplefilter("ignore")
                code = main([str(source), str(out), "--quiet", "--dim", "batch=2"])
        except Hang as exc:
            failures.append(f"#{index} {edits}: {exc}")
            continue
        outcomes[code] += 1
        said, left = stderr.getvalue(), sorted(p.name for p in case.iterdir())
        if code not in TYPED or "Traceback" in said or "internal error" in said:
            failures.append(f"#{index} {edits}: exit {code}: {said.strip()[:300]}")
        elif code == 0:
            load(out)  # verified and written whole
        elif left != ["model.onnx"]:
            failures.append(f"#{index} {edits}: exit {code} left {left}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"outcomes": {str(k): v for k, v in sorted(outcomes.items())}, "failures": failures, "peak_gib": peak}


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_mutant_ends_verified_or_in_a_typed_error(name, tmp_path, capsys):
    """In a process of its own, so the memory peak is the fuzzer's alone."""
    done = subprocess.run([sys.executable, __file__, name, str(tmp_path)], capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    with capsys.disabled():  # the counts per outcome, for whoever runs this with -s
        print(f"\n{name}: {MUTANTS_PER_MODEL} mutants, exit codes {found['outcomes']}, peak {found['peak_gib']:.2f} GiB")
    assert found["failures"] == []
    assert found["peak_gib"] < 2.0


if __name__ == "__main__":
    print(json.dumps(fuzz(sys.argv[1], Path(sys.argv[2]))))
