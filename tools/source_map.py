"""The source read as data: project modules, their import graph, and the error codes raised anywhere.

Shared by ``tests/test_structure.py`` (layering, cycles), ``tests/test_error_codes.py`` (every code raised is
in the table) and ``bench/structure_report.py`` (modules, layers and error-code homes per package).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("errors", "engines", "storage", "handlers", "realtime", "orchestrator")
ENTRY_MODULES = ("runpod_handler.py", "modal_app.py")
CODE_PATTERN = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
CODE_KEYWORDS = ("code", "error_code")
BODY_BUILDERS = ("error_body", "error_response", "failure", "worker_failure")  # (..., code, message) -> a body


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def source_files(with_bench: bool = True) -> list[Path]:
    files = [p for pkg in PACKAGES for p in package_files(pkg)]
    files += [ROOT / name for name in ENTRY_MODULES]
    if with_bench:
        files += sorted((ROOT / "bench").rglob("*.py"))
    return [p for p in files if p.exists()]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(path: Path) -> set[str]:
    """Project modules a file imports at module level or inside functions (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
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


def import_graph(files: Iterable[Path]) -> dict[str, set[str]]:
    """Module -> the modules among ``files`` it imports ("from pkg import name" counts when name is a module)."""
    modules = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    return graph


def layers(graph: dict[str, set[str]]) -> int:
    """The number of modules on the longest import chain (a package's depth); cycles count once."""
    depth: dict[str, int] = {}

    def visit(node: str, seen: frozenset[str]) -> int:
        if node in depth:
            return depth[node]
        below = [visit(n, seen | {node}) for n in graph.get(node, ()) if n not in seen and n in graph]
        depth[node] = 1 + max(below, default=0)
        return depth[node]

    return max((visit(n, frozenset()) for n in graph), default=0)


# -- error codes ---------------------------------------------------------------------------------------------


def _base_names(node: ast.ClassDef) -> list[str]:
    names = []
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def _sets_code(node: ast.ClassDef) -> bool:
    """A class whose own ``__init__`` stores a ``code`` attribute (a coded-error base)."""
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            for sub in ast.walk(item):
                if isinstance(sub, ast.Attribute) and sub.attr == "code" and isinstance(sub.ctx, ast.Store):
                    return True
    return False


@cache
def _classes(files: tuple[Path, ...]) -> dict[str, tuple[list[str], bool, Path]]:
    classes: dict[str, tuple[list[str], bool, Path]] = {}
    for path in files:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = (_base_names(node), _sets_code(node), path)
    return classes


def coded_bases(files: Iterable[Path]) -> dict[str, Path]:
    """Class name -> file, for each class that stores a ``code`` itself (a base of coded errors)."""
    return {name: path for name, (_, sets, path) in _classes(tuple(files)).items() if sets}


def coded_classes(files: Iterable[Path]) -> set[str]:
    """Every class name that is, or derives from, a coded-error base."""
    classes = _classes(tuple(files))
    coded = {name for name, (_, sets, _) in classes.items() if sets}
    grown = True
    while grown:
        grown = False
        for name, (bases, _, _) in classes.items():
            if name not in coded and any(b in coded for b in bases):
                coded.add(name)
                grown = True
    return coded


def _strings(node: ast.AST | None, names: dict[str, list[str]]) -> list[str]:
    """The code-shaped strings an expression may evaluate to: literals, conditionals, and the names and dict
    look-ups the same file assigns them to."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if CODE_PATTERN.fullmatch(node.value) else []
    if isinstance(node, ast.IfExp):
        return _strings(node.body, names) + _strings(node.orelse, names)
    if isinstance(node, ast.BoolOp):
        return [s for value in node.values for s in _strings(value, names)]
    if isinstance(node, ast.Name):
        return names.get(node.id, [])
    if isinstance(node, ast.Subscript):  # a dict's look-up, or a slice of a code
        return _strings(node.value, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        base = node.func.value
        return names.get(base.id, []) if isinstance(base, ast.Name) else []
    return []


def _assigned_strings(tree: ast.Module) -> dict[str, list[str]]:
    """Name -> the code-shaped strings assigned to it anywhere in the file (a dict: its values)."""
    names: dict[str, list[str]] = defaultdict(list)
    assignments = [n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign))]
    for node in assignments + assignments:  # twice: a name assigned from another name assigned later
        if node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if isinstance(value, ast.Dict):
                strings = [s for v in value.values for s in _strings(v, names)]
            else:
                strings = _strings(value, names)
            for target in targets:
                if isinstance(target, ast.Name):
                    names[target.id] = sorted(set(names[target.id]) | set(strings))
    return names


def _callee(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _codes_in_file(path: Path, coded: set[str]) -> set[str]:
    tree = _tree(path)
    constants = _assigned_strings(tree)
    found: set[str] = set()
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name in coded]:
        for node in ast.walk(cls):  # super().__init__("code", ...) in a coded class
            if isinstance(node, ast.Call) and _callee(node) == "__init__" and node.args:
                found.update(_strings(node.args[0], constants))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if _callee(node) in coded or _callee(node) in BODY_BUILDERS:  # the first code-shaped positional argument
                for arg in node.args[:3]:
                    if strings := _strings(arg, constants):
                        found.update(strings)
                        break
            for keyword in node.keywords:
                if keyword.arg in CODE_KEYWORDS:
                    found.update(_strings(keyword.value, constants))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=False):
                if isinstance(key, ast.Constant) and key.value == "error_code":
                    found.update(_strings(value, constants))
    return found


def raised_codes(files: Iterable[Path] | None = None) -> dict[str, set[Path]]:
    """Error code -> the files that raise or answer it (literals passed to coded errors and error bodies)."""
    files = list(files) if files is not None else source_files(with_bench=False)
    coded = coded_classes(files)
    homes: dict[str, set[Path]] = defaultdict(set)
    for path in files:
        for code in _codes_in_file(path, coded):
            homes[code].add(path)
    return dict(homes)
