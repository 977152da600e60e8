"""The layout in figures: modules and import layers per package, and where the error codes live.

    python -m bench.structure_report

Per folder (a package or sub-package): its own modules (``__init__`` aside), the layers of the import graph
among them (the modules on its longest import chain), and for a top-level package the same over all its
sub-packages. Then the error codes: how many distinct codes are raised, in how many files, and which classes
store a ``code`` themselves (coded-error bases).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tools.source_map import (
    PACKAGES,
    ROOT,
    coded_bases,
    import_graph,
    layers,
    package_files,
    raised_codes,
    source_files,
)


def _modules(files: list[Path]) -> list[Path]:
    return [p for p in files if p.name != "__init__.py"]


def builds_error_body(path: Path) -> bool:
    """Whether the file writes a ``{"error": ..., "error_code": ...}`` dict literal itself."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if {"error", "error_code"} <= keys:
                return True
    return False


def folder_rows() -> list[tuple[str, int, int]]:
    rows = []
    for package in PACKAGES:
        files = package_files(package)
        if not files:
            continue
        rows.append((f"{package}/ (all)", len(_modules(files)), layers(import_graph(files))))
        for folder in sorted({p.parent for p in files}):
            own = [p for p in files if p.parent == folder]
            name = f"{folder.relative_to(ROOT)}/"
            rows.append((name, len(_modules(own)), layers(import_graph(own))))
    return rows


def main() -> None:
    print(f"{'folder':<34} {'modules':>7} {'layers':>6}")
    for name, modules, depth in folder_rows():
        print(f"{name:<34} {modules:>7} {depth:>6}")
    files = source_files(with_bench=False)
    homes = raised_codes(files)
    raising = {p for paths in homes.values() for p in paths}
    bases = coded_bases(files)
    print()
    print(f"distinct error codes raised: {len(homes)}")
    print(f"files raising or answering codes: {len(raising)}")
    print(
        f"coded-error bases ({len(bases)}):",
        ", ".join(f"{n} ({p.relative_to(ROOT)})" for n, p in sorted(bases.items())),
    )
    body_homes = sorted(str(p.relative_to(ROOT)) for p in files if builds_error_body(p))
    print(f"files building an error body ({len(body_homes)}):", ", ".join(body_homes))


if __name__ == "__main__":
    main()
