"""The CLI on an ONNX file, then the saved module loaded and explained.

    python examples/cli_then_explain.py [WORKDIR]

Exports a small CNN to ONNX (standing in for a file you were given), runs
``shaprewrite model.onnx model.pt``, loads ``model.pt`` with ``rewriter.load`` (data only:
no code from the file runs) as any pipeline would, and explains it with
shap.DeepExplainer, checking that the attributions add up.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import shap
import torch
from torch import nn

import rewriter


def make_onnx(path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    torch.onnx.export(model, (torch.randn(2, 1, 8, 8),), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(path))


def main(workdir: Path) -> int:
    onnx_path, pt_path = workdir / "model.onnx", workdir / "model.pt"
    make_onnx(onnx_path)
    subprocess.run([sys.executable, "-m", "rewriter.cli", str(onnx_path), str(pt_path), "--force"], check=True)

    model = rewriter.load(pt_path)  # data only: safe on files from anyone
    background, images = torch.randn(10, 1, 8, 8), torch.randn(2, 1, 8, 8)
    values = shap.DeepExplainer(model, background).shap_values(images)  # SHAP's own additivity check on
    print(f"explained {values.shape[0]} images, {values.shape[-1]} outputs: attributions add up")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(main(Path(tmp)))
