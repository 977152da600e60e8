"""The layout's rules, checked on the source: layering, no import cycles, no oversized modules.

Guards the structure pass: a change that makes `engines` import a bucket client, the orchestrator import an
engine, two modules import each other, or a module grow past what a reader can hold fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engines", "storage", "handlers", "realtime", "orchestrator")
ENTRY_MODULES = ("runpod_handler.py", "modal_app.py")
MAX_MODULE_LINES = 450

# Which of the project's packages each package may import (besides itself).
ALLOWED_IMPORTS = {
    "engines": set(),
    "storage": set(),
    "handlers": {"engines", "storage"},
    # live sessions render frame by frame through the engines, with the handlers' avatar and speech helpers
    "realtime": {"engines", "storage", "handlers"},
    "orchestrator": {"handlers", "storage", "realtime"},
}


def source_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    files += [ROOT / name for name in ENTRY_MODULES] + sorted((ROOT / "bench").rglob("*.py"))
    return [p for p in files if p.exists()]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Project modules a file imports at module level or inside functions (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES)
def test_layering_each_package_imports_only_the_layers_below(package: str) -> None:
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        for name in imported_modules(path):
            other = name.split(".")[0]
            if other != package and other not in ALLOWED_IMPORTS[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles_between_modules() -> None:
    """Imports inside functions count too: a lazy import that closes a loop still ties two modules together."""
    modules = {module_name(p): p for p in source_files() if p.parent.name != "bench"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path):
            # "from pkg import name" may name a submodule or an attribute: keep what is a module.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets

    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_the_line_budget() -> None:
    oversized = {
        str(p.relative_to(ROOT)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not oversized, f"modules over {MAX_MODULE_LINES} lines: {oversized}"
