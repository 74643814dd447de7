"""``shaprewrite explain MODEL.pt --inputs X.npy --background BG.npy --out ATTR.npy``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .arrays import read_arrays
from .errors import AdditivityError, EngineError, InputError, OutputError, exit_codes
from .files import check_output_path

EXAMPLES = """\
examples:
  shaprewrite explain model.pt --inputs rows.npy --background background.npy --out attributions.npy
  shaprewrite explain model.pt --inputs rows.npz --background bg.npz --out attributions.npz --explainer captum
  shaprewrite explain model.pt --inputs rows.npy --background bg.npy --out a.npy --engine ray --plot a.png
  shaprewrite explain text.pt --inputs batch.npz --reference 0 --keep-tokens 101,102 --out a.npy \\
      --plot a.png --tokens vocab.txt

Inputs are .npy (one model input) or .npz (one array per model input, by the names the
model was rewritten with, such as input_ids and attention_mask). References are the rows of
--background, or, for token ids, each row with its ids replaced by --reference but
--keep-tokens. The output has the explained inputs' shape plus one axis for the model's
outputs (per token for ids): .npy for one explained input, .npz (named like the inputs)
for several. Every batch is checked to add up to f(x) - mean f(references); a row above
--threshold fails the run (exit 7) and nothing is written.

""" + exit_codes(InputError, AdditivityError, OutputError, EngineError)


def _token(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a token id (a whole number >= 0), got '{text}'")
    return int(text)


def _tokens(text: str) -> tuple[int, ...]:
    return tuple(_token(part.strip()) for part in text.split(",") if part.strip())


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value != float("inf")):  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got '{text}'")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'")
    return int(text)


def build_explain_parser() -> argparse.ArgumentParser:
    from .explanation import ENGINES, EXPLAINERS

    parser = argparse.ArgumentParser(
        prog="shaprewrite explain", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Explain every row of a dataset with a rewritten model, against a background, and save the "
                    "attributions.")
    parser.add_argument("model", help="a model written by `shaprewrite` or rewriter.save (.pt)")
    parser.add_argument("--inputs", required=True, metavar="X", help="rows to explain (.npy or .npz)")
    parser.add_argument("--background", metavar="BG", help="background rows (.npy or .npz)")
    parser.add_argument("--reference", type=_token, metavar="TOKEN_ID",
                        help="instead of a background: each row with its token ids replaced by this id (a pad or "
                             "mask id), but those in --keep-tokens")
    parser.add_argument("--keep-tokens", type=_tokens, default=(), metavar="ID,ID",
                        help="token ids the --reference keeps (the classifier and separator ids)")
    parser.add_argument("--tokens", metavar="VOCAB",
                        help="a vocabulary file (one token per line, the line number is the id) to label the plot")
    parser.add_argument("--out", required=True, metavar="ATTR", help="where to write the attributions")
    parser.add_argument("--explainer", choices=EXPLAINERS, default="exact",
                        help="exact (default: every row, reference and output at once, shap's numbers), shap "
                             "(DeepExplainer) or captum (DeepLiftShap)")
    parser.add_argument("--outputs", type=_tokens, metavar="K,K", help="explain only these outputs")
    parser.add_argument("--top-k", type=_positive, metavar="K", help="explain each row's K largest outputs")
    parser.add_argument("--memory-budget-mib", type=_positive, default=2048, metavar="MIB",
                        help="activations the exact engine holds at once (default 2048)")
    parser.add_argument("--batch-size", type=_positive, default=64, metavar="N", help="rows per batch (default 64)")
    parser.add_argument("--engine", choices=ENGINES, default="local", help="default local")
    parser.add_argument("--address", help="the Ray cluster to use (default: start a local one)")
    parser.add_argument("--workers", type=_positive, help="Ray workers (default: one per CPU of the cluster)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--output", type=int, metavar="INDEX", help="which output, for a model with several")
    parser.add_argument("--threshold", type=_threshold, default=1e-4,
                        help="largest relative additivity error accepted per row (default 1e-4)")
    parser.add_argument("--plot", metavar="PNG", help="also save a plot of the attributions")
    parser.add_argument("--force", action="store_true", help="overwrite ATTR (and PNG) if they exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def _write_attributions(path: Path, names: list[str], values: list[np.ndarray], force: bool) -> None:
    from .files import write_atomically

    if path.suffix == ".npz":
        write_atomically(lambda handle: np.savez(handle, **dict(zip(names, values))), path, overwrite=force)
    else:
        write_atomically(lambda handle: np.save(handle, values[0]), path, overwrite=force)


def _as_given(arrays: dict[str, np.ndarray], path: str):
    """One array (a .npy) positionally; the arrays of a .npz by name."""
    return next(iter(arrays.values())) if Path(path).suffix != ".npz" else arrays


def _vocabulary(path: str | None) -> list[str] | None:
    if path is None:
        return None
    from .files import read_input

    try:
        return read_input(path, "vocabulary file", limit=1 << 28).decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"the vocabulary file '{path}' is not UTF-8 text", fix="give one token per line") from exc


def run_explain(args: argparse.Namespace) -> int:
    from .explanation import run_explanation

    out = Path(args.out)
    inputs = read_arrays(args.inputs)
    background = read_arrays(args.background) if args.background else None
    vocabulary = _vocabulary(args.tokens)
    check_output_path(out, args.force)
    if args.plot:
        check_output_path(Path(args.plot), args.force)
    show = not args.quiet
    result = run_explanation(args.model, _as_given(inputs, args.inputs),
                             None if background is None else _as_given(background, args.background),
                             reference=args.reference, keep_tokens=args.keep_tokens,
                             explainer=args.explainer, outputs=args.outputs, top_k=args.top_k,
                             memory_budget=args.memory_budget_mib * 2**20, batch_size=args.batch_size, engine=args.engine,
                             device=args.device, progress=show and sys.stderr.isatty(), threshold=args.threshold,
                             address=args.address, workers=args.workers, output=args.output)
    if len(result.attributions) > 1 and out.suffix != ".npz":
        raise OutputError(f"the model has {len(result.attributions)} explained inputs ({', '.join(result.names)}), "
                          f"so the attributions are {len(result.attributions)} arrays", fix="name the output .npz")
    names, values = result.names, result.attributions
    if args.outputs is not None or args.top_k is not None:  # which output each last axis entry is
        names, values = [*names, "outputs"], [*values, result.outputs]
        if out.suffix != ".npz":
            raise OutputError("with --outputs or --top-k the attributions come with the outputs they explain",
                              fix="name the output .npz")
    _write_attributions(out, names, values, args.force)
    if args.plot:
        from .plots import plot_attributions

        explained = inputs.get(result.names[0], next(iter(inputs.values())))
        plot_attributions(result.attributions[0], explained, Path(args.plot), tokens=vocabulary)
    for note in result.notes if show else ():
        print(f"shaprewrite: note: {note}", file=sys.stderr)
    if show:
        print(f"shaprewrite: explained {result.rows} rows in {result.seconds:.1f} s "
              f"({result.rows_per_second:.1f} rows/s) with {args.explainer} on the {args.engine} engine; "
              f"worst additivity error {result.worst_error:.3g} (threshold {args.threshold:g})", file=sys.stderr)
        print(f"shaprewrite: wrote {out}{f' and {args.plot}' if args.plot else ''}", file=sys.stderr)
    return 0
