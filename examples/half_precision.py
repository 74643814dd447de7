"""A float16 model: rewritten into a float32 module SHAP can run (its numba code rejects
float16), verified against the float16 original and a float32 copy.

    python examples/half_precision.py
"""

from __future__ import annotations

import sys

import shap
import torch
from torch import nn

from rewriter import rewrite


def main() -> int:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4)).eval().half()
    images = torch.randn(4, 3, 16, 16).half()
    explainable, report = rewrite(model, images, report=True)
    for check in report.verification:
        print(f"{check['reference']:>28}, batch {check['batch']}: max abs diff {check['max_abs']:.2e}")
    dtypes = {p.dtype for p in explainable.parameters()}
    print(f"rewritten parameters: {dtypes}")
    values = shap.DeepExplainer(explainable, torch.randn(8, 3, 16, 16)).shap_values(torch.randn(2, 3, 16, 16))
    print(f"explained in float32: {values.dtype}, additive")
    return 0 if dtypes == {torch.float32} else 1


if __name__ == "__main__":
    sys.exit(main())
