"""``shaprewrite IN.onnx OUT.pt``, ``shaprewrite inspect IN.onnx`` and ``shaprewrite explain``
(:mod:`rewriter.cli_explain`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import (
    AdditivityError,
    ExportError,
    InputError,
    OutputError,
    ShapRewriteError,
    UnsupportedOpError,
    VerificationError,
    exit_codes,
)
from .files import check_output_path

if TYPE_CHECKING:
    from .report import RewriteReport

EXIT_CODES = exit_codes(InputError, UnsupportedOpError, ExportError, VerificationError, AdditivityError,
                        OutputError)

EXAMPLES = f"""\
examples:
  shaprewrite model.onnx model.pt
  shaprewrite model.onnx model.pt --check --report model.report.json
  shaprewrite model.onnx model.pt --dim seq=128 --rtol 1e-3
  shaprewrite inspect model.onnx
  shaprewrite explain model.pt --inputs rows.npy --background bg.npy --out attributions.npy

The output holds data only (the rewritten graph and its weights): load it with
rewriter.load(path), which runs no code from the file; torch.load(path,
weights_only=True) reads it too.

{EXIT_CODES}"""


def _dim(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE with SIZE >= 1, got '{text}'")
    return name, int(value)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'")
    return value


def _output(text: str) -> str | int:
    return int(text) if text.lstrip("-").isdigit() else text


def _example_inputs(path: str | None) -> tuple:
    """The arrays of ``--inputs``: one positionally (a .npy), the rest by input name (a .npz)."""
    if path is None:
        return ()
    import torch

    from .arrays import read_arrays

    arrays = {name: torch.from_numpy(array) for name, array in read_arrays(path).items()}
    return (next(iter(arrays.values())),) if Path(path).suffix != ".npz" else (arrays,)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", action="append", type=_dim, default=[], metavar="NAME=SIZE",
                        help="size of a symbolic input dim for the check inputs (repeatable)")
    parser.add_argument("--static-batch", action="store_true",
                        help="keep a fixed leading input dim fixed instead of making it dynamic")
    parser.add_argument("--decompose-clips", action="store_true",
                        help="write ReLU6/Hardtanh/Clip as ReLUs (exact without registered rules; slower)")
    parser.add_argument("--max-tensor-mib", type=_non_negative, default=1024, metavar="MIB",
                        help="refuse a graph that computes a tensor larger than this (default 1024)")
    parser.add_argument("--inputs", metavar="ROWS",
                        help="example rows to check the result on, instead of random ones: a .npy (one input) or "
                             ".npz (arrays by input name); read without unpickling")
    parser.add_argument("--output", type=_output, metavar="NAME|INDEX", dest="keep_output",
                        help="the output to keep, of a model with several (default: 'logits', else the first float "
                             "one); returned as [batch, k]")
    parser.add_argument("--report", metavar="PATH", help="write the JSON report to PATH")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    parser.add_argument("--quiet", action="store_true", help="print nothing on stderr but errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shaprewrite", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Rewrite an ONNX model into an equivalent torch module that SHAP DeepExplainer and "
                    "Captum DeepLift explain exactly. The result is verified against onnxruntime "
                    "before it is written.")
    parser.add_argument("input", help="ONNX model file, or a torch.export archive (.pt2)")
    parser.add_argument("output", help="where to write the rewritten module (.pt)")
    parser.add_argument("--atol", type=_non_negative, help="absolute verification tolerance (default by dtype)")
    parser.add_argument("--rtol", type=_non_negative, help="relative verification tolerance (default by dtype)")
    parser.add_argument("--check", action="store_true",
                        help="explain the result with SHAP (and Captum) and fail above --threshold")
    parser.add_argument("--threshold", type=_non_negative, default=1e-3,
                        help="largest relative additivity error --check accepts (default 1e-3)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    _common(parser)
    return parser


def build_inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shaprewrite inspect", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
        description="Report what shaprewrite would do to an ONNX model, without writing one: the rewrites, the "
                    "nodes that would stay approximate, and any unsupported ops (exit 4).")
    parser.add_argument("input", help="ONNX model file, or a torch.export archive (.pt2)")
    _common(parser)
    return parser


class _Terminal:
    """Progress and the summary, on stderr unless quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._started: float | None = None

    def print(self, text: str = "") -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def progress(self, message: str) -> None:
        now = time.perf_counter()
        self._started = self._started or now
        self.print(f"shaprewrite: [{now - self._started:6.1f}s] {message}...")

    def summary(self, report: RewriteReport, threshold: float | None = None) -> None:
        if self.quiet:
            return
        self.print()
        if report.exporter:
            self.print(f"exported with the {report.exporter} exporter")
        self.print(f"  {'pass':<28} changes")
        for result in report.passes:
            self.print(f"  {result.name:<28} {result.count:>7}")
            for node, reason in result.declined.items():
                self.print(f"    left split: {node}: {reason}")
        if report.verification:
            worst = max(report.verification, key=lambda d: d["max_rel"])
            self.print(f"verified: {len(report.verification)} comparisons, worst max abs diff "
                       f"{max(d['max_abs'] for d in report.verification):.3g}, max rel diff {worst['max_rel']:.3g}")
        for note in report.notes:
            self.print(f"note: {note}")
        if report.unsupported:
            self.print(f"unsupported ops: {', '.join(f'{op} ({node})' for op, node in report.unsupported.items())}")
        approximate = report.approximate
        if approximate:
            shown = ", ".join(approximate[:8]) + (" ..." if len(approximate) > 8 else "")
            self.print(f"exactness: {len(approximate)} approximate node(s): {shown}")
        elif not report.unsupported:
            self.print("exactness: exact (every node has an exact DeepLIFT rule)")
        for explainer, value in report.check.items():
            verdict = "" if threshold is None or not isinstance(value, float) else \
                ("  ok" if value <= threshold else f"  ABOVE threshold {threshold:g}")
            shown = f"{value:.3g}" if isinstance(value, float) else f"failed ({value})"
            self.print(f"self-check: {explainer} relative additivity error {shown}{verdict}")


