"""The package's shape (issue 12): no import circles, and each layer imports only below it.

Read from the source with ``ast`` (nothing is imported), so a circle hidden in a
function-level import counts as much as one at the top of a module. Imports
under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fwd"
GENERATED = PACKAGE / "api" / "gen"
MAX_LINES = 420  # "a module past ~400 lines is asking to be split" (STYLE.md 13)
# Known to be too long, with the reason; remove an entry when its module is split.
TOO_LONG: dict[str, str] = {
    "fwd.actors.datapath": "issue 16 added no-op set changes (438 lines): the set-change "
    "handler belongs in fwd/core/tables.py next to the other pure pieces",
}

# What each layer must never import (prefixes of module names).
FORBIDDEN = {
    "fwd.kernel": ("fwd.actors", "fwd.api", "fwd.cli", "fwd.cluster", "fwd.messages",
                   "fwd.metrics", "fwd.agent", "fwd.store", "fwd.settings", "fwd.testing"),
    "fwd.core": ("fwd.kernel", "fwd.actors", "fwd.api", "fwd.cli", "fwd.cluster", "fwd.metrics",
                 "fwd.agent", "fwd.store", "fwd.testing"),
    "fwd.policy": ("fwd.kernel", "fwd.actors", "fwd.api", "fwd.cli", "fwd.cluster",
                   "fwd.messages", "fwd.metrics", "fwd.agent", "fwd.store", "fwd.testing"),
    "fwd.messages": ("fwd.kernel", "fwd.actors", "fwd.api", "fwd.cli", "fwd.cluster",
                     "fwd.metrics", "fwd.agent", "fwd.store", "fwd.testing"),
    "fwd.api": ("fwd.kernel", "fwd.actors", "fwd.cli", "fwd.agent", "fwd.store"),
    "fwd.cli": ("fwd.actors", "fwd.kernel.dataplane", "fwd.store"),
    "fwd.cluster": ("fwd.kernel", "fwd.actors", "fwd.api", "fwd.cli", "fwd.agent"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {
        module_name(p): p
        for p in sorted(PACKAGE.rglob("*.py"))
        if GENERATED not in p.parents
    }


def _type_checking_block(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The fwd modules ``name`` imports (``from a import b`` counts as ``a.b`` when
    that is a module, else as ``a``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if _type_checking_block(node):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m == "fwd" or m.startswith("fwd.")}


def graph() -> dict[str, set[str]]:
    mods = sources()
    known = set(mods)
    return {name: imports_of(name, path, known) & known for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(edges, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = GREY
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt == "fwd":
                continue
            if color[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if color[nxt] == WHITE and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        color[node] = BLACK
        return None

    for node in sorted(edges):
        if color[node] == WHITE and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_checker_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_import_only_below_them() -> None:
    wrong = []
    for name, deps in graph().items():
        for layer, forbidden in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [
                    f"{name} imports {d}" for d in sorted(deps)
                    if any(d == f or d.startswith(f + ".") for f in forbidden)
                ]
    assert wrong == []


def test_every_actor_lives_in_actors() -> None:
    """An actor is a class with an ``async def run(self, *, task_status ...)``; they
    all live in fwd/actors/ (fakes in fwd/testing/ aside)."""
    outside = []
    for name, path in sources().items():
        if name.startswith(("fwd.actors", "fwd.testing")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AsyncFunctionDef) and node.name == "run" and any(
                a.arg == "task_status" for a in node.args.kwonlyargs
            ):
                outside.append(f"{name}:{node.lineno}")
    assert outside == []


def test_modules_are_small() -> None:
    big = {
        name: n for name, path in sources().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES and name not in TOO_LONG
    }
    assert big == {}
