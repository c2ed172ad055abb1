"""The layout rules of DESIGN.md, checked on the source: the web layer may
import the store and the engine, never the reverse; no import cycles; no
module over 400 lines. Modules are parsed with `ast`, never imported."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.one_backend  # the import graph only

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / "stepline").rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(node: ast.AST, at_import: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every import statement, and whether it runs when the module is imported
    (not inside a function, not under `if TYPE_CHECKING:`)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, at_import
        runs = at_import and not isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) \
            and not _type_checking_only(child)
        yield from _imports(child, runs)


def _targets(module: str, node: ast.AST) -> Iterator[str]:
    """The stepline modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        base = node.module or ""
        if node.level:
            package = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
            base = f"{package}.{base}".rstrip(".")
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                 for alias in node.names]
    for name in names:
        # the module itself, or the nearest package module that exists
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("stepline"):
            yield name


def graph() -> dict[str, dict[str, bool]]:
    """module -> {imported module: whether it is imported at import time}."""
    edges: dict[str, dict[str, bool]] = {}
    for module, path in MODULES.items():
        edges[module] = {}
        for node, at_import in _imports(ast.parse(path.read_text(), str(path)), True):
            for target in _targets(module, node):
                if target != module:
                    edges[module][target] = edges[module].get(target, False) or at_import
    return edges


def test_the_graph_is_read():
    edges = graph()
    assert "stepline.store.writes" in edges["stepline.web.app"]
    assert "stepline.engine.states" in edges["stepline.store.writes"]
    assert edges["stepline.web.http"].get("stepline.web.app") is False  # TYPE_CHECKING only


def test_store_and_engine_never_import_web():
    """Not even inside a function: the worker must run without Flask."""
    wrong = [f"{module} imports {target}" for module, targets in graph().items()
             if module.startswith(("stepline.store", "stepline.engine"))
             for target in targets if target.startswith("stepline.web")]
    assert not wrong, "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}  # "open" while on the current path, then "done"

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target] if target in path else [node, target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycles():
    at_import = {m: {t for t, runs in targets.items() if runs} for m, targets in graph().items()}
    cycle = find_cycle(at_import)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_400_lines():
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    print("largest modules:", ", ".join(f"{m} {n}" for m, n in
                                         sorted(sizes.items(), key=lambda kv: -kv[1])[:5]))
    over = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not over, f"over {MAX_LINES} lines: " + ", ".join(f"{m} ({n})" for m, n in over.items())
