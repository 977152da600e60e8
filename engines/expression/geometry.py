"""Control points around a face and the region a render may touch, from 68 iBUG landmarks.

Control points: the 68 landmarks, forehead points above the brows, cheek points, the eye centres and
lid-crease points (so an eye moves as a block, not stretched by its lids' motion), points just above
the brows (so a brow moves as a block, its hairs not stretched), then a ring of fixed
anchors around the face (zero displacement) that keeps the spline tame.

The warp's reach is the face hull (the jaw line and the forehead points), widened by ``HULL_MARGIN``:
its weight is 1 inside the hull and falls smoothly to exactly 0 at the margin, so hair, ears, neck,
collar and background never move, whatever the spline does outside the face.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from engines.expression import FaceFrame

RIGHT_EYE = list(range(36, 42))  # the subject's right eye (image left on an upright face)
LEFT_EYE = list(range(42, 48))
BROWS = list(range(17, 27))
FOREHEAD = list(range(68, 78))  # one point above each brow point, same order as BROWS
CHEEKS = [78, 79]  # right, left: below the eyes, on the cheekbones
NASOLABIAL = [80, 81]  # right, left: between the nostril wings and the lip corners
EYE_CENTRES = [82, 83]  # right, left: the middle of each eye (the iris), moved with the eye's corners
UPPER_LIDS = [37, 38, 43, 44]
CREASES = [84, 85, 86, 87]  # above each upper-lid point, same order: the lid and its lashes move as one
BROW_TOPS = list(range(88, 98))  # just above each brow point, same order as BROWS: the brow moves as one
NUM_MOVING = 98

CREASE_LIFT = 0.1  # IOD above each upper-lid point
BROW_TOP_LIFT = 0.12  # IOD above each brow point
FOREHEAD_LIFT = 0.5  # IOD above each brow point
HAIRLINE_BROWS = [17, 19, 21, 22, 24, 26]
HAIRLINE_LIFT = 1.0  # IOD above the brows: fixed anchors there
ANCHOR_COUNT = 28
ANCHOR_SCALE = 1.45  # anchor ring radii over the half extents of the moving points
HULL_MARGIN = 0.2  # IOD beyond the face hull over which the warp fades out
GRID_MAX_CELLS = 48  # the dense warp is evaluated on at most this many samples per side, then upsampled


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    right_eye = landmarks[RIGHT_EYE].mean(axis=0).astype(np.float64)
    left_eye = landmarks[LEFT_EYE].mean(axis=0).astype(np.float64)
    axis = left_eye - right_eye
    iod = float(np.hypot(*axis))
    ex = axis / max(iod, 1e-6)
    ey = np.array([-ex[1], ex[0]])
    return FaceFrame(origin=(right_eye + left_eye) / 2.0, ex=ex, ey=ey, iod=max(iod, 1.0))


def moving_points(landmarks: np.ndarray, frame: FaceFrame) -> np.ndarray:
    """(NUM_MOVING, 2) image points: landmarks, forehead (above each brow point), cheeks, nasolabial, eye
    centres, lid creases, brow tops."""
    lm = landmarks.astype(np.float64)
    forehead = lm[BROWS] - FOREHEAD_LIFT * frame.iod * frame.ey
    cheeks = np.stack([0.4 * lm[2] + 0.3 * lm[31] + 0.3 * lm[41], 0.4 * lm[14] + 0.3 * lm[35] + 0.3 * lm[46]])
    nasolabial = np.stack([0.5 * lm[31] + 0.5 * lm[48], 0.5 * lm[35] + 0.5 * lm[54]])
    eyes = np.stack([lm[RIGHT_EYE].mean(axis=0), lm[LEFT_EYE].mean(axis=0)])
    creases = lm[UPPER_LIDS] - CREASE_LIFT * frame.iod * frame.ey
    brow_tops = lm[BROWS] - BROW_TOP_LIFT * frame.iod * frame.ey
    return np.concatenate([lm, forehead, cheeks, nasolabial, eyes, creases, brow_tops])


def anchor_ring(moving_local: np.ndarray, frame: FaceFrame) -> np.ndarray:
    """Fixed points on an ellipse around the face (face frame), in image pixels."""
    lo, hi = moving_local.min(axis=0), moving_local.max(axis=0)
    centre, radii = (lo + hi) / 2.0, ANCHOR_SCALE * (hi - lo) / 2.0
    angles = np.linspace(0.0, 2.0 * math.pi, ANCHOR_COUNT, endpoint=False)
    ring = centre + radii * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return frame.to_image(ring)


def hairline_anchors(landmarks: np.ndarray, frame: FaceFrame) -> np.ndarray:
    """Fixed points high on the forehead: brow motion fades out below the hair."""
    brows = landmarks[HAIRLINE_BROWS].astype(np.float64)
    return brows - HAIRLINE_LIFT * frame.iod * frame.ey


def face_hull(moving: np.ndarray) -> np.ndarray:
    """(N, 2) convex hull of the jaw line and the forehead points: the only skin a render may move."""
    outline = np.concatenate([moving[:17], moving[FOREHEAD]]).astype(np.float32)
    return cv2.convexHull(outline)[:, 0, :].astype(np.float64)


def roi_rect(hull: np.ndarray, frame: FaceFrame, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Bounding box of the face hull plus its fade-out margin, clipped to the image."""
    margin = HULL_MARGIN * frame.iod + 2.0
    h, w = shape[:2]
    x1, y1 = np.floor(hull.min(axis=0) - margin).astype(int)
    x2, y2 = np.ceil(hull.max(axis=0) + margin).astype(int) + 1
    return max(0, int(x1)), max(0, int(y1)), min(w, int(x2)), min(h, int(y2))


def hull_weights(hull: np.ndarray, roi: tuple[int, int, int, int], margin_px: float) -> np.ndarray:
    """(roi h, roi w) weight of the warp: 1 inside the hull, smoothly to 0 at ``margin_px`` outside it."""
    x1, y1, x2, y2 = roi
    inside = np.zeros((y2 - y1, x2 - x1), np.uint8)
    cv2.fillPoly(inside, [np.round((hull - (x1, y1)) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    outside_distance = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    t = np.clip(1.0 - outside_distance / max(margin_px, 1.0), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def coarse_grid(roi: tuple[int, int, int, int]) -> np.ndarray:
    """(gh, gw, 2) sample positions placed where cv2.resize (INTER_LINEAR) expects its source pixels."""
    x1, y1, x2, y2 = roi
    w, h = x2 - x1, y2 - y1
    step = max(1.0, max(w, h) / GRID_MAX_CELLS)
    gw, gh = max(2, math.ceil(w / step)), max(2, math.ceil(h / step))
    xs = x1 + (np.arange(gw) + 0.5) * (w / gw) - 0.5
    ys = y1 + (np.arange(gh) + 0.5) * (h / gh) - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], axis=-1)
