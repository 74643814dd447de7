"""An LSTM sequence classifier, explained exactly over time.

    python examples/explain_lstm.py

Synthetic sequences of 30 steps and 4 features where only two steps carry the signal:
the label is whether ``x[5, 0] + x[20, 1]`` is positive; everything else is weaker noise. A
small LSTM learns it in a few seconds. SHAP's DeepExplainer on the LSTM itself gives
attributions that do not add up; on the rewritten model (the LSTM unrolled into gates,
activations and Shapley products) they add up to float rounding, and summed over
features they put the weight on steps 5 and 20. The plot of attribution over time is
saved to ``out/lstm_attributions.png``.
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

STEPS, FEATURES, SIGNAL = 30, 4, (5, 20)


class SequenceClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, 16, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0].mean(1))


def dataset(rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = 0.1 * torch.randn(rows, STEPS, FEATURES, generator=generator)
    x[:, SIGNAL[0], 0] *= 10
    x[:, SIGNAL[1], 1] *= 10
    return x, (x[:, SIGNAL[0], 0] + x[:, SIGNAL[1], 1] > 0).long()


def train(model: nn.Module, generator: torch.Generator) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        x, y = dataset(64, generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = dataset(500, generator)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def additivity_error(model, background, inputs, values) -> float:
    with torch.no_grad():
        delta = model(inputs).numpy() - model(background).numpy().mean(0)
    totals = values.reshape(values.shape[0], -1, values.shape[-1]).sum(axis=1)
    return float(np.abs(totals - delta).max() / np.abs(delta).max())


def main() -> int:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = SequenceClassifier()
    print(f"1. trained an LSTM classifier: accuracy {train(model, generator):.2f} on held-out sequences")
    model.eval()
    background, inputs = dataset(40, generator)[0], dataset(8, generator)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            raw = shap.DeepExplainer(model, background).shap_values(inputs, check_additivity=False)
            print(f"2. shap.DeepExplainer on the LSTM: relative additivity error "
                  f"{additivity_error(model, background, inputs, raw):.2f}")
        except Exception as exc:
            print(f"2. shap.DeepExplainer on the LSTM fails: {type(exc).__name__}")

    explainable = rewrite(model, inputs)
    values = shap.DeepExplainer(explainable, background).shap_values(inputs, check_additivity=False)
    error = additivity_error(explainable, background, inputs, values)
    print(f"3. on the rewritten model: relative additivity error {error:.1e} (float rounding)")

    with torch.no_grad():
        predicted = explainable(inputs).argmax(1).numpy()
    # |attribution| of each step toward the predicted class, summed over features.
    per_step = np.abs(values[np.arange(len(inputs)), ..., predicted]).sum(-1).mean(0)
    top = sorted(np.argsort(per_step)[-2:].tolist())
    print(f"4. the two steps with the most attribution: {top} (the signal is at {list(SIGNAL)})")

    out = Path("out")
    out.mkdir(exist_ok=True)
    figure, axis = plt.subplots(figsize=(7, 3))
    axis.bar(range(STEPS), per_step, color=["tab:red" if t in SIGNAL else "tab:gray" for t in range(STEPS)])
    axis.set(xlabel="time step", ylabel="mean |SHAP value|", title="Attribution over time (signal steps in red)")
    figure.savefig(out / "lstm_attributions.png", dpi=80, bbox_inches="tight")
    print(f"5. saved {out / 'lstm_attributions.png'}")
    return 0 if error < 1e-4 and top == list(SIGNAL) else 1


if __name__ == "__main__":
    sys.exit(main())
