"""One picture of a set of attributions, chosen by the shape of the rows they explain.

Rows of shape ``[C, H, W]`` are images (``shap.image_plot`` of the first rows, one column per
output); integer rows of shape ``[T]`` are token ids (the first rows' tokens, each coloured by
its attribution to the output they push up most); ``[T, F]`` are sequences (mean |attribution|
over rows and features, per time step and output); anything else is tabular (mean
|attribution| per feature, largest first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import OutputError

_IMAGE_ROWS = 6  # an image plot of more rows is too small to read
_FEATURES = 20


def plot_attributions(attributions: np.ndarray, rows: np.ndarray, path: Path,
                      tokens: list[str] | None = None) -> None:
    """Save the plot for ``attributions`` (``rows.shape + (n_outputs,)``) to ``path``, atomically.
    ``tokens`` labels token ids (the token of id ``i`` is ``tokens[i]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise OutputError("--plot needs matplotlib, which is not installed", fix="pip install matplotlib") from exc
    from .files import write_atomically

    kind = rows.ndim - 1
    if kind == 1 and rows.dtype.kind in "iu":
        figure = _text(attributions, rows, tokens, plt)
    elif kind == 3:
        figure = _images(attributions, rows, plt)
    elif kind == 2:
        figure = _sequence(attributions, plt)
    else:
        figure = _tabular(attributions, plt)
    write_atomically(lambda handle: figure.savefig(handle, format="png", dpi=110, bbox_inches="tight"), path)
    plt.close(figure)


def _images(attributions: np.ndarray, rows: np.ndarray, plt):
    import shap

    shown = min(len(rows), _IMAGE_ROWS)
    channels_last = np.moveaxis(attributions[:shown], 1, 3)  # [rows, H, W, C, outputs]
    pixels = np.moveaxis(rows[:shown], 1, 3).astype(np.float32)
    span = pixels.max() - pixels.min()
    pixels = (pixels - pixels.min()) / (span if span > 0 else 1.0)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    outputs = [channels_last[..., k] for k in range(channels_last.shape[-1])]
    shap.image_plot(outputs, pixels, show=False, labels=np.array([[f"output {k}" for k in range(len(outputs))]] * shown))
    return plt.gcf()


_TOKENS_PER_LINE = 14


def _text(attributions: np.ndarray, ids: np.ndarray, vocabulary: list[str] | None, plt):
    from matplotlib import colormaps

    shown = min(len(ids), _IMAGE_ROWS)
    lines = [(r, s) for r in range(shown) for s in range(0, ids.shape[1], _TOKENS_PER_LINE)]
    figure, axes = plt.subplots(figsize=(12, 0.45 * len(lines) + 0.8))
    axes.set_axis_off()
    scale = np.abs(attributions[:shown]).max() or 1.0
    cmap = colormaps["coolwarm"]
    for line, (row, start) in enumerate(lines):
        output = int(attributions[row].sum(axis=0).argmax())  # the output this row's tokens push up most
        y = 1 - (line + 0.5) / len(lines)
        if start == 0:
            axes.text(-0.01, y, f"row {row}, output {output}", ha="right", va="center", fontsize=8)
        for j, position in enumerate(range(start, min(start + _TOKENS_PER_LINE, ids.shape[1]))):
            token = int(ids[row, position])
            label = vocabulary[token] if vocabulary is not None and 0 <= token < len(vocabulary) else str(token)
            value = attributions[row, position, output] / scale
            axes.text(j / _TOKENS_PER_LINE, y, label[:12], ha="left", va="center", fontsize=9, family="monospace",
                      bbox={"facecolor": cmap(0.5 + 0.5 * value), "edgecolor": "none", "pad": 2})
    axes.set_title("Attribution per token (red pushes the output up, blue down)", fontsize=10)
    return figure


def _sequence(attributions: np.ndarray, plt):
    per_step = np.abs(attributions).mean(axis=(0, 2))  # [T, outputs]
    figure, axes = plt.subplots(figsize=(7, 3.5))
    for k in range(per_step.shape[1]):
        axes.plot(per_step[:, k], label=f"output {k}")
    axes.set(xlabel="time step", ylabel="mean |attribution|", title="Attribution over time")
    if per_step.shape[1] <= 10:
        axes.legend(fontsize="small")
    return figure


def _tabular(attributions: np.ndarray, plt):
    per_feature = np.abs(attributions).reshape(len(attributions), -1, attributions.shape[-1]).mean(axis=(0, 2))
    order = np.argsort(per_feature)[::-1][:_FEATURES][::-1]
    figure, axes = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    axes.barh([f"feature {i}" for i in order], per_feature[order])
    axes.set(xlabel="mean |attribution| (over rows and outputs)", title="Attribution per feature")
    return figure
