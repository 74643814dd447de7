"""Additivity before and after the rewrite, and forward time, for the models the tests use.

    python benchmarks/exactness.py      (part of make bench)

For each model: SHAP DeepExplainer's relative additivity error on the original (or the
error it raises) and on the rewritten model, Captum DeepLift's on the rewritten one, and
the forward time of both at batch 8 (median of 20 runs).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from architectures import (  # noqa: E402
    CeilPoolNet,
    ConvNeXtBlock,
    DeadBranchNet,
    FunctionalMLP,
    GatedMLP,
    GroupNormBlock,
    LayerNormBlock,
    MultiheadEncoder,
    PoolingNet,
    ResNetStem,
    ResNetStyle,
    RMSNormBlock,
    SDPAttention,
    SqueezeExciteNet,
    TwoInputNet,
    randomize_batchnorm,
)
from explain import captum_relative_delta, shap_outcome  # noqa: E402

from rewriter import rewrite  # noqa: E402

IMAGE = (3, 16, 16)
MODELS = {
    "resnet (in-place, reused ReLU)": (lambda: randomize_batchnorm(ResNetStyle()), [IMAGE]),
    "mlp (F.relu, torch.sigmoid)": (FunctionalMLP, [(10,)]),
    "two inputs, shared ReLU": (TwoInputNet, [(1, 8, 8), (6,)]),
    "dead branch": (DeadBranchNet, [(8,)]),
    "max pool 2x2 after F.relu": (PoolingNet, [(2, 8, 8)]),
    "resnet stem MaxPool2d(3,2,1)": (lambda: randomize_batchnorm(ResNetStem()), [IMAGE]),
    "ceil_mode pooling": (CeilPoolNet, [(2, 10, 10)]),
    "squeeze-excite + SiLU": (SqueezeExciteNet, [IMAGE]),
    "gated MLP a*sigmoid(b)": (GatedMLP, [(6,)]),
    "LayerNorm block": (LayerNormBlock, [(6,)]),
    "GroupNorm block": (GroupNormBlock, [IMAGE]),
    "RMSNorm block": (RMSNormBlock, [(6,)]),
    "2-layer MHA encoder": (MultiheadEncoder, [(5, 4)]),
    "SDPA attention": (SDPAttention, [(5, 8)]),
    "ConvNeXt block": (ConvNeXtBlock, [IMAGE]),
}


def batch(shapes, n):
    return [torch.randn(n, *s) for s in shapes]


def unwrap(tensors):
    return tensors if len(tensors) > 1 else tensors[0]


def forward_ms(model, inputs) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(*inputs)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    print(f"{'model':<32}{'shap before':>14}{'shap after':>12}{'captum after':>14}{'fwd before':>12}{'fwd after':>11}")
    for name, (make, shapes) in MODELS.items():
        torch.manual_seed(0)
        model = make().eval()
        with torch.no_grad():
            model(*batch(shapes, 2))  # sizes lazy layers
        rewritten = rewrite(model, *batch(shapes, 4))
        background, inputs = batch(shapes, 10), batch(shapes, 3)
        outcome, before = shap_outcome(model, unwrap(background), unwrap(inputs))
        _, after = shap_outcome(rewritten, unwrap(background), unwrap(inputs))
        captum = captum_relative_delta(rewritten, tuple(batch(shapes, 3)), tuple(inputs))
        shown = f"{before:.1e}" if before is not None else outcome.split(":")[1].strip()[:12]
        x = batch(shapes, 8)
        print(f"{name:<32}{shown:>14}{after:>12.1e}{captum:>14.1e}{forward_ms(model, x):>10.2f}ms"
              f"{forward_ms(rewritten, x):>9.2f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