def _emit_report(report: RewriteReport, args: argparse.Namespace) -> None:
    from .files import write_atomically

    document = report.as_dict()
    text = json.dumps(document, indent=2)
    if args.report:
        path = Path(args.report)
        if not path.parent.is_dir():
            raise OutputError(f"the report directory '{path.parent}' does not exist", fix="create it first")
        write_atomically(lambda handle: handle.write(text.encode()), path)
    if args.json:
        print(text)


def run(args: argparse.Namespace) -> int:
    from .api import rewrite
    from .artifact import save

    output = Path(args.output)
    check_output_path(output, args.force)
    if Path(args.input).resolve() == output.resolve():
        raise InputError("input and output are the same file", fix="write the output to another path")
    terminal = _Terminal(args.quiet)
    module, report = rewrite(args.input, *_example_inputs(args.inputs), dims=dict(args.dim), atol=args.atol,
                             rtol=args.rtol, output=args.keep_output,
                             dynamic_batch=not args.static_batch, decompose_clips=args.decompose_clips,
                             max_tensor_bytes=int(args.max_tensor_mib * 2**20), check=args.check, report=True,
                             progress=terminal.progress)
    terminal.summary(report, args.threshold if args.check else None)
    _emit_report(report, args)
    if args.check:
        failures = {k: v for k, v in report.check.items() if not isinstance(v, float) or v > args.threshold}
        if failures:
            detail = "; ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in failures.items())
            raise AdditivityError(f"the self-check failed ({detail}; threshold {args.threshold:g}); nothing was written",
                                  fix="see the report's 'approximate' list for the nodes at fault, or raise --threshold")
    save(module, output, overwrite=args.force)
    terminal.print(f"shaprewrite: wrote {output}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from .api import inspect

    terminal = _Terminal(args.quiet)
    report = inspect(args.input, *_example_inputs(args.inputs), dims=dict(args.dim), output=args.keep_output,
                     dynamic_batch=not args.static_batch,
                     decompose_clips=args.decompose_clips, max_tensor_bytes=int(args.max_tensor_mib * 2**20),
                     progress=terminal.progress)
    terminal.summary(report)
    _emit_report(report, args)
    if report.unsupported:
        raise UnsupportedOpError(report.unsupported)
    return 0


class _Signalled(BaseException):
    """SIGINT or SIGTERM, raised where the process is, so every ``finally`` (temporary files) runs.

    SIGINT gets this too rather than ``KeyboardInterrupt``: CPython remembers a
    ``KeyboardInterrupt`` that passed through code a C extension ran with ``PyRun_*`` and then
    kills itself with SIGINT at exit even though we caught it, losing the exit code. The
    subclasses take no arguments: code that re-raises ``type(exc)()`` must not turn them into
    a TypeError.
    """

    exit_code, what = 1, "stopped"


class _Interrupted(_Signalled):
    exit_code, what = 130, "interrupted"


class _Terminated(_Signalled):
    exit_code, what = 143, "terminated"


_SIGNALLED = {signal.SIGINT: _Interrupted, signal.SIGTERM: _Terminated}


# The signals received during this run. A library that catches exceptions raised in its own
# code can turn ours into an error of its own (onnxruntime's import reports "initialization
# failed"); a run a signal reached ends as signalled whatever error carried it out.
_received: list[type[_Signalled]] = []


# While a C extension initialises (torch's import, onnxruntime's), an exception raised into it
# aborts the process from C++ ("terminate called"): signals are only recorded then.
_deferring = threading.Event()


def _raise_signalled(signum, frame) -> None:
    _received.append(_SIGNALLED[signum])
    if not _deferring.is_set():
        raise _SIGNALLED[signum]()


def _import_engines() -> None:
    """Import the C extensions every command needs, with signals recorded, not raised: torch,
    onnxruntime, and onnx, onnxscript and their numeric types through the API (a SIGTERM
    raised into one of those 3 s into a run ended in a segmentation fault)."""
    _deferring.set()
    try:
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401

        from . import api, artifact  # noqa: F401
    finally:
        _deferring.clear()
    if _received:
        raise _received[-1]()


def _signalled(exc: _Signalled | None = None) -> int:
    """Say how the run ended and give its exit code: ``exc``, or the last signal received."""
    what = exc if exc is not None else _received[-1]
    print(f"shaprewrite: {what.what}", file=sys.stderr)
    return what.exit_code


def main(argv: list[str] | None = None) -> int:
    from .cli_explain import build_explain_parser, run_explain

    as_program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    commands = {"inspect": (build_inspect_parser, run_inspect), "explain": (build_explain_parser, run_explain)}
    command = argv[0] if argv and argv[0] in commands else None
    build, execute = commands.get(command, (build_parser, run))
    args = build().parse_args(argv[1:] if command else argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    _received.clear()
    previous = {sig: signal.signal(sig, _raise_signalled) for sig in _SIGNALLED} if in_main_thread else {}
    try:
        _import_engines()
        return execute(args)
    except _Signalled as exc:
        return _signalled(exc)
    except KeyboardInterrupt:  # a SIGINT that arrived before our handler was in place
        print("shaprewrite: interrupted", file=sys.stderr)
        return 130
    except ShapRewriteError as exc:
        if _received:
            return _signalled()
        print(f"shaprewrite: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # the promise is: no traceback, ever
        if _received:
            return _signalled()
        print(f"shaprewrite: internal error: {type(exc).__name__}: {exc}. This is a bug; please report it "
              "with the model.", file=sys.stderr)
        return 1
    finally:
        # Called in a process of its own, the work is over: a signal now must not turn a
        # finished run (its output written) into one killed by the signal.
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if as_program else handler)


if __name__ == "__main__":
    sys.exit(main())
