"""Face analysis: detection boxes and 68-point landmarks behind one small interface.

Registry: name -> class. ``dlib_hog`` (CPU, models from pip packages) is the default; an
S3FD-compatible GPU detector can register here under another name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engines.constants import MAX_FACE_INDEX
from engines.errors import EngineError
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


@dataclass(frozen=True)
class FoundFace:
    """The face an image task works on: its box and landmarks, how many faces the image has, which one this is."""

    box: FaceBox
    landmarks: np.ndarray
    faces_found: int
    index: int  # 0 = the largest


def choose_face(boxes: list[FaceBox], face_index: int | None) -> tuple[FaceBox, int] | None:
    """The face ``face_index`` of ``boxes`` ordered largest first (None: the largest); None when there is no such
    face."""
    ranked = sorted(boxes, key=lambda b: b.area, reverse=True)
    index = face_index or 0
    return (ranked[index], index) if index < len(ranked) else None


def find_face(
    image: np.ndarray, analyzer: FaceAnalyzer, face_index: int | None = None, upsamples: tuple[int, ...] = (0, 1)
) -> FoundFace:
    """The largest face of an image (or its ``face_index``-th largest) and its landmarks. Each detector
    upsampling in turn until one finds it; EngineError ``no_face`` when none does, ``face_not_found`` when the
    image has fewer faces than ``face_index`` asks for."""
    counted = 0
    for upsample in upsamples:
        boxes = analyzer.detect(image, upsample=upsample)
        counted = max(counted, len(boxes))
        chosen = choose_face(boxes, face_index)
        if chosen is not None:
            box, index = chosen
            return FoundFace(box, analyzer.landmarks(image, box), len(boxes), index)
    h, w = image.shape[:2]
    if counted == 0:
        raise EngineError("no_face", f"no face found in the {w}x{h} image: use a frontal portrait")
    raise EngineError(
        "face_not_found",
        f"`face_index` {face_index} asks for a face the {w}x{h} image does not have: it has {counted} "
        f"(0 is the largest, {counted - 1} the smallest)",
    )


FACE_ANALYZERS: dict[str, type] = {}
register = registrar(FACE_ANALYZERS)


def load_face_analyzer(name: str = "dlib_hog") -> FaceAnalyzer:
    """A new analyzer of the kind registered as ``name``, its models loaded (the caller keeps it)."""
    from engines.face import dlib_face  # noqa: F401  (registers the default)

    if name not in FACE_ANALYZERS:
        raise ValueError(f"unknown face analyzer {name!r}: registered {sorted(FACE_ANALYZERS)}")
    return FACE_ANALYZERS[name].load()


__all__ = [
    "FaceBox",
    "FaceAnalyzer",
    "FoundFace",
    "FACE_ANALYZERS",
    "MAX_FACE_INDEX",
    "choose_face",
    "find_face",
    "register",
    "load_face_analyzer",
]
