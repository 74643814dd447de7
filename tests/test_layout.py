"""The project's layout holds: the ONNX toolkit imports nothing above it, ``rewriter/`` reaches
into ``passes/`` only through the package (to run the pipeline and read its results), and
top-level imports have no cycles (``make imports`` prints the same graph)."""

from __future__ import annotations

from import_graph import arrows, cycles, into_passes


def test_rewriter_reaches_the_passes_only_through_the_package():
    assert {b for _, b in into_passes()} == {"rewriter.passes"}, into_passes()


def test_the_toolkit_imports_nothing_above_it():
    """Outside itself it reads only leaf modules (errors, naming), which import nothing."""
    found = arrows(top_level_only=True)
    importers = {a for a, _ in found}
    above = {(a, b) for a, b in found
             if a.startswith("rewriter.onnxkit") and not b.startswith("rewriter.onnxkit") and b in importers}
    assert above == set()


def test_no_import_cycles():
    assert cycles() == []


def test_every_op_has_its_tests_beside_it_under_the_same_name():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ops = {p.stem for p in (root / "rewriter" / "ops").glob("*.py") if p.stem != "__init__"}
    tested = {p.stem.removeprefix("test_") for p in (root / "tests" / "ops").glob("test_*.py")}
    assert sorted(ops - tested) == []
