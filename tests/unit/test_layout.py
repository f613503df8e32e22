"""The package layout stays readable: few top-level modules, no import cycle, short functions.

The layers themselves are checked by import-linter (`make lint`); this adds what a layers
contract cannot see: cycles through imports inside functions, and function length.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "curp_chain": REPO / "curp_chain",
    "curp_chain_stores": REPO / "stores" / "curp_chain_stores",
    "curp_chain_integrations": REPO / "integrations" / "curp_chain_integrations",
}
MAX_TOP_LEVEL_MODULES = 10
MAX_FUNCTION_LINES = 80


def _modules() -> Iterator[tuple[str, Path]]:
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file, functions included
    (``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = dict(_modules())
    known = set(modules)
    graph = {m: _imported(m, p, known) for m, p in modules.items()}
    # A package's __init__ is imported with any of its submodules, but importing a package
    # from its own submodule is not a cycle between modules: drop those edges.
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_modules_counting_imports_inside_functions() -> None:
    cycle = _find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_at_most_ten_modules_at_the_top_of_the_core() -> None:
    top = sorted(p.name for p in PACKAGES["curp_chain"].glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def _long_functions(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                yield f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)"


@pytest.mark.parametrize(
    "folder", ["curp_chain", "stores", "integrations", "benchmarks", "examples"]
)
def test_no_function_is_over_eighty_lines(folder: str) -> None:
    long = [f for path in sorted((REPO / folder).rglob("*.py")) for f in _long_functions(path)]
    assert not long, "\n".join(long)
