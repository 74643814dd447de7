"""A pipeline step: rewrite a model file with the self-check, fail the step unless the
result is verified and exact, and keep the report next to the output.

    python examples/pipeline_step.py MODEL.onnx OUTDIR [--threshold 1e-4]

Exit 0 when OUTDIR/MODEL.pt was written, verified, exact and its self-check passed;
otherwise the step fails with the CLI's exit code (or 10 for approximate nodes) and
OUTDIR holds the report only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

NOT_EXACT = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--threshold", default="1e-4")
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    output = args.outdir / f"{args.model.stem}.pt"
    report_path = args.outdir / f"{args.model.stem}.report.json"
    step = subprocess.run([sys.executable, "-m", "rewriter.cli", str(args.model), str(output), "--check",
                           "--threshold", args.threshold, "--report", str(report_path), "--force", "--quiet"])
    if step.returncode != 0:
        print(f"step failed: shaprewrite exited {step.returncode}; see {report_path}", file=sys.stderr)
        return step.returncode
    report = json.loads(report_path.read_text())
    if not report["exact"] or not report["verification"]["verified"]:
        output.unlink()
        print(f"step failed: approximate nodes {report['approximate']}", file=sys.stderr)
        return NOT_EXACT
    print(f"ok: {output} (shap additivity error {report['shap_additivity_error']:.1e}), report {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
