"""The CPU expression engine: FACS-based landmark motion, a thin-plate-spline warp of the face ROI and a
painted mouth interior. No weights; only the face analyzer's landmark model."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from engines.errors import EngineError
from engines.expression import FaceAnalysis, check_render_args, geometry, mouth, presets, register
from engines.expression.warp import backward_maps
from engines.face import FaceAnalyzer, FaceBox, choose_face

log = logging.getLogger(__name__)

VERSION = "1.1.0"
DETECT_MAX_SIDE = 640  # faces are found on a copy at most this large; landmarks use the full image
MIN_RELATIVE_SCORE = 0.5  # faces scoring under half the best detection are ignored
NO_FACE_MESSAGE = "No face detected in image"


def confident_faces(boxes: list[FaceBox]) -> list[FaceBox]:
    """The confident faces: the detector also reports faint, sometimes larger, false hits."""
    best = max(b.score for b in boxes)
    return [b for b in boxes if b.score >= MIN_RELATIVE_SCORE * best]


def main_face(boxes: list[FaceBox]) -> FaceBox:
    """The largest confident face."""
    return max(confident_faces(boxes), key=lambda b: b.area)


@register("landmark_warp")
class LandmarkWarpEngine:
    name = "landmark_warp"
    version = VERSION
    gpu = False

    def __init__(self, faces: FaceAnalyzer) -> None:
        self._faces = faces

    def _find_face(self, image_bgr: np.ndarray, face_index: int | None = None) -> tuple[FaceBox, int]:
        """The largest confident face (or the ``face_index``-th largest) and how many confident faces there are."""
        h, w = image_bgr.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = image_bgr
        if scale < 1.0:
            small = cv2.resize(image_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes = self._faces.detect(small) or self._faces.detect(small, upsample=1)
        if not boxes:
            raise EngineError("no_face", NO_FACE_MESSAGE)
        faces = confident_faces(boxes)
        chosen = choose_face(faces, face_index)
        if chosen is None:
            raise EngineError(
                "face_not_found",
                f"`face_index` {face_index} asks for a face the image does not have: it has {len(faces)} "
                f"(0 is the largest, {len(faces) - 1} the smallest)",
            )
        b = chosen[0]
        if scale == 1.0:
            return b, len(faces)
        box = FaceBox(round(b.x1 / scale), round(b.y1 / scale), round(b.x2 / scale), round(b.y2 / scale), b.score)
        return box, len(faces)

    def analyze(self, image_bgr: np.ndarray, face_index: int | None = None) -> FaceAnalysis:
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise EngineError("invalid_image", "Expected a BGR uint8 image.")
        box, faces_found = self._find_face(image_bgr, face_index)
        landmarks = self._faces.landmarks(image_bgr, box)
        frame = geometry.face_frame(landmarks)
        moving = geometry.moving_points(landmarks, frame)
        local = frame.to_local(moving)
        anchors = [geometry.hairline_anchors(landmarks, frame), geometry.anchor_ring(local, frame)]
        points = np.concatenate([moving, *anchors])
        hull = geometry.face_hull(moving)
        roi = geometry.roi_rect(hull, frame, image_bgr.shape)
        log.debug("face %s, inter-ocular %.1f px, warp ROI %s", box, frame.iod, roi)
        return FaceAnalysis(
            image=image_bgr,
            box=box,
            landmarks=landmarks,
            frame=frame,
            points=points,
            num_moving=len(moving),
            local=local,
            roi=roi,
            grid=geometry.coarse_grid(roi),
            weight=geometry.hull_weights(hull, roi, geometry.HULL_MARGIN * frame.iod),
            mouth_colors=mouth.mouth_colors(image_bgr, landmarks),
            faces_found=faces_found,
        )

    def moved_points(self, analysis: FaceAnalysis, emotion: str, intensity: float) -> np.ndarray:
        """All control points after the preset's motion (anchors unchanged), in image pixels."""
        local_motion = presets.displacements(analysis.local, emotion, intensity)
        dst = analysis.points.copy()
        dst[: analysis.num_moving] += analysis.frame.vectors_to_image(local_motion)
        return dst

    def render(self, analysis: FaceAnalysis, emotion: str, intensity: float) -> np.ndarray:
        check_render_args(emotion, intensity)
        dst = self.moved_points(analysis, emotion, intensity)
        x1, y1, x2, y2 = analysis.roi
        map_x, map_y = backward_maps(
            analysis.points, dst, analysis.grid, analysis.roi, analysis.weight, analysis.frame.iod
        )
        face = cv2.remap(analysis.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out = analysis.image.copy()
        out[y1:y2, x1:x2] = face
        inner = mouth.INNER_LIP
        mouth.render_interior(
            analysis.image, out, analysis.points[inner], dst[inner], analysis.frame, analysis.mouth_colors
        )
        return out
