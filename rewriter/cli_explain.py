"""``shaprewrite explain MODEL.pt --inputs X.npy --background BG.npy --out ATTR.npy``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import InputError, OutputError

EXAMPLES = """\
examples:
  shaprewrite explain model.pt --inputs rows.npy --background background.npy --out attributions.npy
  shaprewrite explain model.pt --inputs rows.npz --background bg.npz --out attributions.npz --explainer captum
  shaprewrite explain model.pt --inputs rows.npy --background bg.npy --out a.npy --engine ray --plot a.png

Inputs are .npy (one model input) or .npz (one array per model input, in the file's
order). The output has the inputs' shape plus one axis for the model's outputs: .npy for one
input, .npz (named like the inputs) for several. Every batch is checked to add up to
f(x) - E[f(background)]; a row above --threshold fails the run (exit 7) and nothing is written.

exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 7 attributions do not add up,
8 cannot write output, 9 the Ray engine failed
"""


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'")
    return int(text)


def build_explain_parser() -> argparse.ArgumentParser:
    from .explaining import ENGINES, EXPLAINERS

    parser = argparse.ArgumentParser(
        prog="shaprewrite explain", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Explain every row of a dataset with a rewritten model, against a background, and save the "
                    "attributions.")
    parser.add_argument("model", help="a model written by `shaprewrite` or rewriter.save (.pt)")
    parser.add_argument("--inputs", required=True, metavar="X", help="rows to explain (.npy or .npz)")
    parser.add_argument("--background", required=True, metavar="BG", help="background rows (.npy or .npz)")
    parser.add_argument("--out", required=True, metavar="ATTR", help="where to write the attributions")
    parser.add_argument("--explainer", choices=EXPLAINERS, default="shap", help="default shap (DeepExplainer)")
    parser.add_argument("--batch-size", type=_positive, default=64, metavar="N", help="rows per batch (default 64)")
    parser.add_argument("--engine", choices=ENGINES, default="local", help="default local")
    parser.add_argument("--address", help="the Ray cluster to use (default: start a local one)")
    parser.add_argument("--workers", type=_positive, help="Ray workers (default: one per CPU of the cluster)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--output", type=int, metavar="INDEX", help="which output, for a model with several")
    parser.add_argument("--threshold", type=float, default=1e-4,
                        help="largest relative additivity error accepted per row (default 1e-4)")
    parser.add_argument("--plot", metavar="PNG", help="also save a plot of the attributions")
    parser.add_argument("--force", action="store_true", help="overwrite ATTR (and PNG) if they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of a .npy or .npz file by name, in the file's order; never unpickles."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"'{path}' does not exist or is not a file", fix="check the path")
    try:
        loaded = np.load(file, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {file.stem: loaded}
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"'{path}' is not a .npy or .npz file of plain arrays ({exc})",
                         fix="save the rows with numpy.save or numpy.savez") from exc


def _check_writable(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputError(f"output '{path}' already exists", fix="pass --force to overwrite it")
    if path.is_dir() or not path.parent.is_dir():
        raise OutputError(f"cannot write '{path}': its directory does not exist or it is one",
                          fix="give a file path in an existing directory")


def _write_attributions(path: Path, names: list[str], values: list[np.ndarray], force: bool) -> None:
    from .files import write_atomically

    if path.suffix == ".npz":
        write_atomically(lambda handle: np.savez(handle, **dict(zip(names, values))), path, overwrite=force)
    else:
        write_atomically(lambda handle: np.save(handle, values[0]), path, overwrite=force)


def run_explain(args: argparse.Namespace) -> int:
    from .explaining import run_explanation

    out = Path(args.out)
    inputs, background = read_arrays(args.inputs), read_arrays(args.background)
    if len(inputs) > 1 and out.suffix != ".npz":
        raise OutputError(f"the model has {len(inputs)} inputs, so the attributions are {len(inputs)} arrays",
                          fix="name the output .npz")
    _check_writable(out, args.force)
    if args.plot:
        _check_writable(Path(args.plot), args.force)
    show = not args.quiet
    result = run_explanation(args.model, tuple(inputs.values()), tuple(background.values()),
                             explainer=args.explainer, batch_size=args.batch_size, engine=args.engine,
                             device=args.device, progress=show and sys.stderr.isatty(), threshold=args.threshold,
                             address=args.address, workers=args.workers, output=args.output)
    _write_attributions(out, list(inputs), result.attributions, args.force)
    if args.plot:
        from .plots import plot_attributions

        plot_attributions(result.attributions[0], next(iter(inputs.values())), Path(args.plot))
    if show:
        print(f"shaprewrite: explained {result.rows} rows in {result.seconds:.1f} s "
              f"({result.rows_per_second:.1f} rows/s) with {args.explainer} on the {args.engine} engine; "
              f"worst additivity error {result.worst_error:.3g} (threshold {args.threshold:g})", file=sys.stderr)
        print(f"shaprewrite: wrote {out}{f' and {args.plot}' if args.plot else ''}", file=sys.stderr)
    return 0
