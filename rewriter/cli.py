"""``shaprewrite IN.onnx OUT.pt``: rewrite an ONNX file into an exactly explainable torch module."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from .api import rewrite
from .errors import InputError, OutputError, ShapRewriteError

EXAMPLES = """\
examples:
  shaprewrite model.onnx model.pt
  shaprewrite model.onnx model.pt --dim seq=128 --rtol 1e-3
  python -c "import torch, rewriter; m = torch.load('model.pt', weights_only=False)"

The output is a pickled torch.fx.GraphModule: load it with
torch.load(path, weights_only=False) where shaprewrite is installed, and only
load files you trust (pickle can run code).

exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 4 unsupported op,
5 export failed, 6 verification failed, 8 cannot write output
"""


def _dim(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE with SIZE >= 1, got '{text}'")
    return name, int(value)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shaprewrite", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Rewrite an ONNX model into an equivalent torch module that SHAP DeepExplainer and "
                    "Captum DeepLift explain exactly. The result is verified against onnxruntime "
                    "before it is written.")
    parser.add_argument("input", help="ONNX model file")
    parser.add_argument("output", help="where to write the rewritten module (.pt)")
    parser.add_argument("--dim", action="append", type=_dim, default=[], metavar="NAME=SIZE",
                        help="size of a symbolic input dim for the check inputs (repeatable)")
    parser.add_argument("--atol", type=_tolerance, help="absolute verification tolerance (default by dtype)")
    parser.add_argument("--rtol", type=_tolerance, help="relative verification tolerance (default by dtype)")
    parser.add_argument("--static-batch", action="store_true",
                        help="keep a fixed leading input dim fixed instead of making it dynamic")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def write_atomically(module: torch.nn.Module, output: Path) -> None:
    """Save to a temporary file beside ``output``, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(module, handle)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and output.is_dir():
        raise OutputError(f"output '{output}' is a directory", fix="give a file path such as model.pt")
    if output.exists() and not force:
        raise OutputError(f"output '{output}' already exists", fix="pass --force to overwrite it")
    if not output.parent.is_dir():
        raise OutputError(f"the output directory '{output.parent}' does not exist", fix="create it first")
    if not os.access(output.parent, os.W_OK):
        raise OutputError(f"the output directory '{output.parent}' is not writable",
                          fix="choose a writable directory")


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    _check_output(output, args.force)
    if Path(args.input).resolve() == output.resolve():
        raise InputError("input and output are the same file", fix="write the output to another path")
    say = (lambda message: None) if args.quiet else (lambda message: print(f"shaprewrite: {message}...", file=sys.stderr))
    module, report = rewrite(args.input, dims=dict(args.dim), atol=args.atol, rtol=args.rtol,
                             dynamic_batch=not args.static_batch, report=True, progress=say)
    try:
        write_atomically(module, output)
    except OSError as exc:
        raise OutputError(f"cannot write '{output}': {exc.strerror or exc}", fix="check the path and free space") from exc
    if not args.quiet:
        worst = max((d["max_abs"] for d in report.verification), default=0.0)
        print(f"shaprewrite: wrote {output} (verified: max abs diff {worst:.3g})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ShapRewriteError as exc:
        print(f"shaprewrite: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shaprewrite: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the promise is: no traceback, ever
        print(f"shaprewrite: internal error: {type(exc).__name__}: {exc}. This is a bug; please report it "
              "with the model.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
