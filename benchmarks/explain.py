"""Rows per second of the explanation step: shap's DeepExplainer loop, Captum's DeepLiftShap and
the exact engine, on the same rewritten module, rows and references, in the same process;
the largest difference from shap's attributions; the memory each takes. Then Ray with two
workers against the local engine on the ResNet.

Models (random weights): a digits CNN (8x8, 10 outputs, background 100), ResNet-18 at 64x64
(10 outputs, background 16), a small BERT-style classifier from transformers (2 outputs,
background 16 sequences, token ids in), an LSTM classifier (2 outputs, background 16).

Writes its numbers under "explain" in ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from architectures import ResNet, randomize_batchnorm  # noqa: E402
from common import ok, quiet, rss_mb, store  # noqa: E402

from rewriter import rewrite  # noqa: E402
from rewriter.explanation import run_explanation  # noqa: E402

EXPLAINERS = ("shap", "captum", "exact")


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config)


def _tokens(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    ids = rng.integers(5, 200, (rows, 24))
    ids[:, 0] = 1
    mask = np.ones_like(ids)
    mask[::3, 18:] = 0  # a third of the rows padded: rows do not all share one context
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def cases(rng: np.random.Generator) -> dict:
    """name -> (model, example call, rows, background, description)."""
    digits, resnet = DigitsCNN(), randomize_batchnorm(ResNet(18, width=64, num_classes=10))
    return {
        "digits CNN": (digits, (torch.randn(2, 1, 8, 8),), rng.standard_normal((24, 1, 8, 8)).astype(np.float32),
                       rng.standard_normal((100, 1, 8, 8)).astype(np.float32), "1x8x8, 10 outputs, background 100"),
        "ResNet-18 64x64": (resnet, (torch.randn(2, 3, 64, 64),), rng.standard_normal((6, 3, 64, 64)).astype(
            np.float32), rng.standard_normal((16, 3, 64, 64)).astype(np.float32), "10 outputs, background 16"),
        "BERT-style": (_bert(), ({k: torch.from_numpy(v) for k, v in _tokens(rng, 2).items()},), _tokens(rng, 12),
                       _tokens(rng, 16), "2 layers, 24 tokens, 2 outputs, background 16"),
        "LSTM": (LSTMClassifier(), (torch.randn(2, 20, 8),), rng.standard_normal((24, 20, 8)).astype(np.float32),
                 rng.standard_normal((16, 20, 8)).astype(np.float32), "20 steps, 2 outputs, background 16"),
    }


class PeakSampler:
    """The largest resident memory seen while running, above what it was at the start."""

    def __init__(self) -> None:
        self.start = rss_mb()
        self.peak = self.start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def grew_mb(self) -> float:
        return self.peak - self.start


def measure(module, rows, background, explainer: str, repeats: int) -> tuple[float, list[np.ndarray], float]:
    """Best rows/s of ``repeats`` runs, the attributions, and the memory the run took on top."""
    best, values, grew = 0.0, None, 0.0
    for _ in range(repeats):
        with PeakSampler() as sampler:
            started = time.perf_counter()
            result = run_explanation(module, rows, background, explainer=explainer, batch_size=64, progress=False)
            seconds = time.perf_counter() - started
        count = len(next(iter(rows.values()))) if isinstance(rows, dict) else len(rows)
        best, values, grew = max(best, count / seconds), result.attributions, max(grew, sampler.grew_mb)
    return best, values, grew


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best counts")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    table = {}
    for name, (model, call, rows, background, description) in cases(rng).items():
        with quiet():
            module = rewrite(model.eval(), *call)
        found = {explainer: measure(module, rows, background, explainer, args.repeats) for explainer in EXPLAINERS}
        reference = found["shap"][1][0]
        entry = {"description": description}
        for explainer, (speed, values, grew) in found.items():
            entry[f"{explainer}_rows_per_s"] = speed
            entry[f"{explainer}_memory_mb"] = grew
            entry[f"{explainer}_max_abs_diff_vs_shap"] = float(np.abs(values[0] - reference).max())
        entry["shap_max_abs_attribution"] = float(np.abs(reference).max())
        entry["exact_over_shap"] = entry["exact_rows_per_s"] / entry["shap_rows_per_s"]
        table[name] = entry
    print(f"{'model':<18}{'shap r/s':>10}{'captum r/s':>12}{'exact r/s':>11}{'x shap':>8}{'diff vs shap':>14}"
          f"{'MB shap/captum/exact':>24}")
    for name, e in table.items():
        goal = e["exact_over_shap"] >= 3 if "10 outputs" in e["description"] else e["exact_over_shap"] >= 1
        memory = f"{e['shap_memory_mb']:.0f}/{e['captum_memory_mb']:.0f}/{e['exact_memory_mb']:.0f}"
        print(f"{name:<18}{e['shap_rows_per_s']:>10.2f}{e['captum_rows_per_s']:>12.2f}{e['exact_rows_per_s']:>11.2f}"
              f"{e['exact_over_shap']:>7.1f}x{e['exact_max_abs_diff_vs_shap']:>14.2g}{memory:>24}  {ok(goal)}")
    store({"explain": {"engines": table, "ray": ray_against_local()}})
    return 0


def ray_against_local() -> dict:
    """The exact engine on Ray (two one-CPU workers on this machine) against the local one."""
    import ray

    rng = np.random.default_rng(1)
    with quiet():
        module = rewrite(randomize_batchnorm(ResNet(18, width=64, num_classes=10)).eval(), torch.randn(2, 3, 64, 64))
    rows = rng.standard_normal((16, 3, 64, 64)).astype(np.float32)
    background = rng.standard_normal((8, 3, 64, 64)).astype(np.float32)
    started = time.perf_counter()
    local = run_explanation(module, rows, background, batch_size=4, progress=False).attributions[0]
    local_seconds = time.perf_counter() - started
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
    try:
        run_explanation(module, rows[:2], background, batch_size=4, engine="ray", workers=2, progress=False)
        started = time.perf_counter()
        distributed = run_explanation(module, rows, background, batch_size=4, engine="ray", workers=2,
                                      progress=False).attributions[0]
        ray_seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    result = {"local_rows_per_s": len(rows) / local_seconds, "ray_2_workers_rows_per_s": len(rows) / ray_seconds,
              "ray_equals_local": bool(np.array_equal(distributed, local))}
    print(f"ResNet-18 exact engine: local {result['local_rows_per_s']:.2f} rows/s, Ray (2 workers) "
          f"{result['ray_2_workers_rows_per_s']:.2f} rows/s, same numbers: {result['ray_equals_local']}")
    return result


if __name__ == "__main__":
    sys.exit(main())
