"""Rows per second of ``rewriter.explain``: the hand-written DeepExplainer loop, the local engine,
and Ray with two workers, on a ResNet-18-sized model at 64x64 (random weights).

Writes its numbers under "explain" in ``benchmarks/results.json``.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from architectures import ResNet, randomize_batchnorm  # noqa: E402
from common import store  # noqa: E402

from rewriter import explain, rewrite  # noqa: E402

ROWS, BACKGROUND, CLASSES, BATCH = 48, 8, 4, 8


def hand_written_loop(model, inputs: np.ndarray, background: np.ndarray) -> np.ndarray:
    """What a user writes today: one DeepExplainer, batches through it, arrays concatenated."""
    import shap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.DeepExplainer(model, torch.from_numpy(background))
        return np.concatenate([explainer.shap_values(torch.from_numpy(inputs[s:s + BATCH]), check_additivity=False)
                               for s in range(0, len(inputs), BATCH)])


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def main() -> int:
    import ray

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = randomize_batchnorm(ResNet(18, width=64, num_classes=CLASSES)).eval()
    inputs = rng.standard_normal((ROWS, 3, 64, 64)).astype(np.float32)
    background = rng.standard_normal((BACKGROUND, 3, 64, 64)).astype(np.float32)
    explainable = rewrite(model, torch.from_numpy(inputs[:2]))

    hand_seconds, by_hand = timed(lambda: hand_written_loop(explainable, inputs, background))
    local_seconds, local = timed(lambda: explain(explainable, inputs, background, batch_size=BATCH, progress=False))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
    try:
        explain(explainable, inputs[:2], background, batch_size=BATCH, engine="ray", workers=2, progress=False)
        ray_seconds, distributed = timed(lambda: explain(explainable, inputs, background, batch_size=BATCH,
                                                         engine="ray", workers=2, progress=False))
    finally:
        ray.shutdown()
    results = {
        "model": f"ResNet-18 (width 64), 3x64x64, {CLASSES} outputs; {ROWS} rows, background {BACKGROUND}, "
                 f"batch {BATCH}, shap",
        "hand_written_rows_per_s": ROWS / hand_seconds,
        "local_rows_per_s": ROWS / local_seconds,
        "ray_2_workers_rows_per_s": ROWS / ray_seconds,
        "explain_over_hand_written": local_seconds / hand_seconds,
        "ray_equals_local": bool(np.array_equal(distributed, local)),
        "max_abs_diff_vs_hand_written": float(np.abs(local - by_hand).max()),
    }
    print(f"{'':<34}{'rows/s':>8}")
    for key in ("hand_written_rows_per_s", "local_rows_per_s", "ray_2_workers_rows_per_s"):
        print(f"{key.removesuffix('_rows_per_s'):<34}{results[key]:>8.2f}")
    print(f"explain / hand-written time: {results['explain_over_hand_written']:.2f}x; "
          f"ray equals local: {results['ray_equals_local']}")
    store({"explain": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
