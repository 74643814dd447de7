"""SELU and CELU explained exactly on a SHAP that does not know them.

    python examples/old_shap_selu.py

shap before 0.45.1 has no rule for SELU (and before 0.47 none for GELU); this example
removes both from the installed shap's table, as those versions have it, and shows the
rewritten model still adds up: SELU and CELU become ELUs and scalings.
"""

from __future__ import annotations

import sys

import shap
import shap.explainers._deep.deep_pytorch as deep
import torch
from torch import nn

from rewriter import rewrite


def main() -> int:
    for name in ("SELU", "GELU"):
        deep.op_handler.pop(name, None)  # what shap < 0.45.1 ships
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.SELU(), nn.Linear(16, 16), nn.CELU(alpha=1.7), nn.Linear(16, 2)).eval()
    explainable = rewrite(model, torch.randn(4, 6))
    print("rewritten:", [type(m).__name__ for m in explainable.children()])
    explainer = shap.DeepExplainer(explainable, torch.randn(20, 6))
    explainer.shap_values(torch.randn(3, 6))  # raises if the attributions do not add up
    print("additive on a SHAP without SELU and GELU rules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
