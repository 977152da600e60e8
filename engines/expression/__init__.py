"""Facial expression editing: analyse a portrait once, then render any of seven emotions from it.

Registry: engine name -> class. ``landmark_warp`` is the CPU engine (no weights: a dense warp driven
by landmark displacements); a LivePortrait GPU engine can register here under another name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engines.constants import EMOTIONS, IMAGE_CONTENT_TYPES
from engines.errors import EngineError
from engines.face import FaceAnalyzer, FaceBox
from engines.registry import registrar

DEFAULT_ENGINE = "landmark_warp"
JPEG_QUALITY = 95
WEBP_QUALITY = 95
PNG_COMPRESSION = 1  # zlib level: ~2% larger files than level 3 on photos, encoded ~30% faster


@dataclass(frozen=True)
class FaceFrame:
    """Face-aligned coordinates: origin between the eyes, unit = inter-ocular distance (IOD).

    ``ex`` points from the subject's right eye to their left eye (image right on an upright face),
    ``ey`` is perpendicular to it, towards the chin.
    """

    origin: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    iod: float

    def to_local(self, points: np.ndarray) -> np.ndarray:
        rel = np.asarray(points, np.float64) - self.origin
        return np.stack([rel @ self.ex, rel @ self.ey], axis=-1) / self.iod

    def to_image(self, local: np.ndarray) -> np.ndarray:
        return self.origin + self.vectors_to_image(local)

    def vectors_to_image(self, local: np.ndarray) -> np.ndarray:
        local = np.asarray(local, np.float64)
        return self.iod * (local[..., :1] * self.ex + local[..., 1:] * self.ey)


@dataclass
class FaceAnalysis:
    """Everything a render needs about one portrait, computed once and shared by every emotion."""

    image: np.ndarray  # the analysed BGR image (not copied: callers must not modify it)
    box: FaceBox
    landmarks: np.ndarray  # (68, 2) float32, iBUG 300-W order
    frame: FaceFrame
    points: np.ndarray  # (N, 2) control points: landmarks, forehead, cheeks, then fixed anchors
    num_moving: int  # points[:num_moving] may move; the rest are anchors
    local: np.ndarray  # (num_moving, 2) the moving points in face-frame units
    roi: tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive): the only pixels a render may change
    grid: np.ndarray  # (gh, gw, 2) coarse sample positions (image pixels) of the dense warp
    weight: np.ndarray  # (roi h, roi w) float32 weight of the warp: 1 on the face, 0 beyond its hull's margin
    mouth_colors: dict[str, np.ndarray]  # BGR float32: "cavity", "teeth"
    faces_found: int = 1  # faces in the image; ``box`` is the largest, or the one a face_index chose

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


class ExpressionEngine(Protocol):
    name: str
    version: str
    gpu: bool

    def analyze(self, image_bgr: np.ndarray, face_index: int | None = None) -> FaceAnalysis:
        """Find the largest face (or the ``face_index``-th largest); EngineError ``no_face`` when there is none,
        ``face_not_found`` when there are fewer faces than ``face_index`` asks for."""
        ...

    def render(self, analysis: FaceAnalysis, emotion: str, intensity: float) -> np.ndarray:
        """The portrait with ``emotion`` at ``intensity`` in [0, 1]: BGR uint8, same size as the input."""
        ...


EXPRESSION_ENGINES: dict[str, type] = {}
register = registrar(EXPRESSION_ENGINES)


def load_expression_engine(name: str, faces: FaceAnalyzer) -> ExpressionEngine:
    """A new engine of the kind registered as ``name``, built around the face analyzer ``faces``."""
    from engines.expression import landmark_warp  # noqa: F401  (registers the CPU engine)

    if name not in EXPRESSION_ENGINES:
        known = ", ".join(sorted(EXPRESSION_ENGINES))
        raise EngineError("engine_unavailable", f"Unknown expression engine `{name}`: use one of {known}.")
    return EXPRESSION_ENGINES[name](faces)


def check_render_args(emotion: str, intensity: float) -> None:
    if emotion not in EMOTIONS:
        raise EngineError("unknown_emotion", f"Unknown emotion {emotion!r}: use one of {', '.join(EMOTIONS)}.")
    if not 0.0 <= intensity <= 1.0:
        raise EngineError("invalid_intensity", f"`intensity` must be within 0..1, got {intensity}.")


def fit_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image itself when its longer side is within ``max_side``, else a downscaled copy (INTER_AREA)."""
    import cv2

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """PNG, JPEG (quality 95) or WebP (quality 95) bytes of a BGR image."""
    import cv2

    params = {
        "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]),
        "jpg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]),
        "webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, WEBP_QUALITY]),
    }
    if fmt not in params:
        allowed = ", ".join(IMAGE_CONTENT_TYPES)
        raise EngineError("invalid_format", f"Unknown output format {fmt!r}: use one of {allowed}.")
    ext, flags = params[fmt]
    ok, buf = cv2.imencode(ext, image, flags)
    if not ok:
        raise EngineError("encode_failed", f"Could not encode the rendered image as {fmt}.")
    return buf.tobytes()


__all__ = [
    "EMOTIONS",
    "EXPRESSION_ENGINES",
    "ExpressionEngine",
    "FaceAnalysis",
    "FaceFrame",
    "check_render_args",
    "encode_image",
    "fit_max_side",
    "load_expression_engine",
    "register",
]
