"""The package's structure, checked by reading its source (ast), not by importing it.

- no import cycle among bottle_mcp's modules (imports under TYPE_CHECKING and inside functions count);
- only the backends (and the CLI, which chooses the backend) reach docker-py or the Docker backend;
- no function is over 100 lines outside bottle_mcp/data/ (the in-bottle programs).

Offenders in the backend layer, reworked separately, are listed by name below; each list must
shrink to empty as that work lands, and a fixed offender left on a list fails the test too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "bottle_mcp"
MAX_FUNCTION_LINES = 100

# Known offenders, to be emptied by the backend-layer rework (engine code moved under backends/docker/).
KNOWN_ENGINE_IMPORTS: set[tuple[str, str]] = set()
KNOWN_LONG_FUNCTIONS: set[str] = set()


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def _modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.parts[1] == "data":  # programs that run inside containers, not modules of the server
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


MODULES = _modules()


def _imports(mod: Module) -> set[str]:
    """Every module name `mod` imports, absolute, anywhere in its source."""
    out: set[str] = set()
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from . import labels` imports the module bottle_mcp.labels, not a name of the package.
            submodules = {f"{target}.{alias.name}" for alias in node.names} & MODULES.keys()
            out |= submodules
            if len(submodules) < len(node.names):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    return {name: {i for i in _imports(mod) if i in MODULES and i != name} for name, mod in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_reader_finds_the_package_and_its_imports() -> None:
    # A reader that found nothing would pass every check below.
    assert {"bottle_mcp.service", "bottle_mcp.live", "bottle_mcp.backends.docker.backend"} <= set(MODULES)
    graph = _graph()
    assert "bottle_mcp.live" in graph["bottle_mcp.delegate"]
    assert "bottle_mcp.labels" in graph["bottle_mcp.backends.fake"]  # `from .. import labels as L`
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_the_packages_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_lifecycle_and_delegation_parts_do_not_import_each_other() -> None:
    graph = _graph()
    assert not graph["bottle_mcp.delegate"] & {"bottle_mcp.service", "bottle_mcp.lifecycle"}
    assert not graph["bottle_mcp.lifecycle"] & {"bottle_mcp.service", "bottle_mcp.delegate"}
    assert not graph["bottle_mcp.live"] & {"bottle_mcp.service", "bottle_mcp.lifecycle", "bottle_mcp.delegate"}


def _engine_imports() -> set[tuple[str, str]]:
    found = set()
    for name, mod in MODULES.items():
        if name.startswith("bottle_mcp.backends") or name == "bottle_mcp.cli":
            continue
        for target in _imports(mod):
            if target == "docker" or target.startswith("docker."):
                found.add((name, "docker"))
            elif target.startswith("bottle_mcp.backends.docker"):
                found.add((name, "bottle_mcp.backends.docker"))
    return found


def test_only_the_backends_reach_the_engine() -> None:
    found = _engine_imports()
    assert found - KNOWN_ENGINE_IMPORTS == set(), "these modules reach docker-py or the Docker backend"
    assert KNOWN_ENGINE_IMPORTS - found == set(), "fixed: remove them from KNOWN_ENGINE_IMPORTS"


def _long_functions() -> dict[str, int]:
    found = {}
    for name, mod in MODULES.items():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found[f"{name}.{node.name}"] = lines
    return found


def test_no_function_is_over_100_lines() -> None:
    found = _long_functions()
    assert set(found) - KNOWN_LONG_FUNCTIONS == set(), f"functions over {MAX_FUNCTION_LINES} lines: {found}"
    assert KNOWN_LONG_FUNCTIONS - set(found) == set(), "fixed: remove them from KNOWN_LONG_FUNCTIONS"
