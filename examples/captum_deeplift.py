"""Captum's DeepLift on a rewritten transformer block: convergence deltas at float rounding.

    python examples/captum_deeplift.py
"""

from __future__ import annotations

import sys

import torch
from captum.attr import DeepLift
from torch import nn

from rewriter import rewrite


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.ff = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        return self.head((x + self.ff(x)).mean(1))


def main() -> int:
    torch.manual_seed(0)
    model = Block().eval()
    tokens, baseline = torch.randn(2, 5, 16), torch.zeros(2, 5, 16)
    explainable = rewrite(model, tokens)
    attributions, delta = DeepLift(explainable).attribute(tokens, baselines=baseline, target=0,
                                                          return_convergence_delta=True)
    gap = (explainable(tokens) - explainable(baseline))[:, 0].abs().max().item()
    relative = delta.abs().max().item() / gap
    print(f"attributions {tuple(attributions.shape)}, relative convergence delta {relative:.1e}")
    return 0 if relative < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
