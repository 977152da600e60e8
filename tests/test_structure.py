"""The layout's rules, checked on the source: layering, no import cycles, no oversized modules.

Guards the structure pass: a change that makes `engines` import a bucket client, the orchestrator import an
engine, two modules import each other, or a module grow past what a reader can hold fails here.
"""

from __future__ import annotations

import pytest

from tools.source_map import PACKAGES, ROOT, import_graph, imported_modules, source_files

MAX_MODULE_LINES = 450

# Which of the project's packages each package may import (besides itself). `errors` (the coded error and the
# table of codes) is the lowest layer: every package may import it.
ALLOWED_IMPORTS = {
    "errors": set(),
    "engines": {"errors"},
    "storage": {"errors"},
    "handlers": {"errors", "engines", "storage"},
    # live sessions render frame by frame through the engines, with the handlers' avatar and speech helpers
    "realtime": {"errors", "engines", "storage", "handlers"},
    "orchestrator": {"errors", "handlers", "storage", "realtime"},
}


# Inside the orchestrator: which of its folders each folder may import (besides itself). The core (what runs in
# production behind the API) never imports the API, the CLI or the developer tools; the API imports the core
# only; the CLI (it starts the API, a replica, or a developer tool) and the developer tools may import anything.
ORCHESTRATOR_FOLDERS = {
    "core": set(),
    "api": {"core"},
    "cli": {"core", "api", "devtools"},
    "devtools": {"core", "api", "cli"},
}


@pytest.mark.parametrize("package", PACKAGES)
def test_layering_each_package_imports_only_the_layers_below(package: str) -> None:
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        for name in imported_modules(path):
            other = name.split(".")[0]
            if other != package and other not in ALLOWED_IMPORTS[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("folder", ORCHESTRATOR_FOLDERS)
def test_orchestrator_folders_import_only_what_their_rules_allow(folder: str) -> None:
    offenders = []
    for path in (ROOT / "orchestrator" / folder).rglob("*.py"):
        for name in imported_modules(path):
            parts = name.split(".")
            other = parts[1] if parts[0] == "orchestrator" and len(parts) > 1 else None
            if other is not None and other != folder and other not in ORCHESTRATOR_FOLDERS[folder]:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_orchestrator_modules_live_in_its_folders() -> None:
    """Only the package's docstring sits at the top: every module says by its folder whether it runs in production."""
    loose = sorted(p.name for p in (ROOT / "orchestrator").glob("*.py") if p.name != "__init__.py")
    folders = sorted(p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").exists())
    assert not loose, f"modules outside orchestrator's folders: {loose}"
    assert folders == sorted(ORCHESTRATOR_FOLDERS), folders


def test_no_import_cycles_between_modules() -> None:
    """Imports inside functions count too: a lazy import that closes a loop still ties two modules together."""
    graph = import_graph(p for p in source_files() if p.parent.name != "bench")

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
