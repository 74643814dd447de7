"""Recurrent layers: rewrite time and forward latency of an unrolled LSTM against nn.LSTM.

    python benchmarks/recurrent.py      (part of make bench)

An LSTM of hidden size 128 over 50 and 200 steps, batch 32 (32 features), exported by each
exporter; the forward latency ratio (rewritten / original, median of interleaved runs)
at one and at two threads. Goal: at most 3x (torch's fused CPU LSTM against one module
per step).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from rewriter import rewrite

GOAL = 3.0


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 128, batch_first=True)
        self.head = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def _latency_ratio(original: nn.Module, rewritten: nn.Module, x: torch.Tensor, runs: int = 30) -> tuple:
    def once(model):
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start

    with torch.no_grad():
        for _ in range(5):
            once(original), once(rewritten)
        pairs = [(once(original), once(rewritten)) for _ in range(runs)]
    a, b = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    return a, b, b / a


def measure() -> dict:
    results = {}
    print(f"{'steps':>6}{'exporter':>13}{'rewrite':>9}{'threads':>8}{'nn.LSTM':>10}{'rewritten':>11}{'ratio':>7}")
    for steps in (50, 200):
        torch.manual_seed(0)
        model = LSTMClassifier().eval()
        x = torch.randn(32, steps, 32)
        for exporter in ("dynamo", "torchscript"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                rewritten = rewrite(model, x, exporter=exporter)
                seconds = time.perf_counter() - start
            for threads in (1, 2):
                torch.set_num_threads(threads)
                a, b, ratio = _latency_ratio(model, rewritten, x)
                results[f"{steps}/{exporter}/{threads}"] = {"rewrite_s": seconds, "original_ms": 1e3 * a,
                                                            "rewritten_ms": 1e3 * b, "ratio": ratio}
                print(f"{steps:>6}{exporter:>13}{seconds:>8.1f}s{threads:>8}{1e3 * a:>8.2f}ms{1e3 * b:>9.2f}ms"
                      f"{ratio:>7.2f}  {'ok' if ratio <= GOAL else 'MISSED'}")
    return results


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2), file=sys.stderr)
