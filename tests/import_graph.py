"""The project's import graph, read from its source with ``ast``: which module imports which
(top-level and inside functions), the arrows from ``rewriter/`` into ``passes/``, and any
cycles among top-level imports. ``make imports`` prints it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rewriter": ROOT / "rewriter", "rewriter.passes": ROOT / "passes"}


def modules() -> dict[str, Path]:
    """Every module of the project by its installed name."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "rewriter" and parts[:1] == ("passes",):
                continue
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    target = f"{base}.{node.module}" if node.module and node.level else (node.module or base)
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def arrows(top_level_only: bool = False) -> set[tuple[str, str]]:
    """(importer, imported) pairs between the project's modules."""
    known = modules()
    found = set()
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(module, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found.update((module, t) for t in targets if t in known and t != module)
    return found


def into_passes() -> list[tuple[str, str]]:
    """Arrows from ``rewriter`` modules (not the passes themselves) into ``rewriter.passes``."""
    return sorted((a, b) for a, b in arrows() if not a.startswith("rewriter.passes")
                  and b.startswith("rewriter.passes"))


def cycles() -> list[list[str]]:
    """Cycles among top-level imports (a package importing its own modules aside)."""
    graph: dict[str, set[str]] = {}
    for a, b in arrows(top_level_only=True):
        if not b.startswith(a + "."):
            graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


if __name__ == "__main__":
    arrows_in = into_passes()
    print(f"{len(arrows_in)} import arrows from rewriter/ into passes/:")
    for a, b in arrows_in:
        print(f"  {a} -> {b}")
    found = cycles()
    print(f"{len(found)} import cycles among top-level imports" + (":" if found else ""))
    for cycle in found:
        print("  " + " -> ".join(cycle))
    sys.exit(0)
