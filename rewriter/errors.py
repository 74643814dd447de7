"""Typed errors: every failure the tool reports is one of these.

Each error says what failed, where (node name and op type when there is one) and what to
do about it, in one paragraph. The CLI prints ``str(error)`` and exits with the class's
``exit_code``; nothing else ever escapes the CLI as a traceback.
"""

from __future__ import annotations


def describe(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"``, at most ``limit`` characters: how a foreign
    exception is quoted inside one of these errors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:limit]


class ShapRewriteError(Exception):
    """Base class of every error shaprewrite raises on purpose."""

    exit_code = 1
    exit_text = "internal error"  # what the CLI's help says the exit code means

    def __init__(self, message: str, *, fix: str | None = None, node: str | None = None,
                 op_type: str | None = None) -> None:
        self.message = message
        self.fix = fix
        self.node = node
        self.op_type = op_type
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.node or self.op_type:
            parts = [f"node '{self.node}'" if self.node else "", f"op {self.op_type}" if self.op_type else ""]
            where = " (" + ", ".join(p for p in parts if p) + ")"
        text = f"{self.message.rstrip('.')}{where}."
        if self.fix:
            text += f" Fix: {self.fix.rstrip('.')}."
        return text


class InputError(ShapRewriteError):
    """The input could not be read, or is not a valid model."""

    exit_code = 3
    exit_text = "bad input"


class UnsupportedOpError(ShapRewriteError):
    """The graph uses ops that have no converter. ``ops`` maps op type to one node using it."""

    exit_code = 4
    exit_text = "unsupported op"

    def __init__(self, ops: dict[str, str]) -> None:
        self.ops = dict(sorted(ops.items()))
        listing = ", ".join(f"{op} (e.g. node '{node}')" for op, node in self.ops.items())
        custom = sorted({op.rsplit(".", 1)[0] for op in self.ops if "." in op})
        if custom:
            fix = (f"ops of the domain(s) {', '.join(custom)} are not standard ONNX: export the model without "
                   "custom ops (their producer's option for standard ops), or file an issue naming the op")
        else:
            fix = "shaprewrite has no converter for these standard ops yet: file an issue naming the op and the node"
        super().__init__(f"The model uses {len(self.ops)} op type(s) shaprewrite cannot import: {listing}", fix=fix)


class ConversionError(ShapRewriteError):
    """A supported op carries attributes or inputs the converter cannot translate faithfully."""

    exit_code = 4
    exit_text = "unsupported op"


class ExportError(ShapRewriteError):
    """The torch model could not be exported to ONNX."""

    exit_code = 5
    exit_text = "export failed"


class VerificationError(ShapRewriteError):
    """The rewritten model does not compute what the source computes.

    ``diffs`` holds one entry per output and checked batch: max absolute and max relative
    difference, and whether it passed.
    """

    exit_code = 6
    exit_text = "verification failed"

    def __init__(self, message: str, diffs: list[dict] | None = None, *, fix: str | None = None) -> None:
        self.diffs = list(diffs or [])
        lines = "; ".join(
            f"{d['output']} at batch {d['batch']}{' vs ' + d['reference'] if 'reference' in d else ''}: "
            f"max abs diff {d['max_abs']:.3g}, "
            f"max rel diff {d['max_rel']:.3g}" for d in self.diffs if not d["ok"])
        super().__init__(f"{message}: {lines}" if lines else message, fix=fix)


class BatchHeldError(VerificationError):
    """The graph runs on the example's batch but not on another batch size: something in it
    is sized by the example's batch (a torch model caching batch-sized tensors on itself, an
    ONNX file with its batch written into a shape)."""


class AdditivityError(ShapRewriteError):
    """Attributions that do not add up: found by the self-check, or by :func:`rewriter.explain`
    on the rows it names in ``rows`` (or an explainer failed)."""

    exit_code = 7
    exit_text = "attributions do not add up"

    def __init__(self, message: str, *, fix: str | None = None, rows: list[int] | None = None) -> None:
        self.rows = list(rows or [])
        super().__init__(message, fix=fix)


class OutputError(ShapRewriteError):
    """The output file could not be written where asked."""

    exit_code = 8
    exit_text = "cannot write output"


class EngineError(ShapRewriteError):
    """The distributed engine failed: it could not start, or a worker kept failing after
    its retries."""

    exit_code = 9
    exit_text = "the Ray engine failed"


def exit_codes(*errors: type[ShapRewriteError]) -> str:
    """The help text listing a command's exit codes, read from the errors it can end with."""
    import textwrap

    meanings = {0: "ok", 1: "internal error", 2: "usage"}
    for error in sorted(errors, key=lambda e: e.exit_code):
        meanings.setdefault(error.exit_code, error.exit_text)
    listing = ", ".join(f"{code} {text}" for code, text in sorted(meanings.items()))
    return textwrap.fill(f"exit codes: {listing}", 88) + "\n"
