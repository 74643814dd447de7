"""The cost of a rewrite against the export a user would run anyway, at real model sizes.

For ResNet-50, MobileNetV2 (torchvision's layouts), a ViT-B/16-sized and a BERT-base-sized
encoder (random weights, batch 2), side by side in one process: the median wall time of
``torch.onnx.export(model, (x,), dynamo=True)`` with its defaults, and of ``rewrite(model, x)``
with each stage's share. Then the time of everything after the export (passes, import,
verify) on ONNX graphs of 100 to 10,000 nodes, peak memory in fresh processes, the cost of
the saved artifact's checks (its SHA-256 digest and check batch) against a plain
``torch.save``/``torch.load`` of the same weights, and the profile of a ResNet-50 rewrite
(``--profile``).

Goals (printed as ok / MISSED): rewrite <= 1.25x the export; passes + import + verify of a
1,000-node graph under 1 s and linear in size; peak memory of a rewrite <= 2x the
parameters' bytes + the export's own peak; saving plus loading an artifact (with its checks)
<= a quarter of the rewrite it saves redoing. Results go under "speed" in results.json.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from architectures import ResNet, ViT, randomize_batchnorm  # noqa: E402
from common import ok, peak_rss_mb, quiet, store  # noqa: E402

from rewriter import rewrite  # noqa: E402


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Full(nn.Module):
    """torchvision's MobileNetV2 at width 1.0: 3.5 M parameters."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                                                 nn.ReLU6(inplace=True))]
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class BertBase(nn.Module):
    """BERT-base's encoder (12 post-norm layers, 768 wide, 12 heads, GELU MLP of 3072) on
    embeddings, with BERT's tanh pooler and a classifier on the first token."""

    def __init__(self, labels: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
        self.pooler = nn.Linear(768, 768)
        self.classifier = nn.Linear(768, labels)

    def forward(self, embeddings):
        return self.classifier(torch.tanh(self.pooler(self.encoder(embeddings)[:, 0])))


MODELS = {
    "resnet50": (lambda: randomize_batchnorm(ResNet(50, width=64, num_classes=1000)), (3, 224, 224)),
    "mobilenet_v2": (lambda: randomize_batchnorm(MobileNetV2Full()), (3, 224, 224)),
    "vit_b16": (lambda: ViT(image=224, patch=16, dim=768, depth=12, heads=12, mlp=3072, num_classes=1000),
                (3, 224, 224)),
    "bert_base": (lambda: BertBase(), (128, 768)),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    make, shape = MODELS[name]
    torch.manual_seed(0)
    return make().eval(), torch.randn(2, *shape)


def user_export(model: nn.Module, x: torch.Tensor) -> None:
    """What a user runs anyway: the dynamo exporter with its defaults."""
    with quiet():
        torch.onnx.export(model, (x,), dynamo=True)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compare(name: str, runs: int) -> dict:
    model, x = build(name)
    user_export(model, x)  # warm: the first export in a process pays for imports and caches
    exports, totals, stages = [], [], {}
    for _ in range(runs):
        exports.append(timed(lambda: user_export(model, x)))
        started = time.perf_counter()
        with quiet():
            _, report = rewrite(model, x, report=True)
        totals.append(time.perf_counter() - started)
        for stage, seconds in report.timings.items():
            stages.setdefault(stage, []).append(seconds)
    export, total = statistics.median(exports), statistics.median(totals)
    shares = {stage: statistics.median(v) for stage, v in stages.items()}
    shares["outside stages"] = total - sum(shares.values())
    return {"export": export, "rewrite": total, "ratio": total / export, "stages": shares,
            "params_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20}


def artifact(name: str, runs: int, folder: Path) -> dict:
    """Median seconds to save and load the rewritten model as an artifact, the digest's share
    of each, and a plain ``torch.save`` and weights-only ``torch.load`` of its state dict."""
    from rewriter import artifact as store_

    model, x = build(name)
    with quiet():
        module = rewrite(model, x)
    path, plain = folder / f"{name}.pt", folder / f"{name}.state.pt"
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        times.setdefault("save", []).append(timed(lambda: store_.save(module, path)))
        times.setdefault("load", []).append(timed(lambda: store_.load(path)))
        times.setdefault("digest", []).append(timed(functools.partial(store_.digest, store_._document(module))))
        times.setdefault("plain save", []).append(timed(lambda: torch.save(module.state_dict(), plain)))
        times.setdefault("plain load", []).append(timed(lambda: torch.load(plain, weights_only=True)))
    result = {k: statistics.median(v) for k, v in times.items()}
    result["mb"] = path.stat().st_size / 2**20
    result["over plain"] = (result["save"] + result["load"]) / (result["plain save"] + result["plain load"])
    return result


def block_stack(nodes: int, width: int = 32) -> bytes:
    """An ONNX MLP of ``nodes`` nodes: blocks of MatMul, Add, Tanh, Add. The weights are
    contractive, so outputs stay finite and rounding does not grow with depth."""
    rng = np.random.default_rng(0)
    inits, graph_nodes, x = [], [], "x"
    for i in range(nodes // 4):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) * 0.5 / width**0.5).astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, f"b{i}")
        inits += [w, b]
        graph_nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                        helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                        helper.make_node("Tanh", [f"a{i}"], [f"r{i}"]),
                        helper.make_node("Add", [f"r{i}", f"b{i}"], [f"h{i}"])]
        x = f"h{i}"
    graph = helper.make_graph(graph_nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def scaling(sizes: list[int], runs: int = 5) -> dict:
    """Per graph size, the median over ``runs`` of the whole rewrite and of what the goal
    counts: passes, import and verification (the file read and checked before is not)."""
    results = {}
    for nodes in sizes:
        source = block_stack(nodes)
        totals, stages = [], []
        with quiet():
            rewrite(source, dims={"n": 2}, atol=1e-2)
            for _ in range(runs):
                started = time.perf_counter()
                _, report = rewrite(source, dims={"n": 2}, atol=1e-2, report=True)
                totals.append(time.perf_counter() - started)
                stages.append(sum(report.timings[s] for s in ("passes", "import", "verify")))
        seconds = statistics.median(stages)
        results[nodes] = {"seconds": seconds, "ms_per_node": 1000 * seconds / nodes, "whole": statistics.median(totals)}
    return results


def peak_memory(name: str, what: str) -> float:
    """Peak RSS of a fresh process that builds the model and runs the export or the rewrite."""
    model, x = build(name)
    with quiet():
        if what == "export":
            torch.onnx.export(model, (x,), dynamo=True)
        else:
            rewrite(model, x)
    return peak_rss_mb()


def profile(name: str, top: int = 10) -> str:
    model, x = build(name)
    user_export(model, x)
    profiler = cProfile.Profile()
    with quiet():
        profiler.runcall(rewrite, model, x)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--sizes", nargs="*", type=int, default=[100, 1000, 3000, 10000])
    parser.add_argument("--profile", action="store_true", help="print the profile of a ResNet-50 rewrite")
    parser.add_argument("--memory-of", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(peak_memory(*args.memory_of))
        return 0
    if args.profile:
        print(profile("resnet50"))
        return 0
    results: dict = {"torch": torch.__version__, "compare": {}, "scaling": {}, "memory": {}}

    print(f"{'model':<14}{'export':>9}{'rewrite':>9}{'ratio':>7}   stage shares of the rewrite")
    for name in args.models:
        r = compare(name, args.runs)
        results["compare"][name] = r
        shares = ", ".join(f"{k} {v:.2f}s" for k, v in r["stages"].items())
        print(f"{name:<14}{r['export']:>8.2f}s{r['rewrite']:>8.2f}s{r['ratio']:>7.2f}   {shares}  "
              f"{ok(r['ratio'] <= 1.25)}")

    print(f"\n{'nodes':>7}{'passes+import+verify':>22}{'ms/node':>9}{'whole':>8}")
    results["scaling"] = scaling(args.sizes)
    for nodes, r in results["scaling"].items():
        print(f"{nodes:>7}{r['seconds']:>21.2f}s{r['ms_per_node']:>9.3f}{r['whole']:>7.2f}s" +
              (f"  {ok(r['seconds'] < 1)}" if nodes == 1000 else ""))

    print(f"\n{'model':<14}{'params':>9}{'export peak':>13}{'rewrite peak':>14}{'extra/params':>14}")
    for name in args.models:
        peaks = {what: float(subprocess.run([sys.executable, __file__, "--memory-of", name, what], check=True,
                                            capture_output=True, text=True).stdout.split()[-1])
                 for what in ("export", "rewrite")}
        params = results["compare"][name]["params_mb"]
        extra = (peaks["rewrite"] - peaks["export"]) / params
        results["memory"][name] = {**peaks, "params_mb": params, "extra_over_params": extra}
        print(f"{name:<14}{params:>7.0f}MB{peaks['export']:>11.0f}MB{peaks['rewrite']:>12.0f}MB{extra:>14.2f}  "
              f"{ok(extra <= 2)}")

    print(f"\n{'model':<14}{'file':>8}{'save':>8}{'load':>8}{'digest':>8}{'plain save':>12}{'plain load':>12}"
          f"{'/plain':>8}{'/rewrite':>10}")
    results["artifact"] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            r = results["artifact"][name] = artifact(name, args.runs, Path(folder))
            r["over rewrite"] = (r["save"] + r["load"]) / results["compare"][name]["rewrite"]
            print(f"{name:<14}{r['mb']:>6.0f}MB{r['save']:>7.2f}s{r['load']:>7.2f}s{r['digest']:>7.2f}s"
                  f"{r['plain save']:>11.2f}s{r['plain load']:>11.2f}s{r['over plain']:>8.2f}"
                  f"{r['over rewrite']:>10.2f}  {ok(r['over rewrite'] <= 0.25)}")

    store({"speed": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
