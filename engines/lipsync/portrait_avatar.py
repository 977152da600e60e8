"""A short in-memory avatar from one portrait: subtle idle motion and blinks, for the image + audio path.

The face is found once; every frame is the portrait moved by a small affine sway (rotation, scale
and shift about the face centre) and, on blink frames, with the eyelids warped closed. Frames are
made on demand (one warp each), so the avatar costs one image of memory however long the loop is.
Its landmarks follow the same transforms, so the lip-sync engine needs no further face analysis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from engines.face import FaceAnalyzer, find_face
from engines.lipsync import FPS, AvatarFrames
from engines.lipsync.piecewise_affine import border_anchors, displacement_fields, separate_points, warp_region
from engines.lipsync.warp import LEFT_BROW, LEFT_EYE, RIGHT_BROW, RIGHT_EYE

LOOP_SECONDS = 4.0  # frames made; the engine plays them forward then backward
SWAY_DEGREES = 1.2
SWAY_SHIFT = 0.012  # of the face width
SWAY_SCALE = 0.008
SWAY_PERIODS_S = (3.7, 5.3, 4.4)  # rotation, shift, scale: incommensurate, so the motion does not look looped
BLINK_FIRST_S = 1.0
BLINK_EVERY_S = 3.4
BLINK_CLOSURE = (0.5, 0.95, 1.0, 1.0, 0.85, 0.45)  # eyelid closure over the frames of one blink
LID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))  # (upper lid, lower lid) landmark pairs
LOWER_LID_RISE = 0.15  # the lower lid's share of the closing
EYE_MARGIN = 0.6  # eye widths of skin around the eye that the blink warp may stretch


def blink_schedule(num_frames: int, fps: float = FPS) -> np.ndarray:
    """Eyelid closure 0..1 per frame: a blink at BLINK_FIRST_S, then every BLINK_EVERY_S."""
    closure = np.zeros(num_frames, dtype=np.float32)
    start = BLINK_FIRST_S
    while start * fps < num_frames:
        first = int(round(start * fps))
        for j, value in enumerate(BLINK_CLOSURE):
            if first + j < num_frames:
                closure[first + j] = value
        start += BLINK_EVERY_S
    return closure


def sway_matrix(index: int, centre: tuple[float, float], face_width: float, fps: float = FPS) -> np.ndarray:
    """The 2x3 affine of idle motion at frame ``index`` (identity at frame 0)."""
    t = index / fps
    rot_p, shift_p, scale_p = SWAY_PERIODS_S
    angle = SWAY_DEGREES * math.sin(2 * math.pi * t / rot_p)
    scale = 1.0 + SWAY_SCALE * math.sin(2 * math.pi * t / scale_p)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    shift = SWAY_SHIFT * face_width
    matrix[0, 2] += shift * math.sin(2 * math.pi * t / shift_p)
    matrix[1, 2] += 0.5 * shift * math.sin(2 * math.pi * t / shift_p + 1.0)
    return matrix


def closed_lids(landmarks: np.ndarray, closure: float) -> np.ndarray:
    """Landmarks with the eyelids moved ``closure`` of the way together."""
    out = landmarks.copy()
    for upper, lower in LID_PAIRS:
        gap = landmarks[lower] - landmarks[upper]
        out[upper] = landmarks[upper] + gap * closure * (1.0 - LOWER_LID_RISE)
        out[lower] = landmarks[lower] - gap * closure * LOWER_LID_RISE
    return out


def blink(image: np.ndarray, landmarks: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """``image`` with each eye warped from ``landmarks`` to ``closed`` (the lids moved), in place."""
    h, w = image.shape[:2]
    for eye, brow in ((LEFT_EYE, LEFT_BROW), (RIGHT_EYE, RIGHT_BROW)):
        pts = landmarks[list(eye)]
        margin = EYE_MARGIN * float(np.linalg.norm(pts[3] - pts[0]))
        x0, y0 = np.maximum(np.floor(pts.min(axis=0) - margin).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(pts.max(axis=0) + margin).astype(int), (w, h))
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        origin = np.array([x0, y0], dtype=np.float32)
        brow_pts = landmarks[list(brow)] - origin
        brow_pts = brow_pts[(brow_pts[:, 1] > 0) & (brow_pts[:, 0] > 0) & (brow_pts[:, 0] < x1 - x0)]
        anchors = border_anchors(x1 - x0, y1 - y0, max(4.0, margin))
        points = separate_points(np.concatenate([pts - origin, brow_pts, anchors]))
        moves = np.zeros((1, len(points), 2), dtype=np.float32)
        moves[0, : len(eye)] = closed[list(eye)] - landmarks[list(eye)]
        field = displacement_fields(points, moves, (x1 - x0, y1 - y0), (x1 - x0, y1 - y0))[0]
        image[y0:y1, x0:x1] = warp_region(np.ascontiguousarray(image[y0:y1, x0:x1]), field)
    return image


class PortraitFrames(Sequence):
    """Frame i of the portrait loop, made when asked for."""

    def __init__(self, image: np.ndarray, matrices: list[np.ndarray], base: np.ndarray, closure: np.ndarray) -> None:
        self._image = image
        self._matrices = matrices
        self._base = base  # landmarks after sway, before the blink
        self._closure = closure
        self._size = (image.shape[1], image.shape[0])

    def __len__(self) -> int:
        return len(self._matrices)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        frame = cv2.warpAffine(
            self._image, self._matrices[index], self._size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        closure = float(self._closure[index])
        if closure > 0:
            base = self._base[index]
            blink(frame, base, closed_lids(base, closure))
        return frame


def build_portrait_avatar(
    image: np.ndarray, analyzer: FaceAnalyzer, seconds: float = LOOP_SECONDS, face_index: int | None = None
) -> AvatarFrames:
    """An avatar of ``seconds`` of idle motion and blinks from one BGR portrait: its largest face, or the
    ``face_index``-th largest (``faces_found`` says how many it has)."""
    face = find_face(image, analyzer, face_index)
    box, landmarks = face.box, face.landmarks
    num_frames = max(2, int(round(seconds * FPS)))
    centre = box.center
    face_width = float(box.x2 - box.x1)
    matrices = [sway_matrix(i, centre, face_width) for i in range(num_frames)]
    closure = blink_schedule(num_frames)
    swayed = np.stack([transform_points(landmarks, m) for m in matrices])
    shown = np.stack([closed_lids(lm, float(c)) if c > 0 else lm for lm, c in zip(swayed, closure, strict=True)])
    coords = [_box_coords(lm, image.shape) for lm in shown]
    frames = PortraitFrames(np.ascontiguousarray(image), matrices, swayed, closure)
    return AvatarFrames(
        frames=frames, coords=coords, landmarks=shown.astype(np.float32), fps=FPS, faces_found=face.faces_found
    )


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def _box_coords(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of the landmarks' extent, clamped to the image."""
    h, w = shape[:2]
    x1, y1 = np.maximum(np.floor(landmarks.min(axis=0)).astype(int), 0)
    x2, y2 = np.minimum(np.ceil(landmarks.max(axis=0)).astype(int) + 1, (w, h))
    return int(y1), int(y2), int(x1), int(x2)


__all__ = ["build_portrait_avatar", "blink_schedule", "PortraitFrames"]
