"""``coords.pkl``: face boxes ``(y1, y2, x1, x2)`` per frame, as LiveTalking pickles them."""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.base import atomic_file
from storage.errors import StorageError

MAX_COORDS_BYTES = 64 * 1024 * 1024

# Globals a coords.pkl may reference: numpy integer scalars and arrays (older upstream) and nothing else.
SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),
    ("builtins", "int"),
    ("builtins", "tuple"),
    ("builtins", "list"),
}

Box = tuple[int, int, int, int]


def write_coords(path: Path, coords: Sequence[Sequence[int]]) -> None:
    """Pickle ``coords`` as a list of plain-int ``(y1, y2, x1, x2)`` tuples (what upstream LiveTalking reads)."""
    boxes = [tuple(int(v) for v in box) for box in coords]
    if any(len(box) != 4 for box in boxes):
        raise ValueError("every coords entry must be (y1, y2, x1, x2)")
    with atomic_file(path) as fh:
        pickle.dump(boxes, fh, protocol=4)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in coords.pkl")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; avoid the deprecated alias
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return getattr(importlib.import_module(module), name)


def read_coords(path: Path) -> list[Box]:
    """Read ``coords.pkl`` (plain ints or numpy int64) without unpickling anything but numbers and lists."""
    if path.stat().st_size > MAX_COORDS_BYTES:
        raise StorageError("invalid_avatar", f"{path} is larger than {MAX_COORDS_BYTES} bytes")
    try:
        with path.open("rb") as fh:
            raw = _RestrictedUnpickler(fh).load()
    except Exception as exc:  # a hostile or corrupt pickle can raise almost anything
        raise StorageError("invalid_avatar", f"{path} is not a readable coords pickle: {exc}") from exc
    return _as_boxes(raw, path)


def _as_boxes(raw: Any, path: Path) -> list[Box]:
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)):
        raise StorageError("invalid_avatar", f"{path} holds a {type(raw).__name__}, expected a list of boxes")
    boxes: list[Box] = []
    for i, box in enumerate(raw):
        values = box.tolist() if isinstance(box, np.ndarray) else box
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 4
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
        ):
            raise StorageError("invalid_avatar", f"{path}: entry {i} is {box!r}, expected (y1, y2, x1, x2) integers")
        boxes.append((int(values[0]), int(values[1]), int(values[2]), int(values[3])))
    return boxes
