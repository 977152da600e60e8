"""Face analysis: detection boxes and 68-point landmarks behind one small interface.

Registry: name -> class. ``dlib_hog`` (CPU, models from pip packages) is the default; an
S3FD-compatible GPU detector can register here under another name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engines.registry import registrar


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in full-image pixels (x2, y2 exclusive) and the detector's score."""

    x1: int
    y1: int
    x2: int
    y2: int
    score: float = 1.0

    @property
    def area(self) -> int:
        return max(0, self.x2 - self.x1) * max(0, self.y2 - self.y1)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0


class FaceAnalyzer(Protocol):
    name: str

    def detect(self, image_bgr: np.ndarray, upsample: int = 0) -> list[FaceBox]:
        """Faces in the image, largest first."""
        ...

    def landmarks(self, image_bgr: np.ndarray, box: FaceBox) -> np.ndarray:
        """68 (x, y) points in image pixels, float32, iBUG 300-W order."""
        ...


FACE_ANALYZERS: dict[str, type] = {}
register = registrar(FACE_ANALYZERS)


def load_face_analyzer(name: str = "dlib_hog") -> FaceAnalyzer:
    """A new analyzer of the kind registered as ``name``, its models loaded (the caller keeps it)."""
    from engines.face import dlib_face  # noqa: F401  (registers the default)

    if name not in FACE_ANALYZERS:
        raise ValueError(f"unknown face analyzer {name!r}: registered {sorted(FACE_ANALYZERS)}")
    return FACE_ANALYZERS[name].load()


__all__ = ["FaceBox", "FaceAnalyzer", "FACE_ANALYZERS", "register", "load_face_analyzer"]
