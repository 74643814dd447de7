"""Demo: train a small ResNet on handwritten digits, rewrite it, explain it with `shaprewrite explain`.

Run with ``make demo``. The digits are scikit-learn's bundled 8x8 images (no download). The
CNN is written like torchvision's ResNet (in-place ReLU reused, ``out += identity``), which
``shap.DeepExplainer`` cannot explain as it is. After the rewrite, the command

    shaprewrite explain out/digits.pt --inputs out/digits_rows.npy \\
        --background out/digits_background.npy --out out/digits_attributions.npy --plot out/digits_shap.png

explains a few test digits against 100 training digits, checks that every row's
attributions add up to the model's output difference, and plots them: red pixels push the
model towards the class of their column, blue ones away.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import shap
import torch
from sklearn.datasets import load_digits
from torch import nn

from rewriter import rewrite, save


class Block(nn.Module):
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


class DigitResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 12) -> float:
    """A few seconds of Adam; returns the seconds taken."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return time.perf_counter() - started


def main() -> int:
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # [1797, 1, 8, 8]
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(images))
    train_rows, test_rows = order[:1500], order[1500:]

    model = DigitResNet()
    seconds = train(model, images[train_rows], labels[train_rows])
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test_rows]).argmax(1) == labels[test_rows]).float().mean().item()
    print(f"1. trained a small ResNet on 8x8 digits for {seconds:.0f} s: test accuracy {accuracy:.1%}")

    background, shown = images[train_rows[:100]], images[test_rows[:6]]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shap.DeepExplainer(model, background).shap_values(shown)
        print("2. shap.DeepExplainer on the original: ran (unexpected on this torch/shap)")
    except Exception as exc:
        print(f"2. shap.DeepExplainer on the original fails: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}")

    out = Path("out")
    out.mkdir(exist_ok=True)
    explainable = rewrite(model, shown)
    save(explainable, out / "digits.pt")
    np.save(out / "digits_rows.npy", shown.numpy())
    np.save(out / "digits_background.npy", background.numpy())
    print(f"3. rewrote it and saved {out / 'digits.pt'}")

    command = ["shaprewrite", "explain", "out/digits.pt", "--inputs", "out/digits_rows.npy", "--background",
               "out/digits_background.npy", "--out", "out/digits_attributions.npy", "--plot", "out/digits_shap.png",
               "--force"]
    print(f"4. {' '.join(command)}")
    done = subprocess.run([sys.executable, "-m", "rewriter", *command[1:]], capture_output=True, text=True)
    print("   " + done.stderr.strip().replace("\n", "\n   "))
    if done.returncode != 0:
        return done.returncode
    attributions = np.load(out / "digits_attributions.npy")
    print(f"5. attributions {list(attributions.shape)} (rows, channel, height, width, class); "
          f"plot in {out / 'digits_shap.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
