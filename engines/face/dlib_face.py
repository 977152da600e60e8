"""dlib's HOG frontal detector and 68-point shape predictor, loaded from pip-installed model files."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import cv2
import numpy as np

from engines.errors import EngineError
from engines.face import FaceBox, register

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
# HOG also reports near-zero-score boxes (e.g. on re-encoded or noisy photos) that can be larger than
# the real face; detections below this share of the best score are dropped before sorting by size.
MIN_RELATIVE_SCORE = 0.3


def model_dir() -> Path:
    """The ``models/`` folder of face_recognition_models, found without importing its __init__."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise EngineError(
            "weights_missing", "face_recognition_models is not installed: pip install face_recognition_models"
        )
    return Path(spec.origin).parent / "models"


@register("dlib_hog")
class DlibFaceAnalyzer:
    name = "dlib_hog"

    def __init__(self, predictor_path: Path) -> None:
        import dlib

        if not predictor_path.is_file():
            raise EngineError("weights_missing", f"dlib landmark model not found at {predictor_path}")
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self._dlib = dlib
        self._lock = threading.Lock()  # dlib objects are not documented as thread-safe

    @classmethod
    def load(cls) -> DlibFaceAnalyzer:
        return cls(model_dir() / SHAPE_PREDICTOR_68)

    @staticmethod
    def _gray(image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            return image
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

    def detect(self, image_bgr: np.ndarray, upsample: int = 0) -> list[FaceBox]:
        gray = self._gray(image_bgr)
        h, w = gray.shape[:2]
        with self._lock:
            rects, scores, _ = self._detector.run(gray, upsample, 0.0)
        boxes = [
            FaceBox(max(0, r.left()), max(0, r.top()), min(w, r.right() + 1), min(h, r.bottom() + 1), float(s))
            for r, s in zip(rects, scores, strict=False)
        ]
        best = max((b.score for b in boxes), default=0.0)
        kept = [b for b in boxes if b.area > 0 and b.score >= MIN_RELATIVE_SCORE * best]
        return sorted(kept, key=lambda b: b.area, reverse=True)

    def landmarks(self, image_bgr: np.ndarray, box: FaceBox) -> np.ndarray:
        gray = self._gray(image_bgr)
        rect = self._dlib.rectangle(int(box.x1), int(box.y1), int(box.x2) - 1, int(box.y2) - 1)
        with self._lock:
            shape = self._predictor(gray, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
