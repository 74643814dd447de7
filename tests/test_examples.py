"""Every example runs, and the README's code blocks are true."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.parametrize("script,expected", [
    ("explain_resnet.py", "relative additivity error"),
    ("half_precision.py", "explained in float32"),
    ("old_shap_selu.py", "additive on a SHAP without SELU and GELU rules"),
    ("captum_deeplift.py", "relative convergence delta"),
    ("explain_lstm.py", "the two steps with the most attribution: [5, 20]"),
    ("explain_text.py", "'superb' has the largest attribution to 'positive' in 4 of 4 positive reviews"),
])
def test_example_runs(script, expected, tmp_path):
    result = run(str(ROOT / "examples" / script), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout


def test_demo_saves_the_image_plot(tmp_path):
    assert run(str(ROOT / "examples" / "explain_resnet.py"), cwd=tmp_path).returncode == 0
    assert (tmp_path / "out" / "resnet_shap.png").stat().st_size > 10_000


def test_digits_demo_trains_rewrites_and_explains_with_the_command(tmp_path):
    """``make demo``: a CNN trained on real digits, explained by ``shaprewrite explain``."""
    result = run(str(ROOT / "examples" / "explain_digits.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", result.stdout).group(1))
    assert accuracy > 90, result.stdout  # it learned digits, so the plot shows strokes, not noise
    error = float(re.search(r"worst additivity error ([\d.e+-]+)", result.stdout).group(1))
    assert error < 1e-4
    assert (tmp_path / "out" / "digits_shap.png").stat().st_size > 10_000


def test_cli_example(tmp_path):
    result = run(str(ROOT / "examples" / "cli_then_explain.py"), str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "attributions add up" in result.stdout and (tmp_path / "model.pt").exists()


def export(model: nn.Module, path: Path, shape: tuple[int, ...]) -> None:
    torch.onnx.export(model.eval(), (torch.randn(2, *shape),), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(path))


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.where(x > 0, x, -x))


def test_pipeline_step_passes_an_exact_model_and_fails_an_approximate_one(tmp_path):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    export(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)), good, (4,))
    export(Masked(), bad, (4,))
    script = str(ROOT / "examples" / "pipeline_step.py")
    ok = run(script, str(good), str(tmp_path / "out"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "good.pt").exists() and (tmp_path / "out" / "good.report.json").exists()
    failed = run(script, str(bad), str(tmp_path / "out"))
    assert failed.returncode in (7, 10), failed.stderr  # self-check above threshold, or approximate nodes
    assert not (tmp_path / "out" / "bad.pt").exists()
    assert json.loads((tmp_path / "out" / "bad.report.json").read_text())["approximate"]


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_python_blocks_run(tmp_path):
    blocks = code_blocks("python")
    assert blocks
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=600,
                                cwd=tmp_path)
        assert result.returncode == 0, block + result.stderr


def test_readme_cli_blocks_run(tmp_path):
    export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Flatten(), nn.Linear(36, 2)),
           tmp_path / "model.onnx", (3, 8, 8))
    commands = [line for block in code_blocks("sh") for line in block.splitlines() if line.startswith("shaprewrite")]
    assert len(commands) >= 3
    for command in commands:
        words = command.split("#")[0].split()
        result = subprocess.run([sys.executable, "-m", "rewriter.cli", *words[1:]], capture_output=True, text=True,
                                timeout=600, cwd=tmp_path)
        assert result.returncode == 0, command + result.stderr


def test_readme_make_commands_are_the_makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    make_lines = [line.split("#")[0].strip() for block in code_blocks("sh") for line in block.splitlines()
                  if line.startswith("make")]
    assert make_lines == ["make demo", "make test"]
    assert "examples/explain_digits.py" in makefile.split("demo: install")[1].splitlines()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
