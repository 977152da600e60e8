"""Control points around a face and the region a render may touch, from 68 iBUG landmarks.

Control points: the 68 landmarks, forehead points above the brows, cheek points, then a ring of fixed
anchors around the face (zero displacement) that keeps hair, neck and background in place.
"""

from __future__ import annotations

import math

import numpy as np

from engines.expression import FaceFrame

RIGHT_EYE = list(range(36, 42))  # the subject's right eye (image left on an upright face)
LEFT_EYE = list(range(42, 48))
BROWS = list(range(17, 27))
FOREHEAD = list(range(68, 78))  # one point above each brow point, same order as BROWS
CHEEKS = [78, 79]  # right, left: below the eyes, on the cheekbones
NASOLABIAL = [80, 81]  # right, left: between the nostril wings and the lip corners
NUM_MOVING = 82

FOREHEAD_LIFT = 0.5  # IOD above each brow point
HAIRLINE_BROWS = [17, 19, 21, 22, 24, 26]
HAIRLINE_LIFT = 1.0  # IOD above the brows: fixed anchors there
ANCHOR_COUNT = 28
ANCHOR_SCALE = 1.45  # anchor ring radii over the half extents of the moving points
ROI_MARGIN = 0.35  # IOD between the anchor ring's bounding box and the ROI edge (the feather band)
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
    """(NUM_MOVING, 2) image points: landmarks, forehead (above each brow point), cheeks, nasolabial."""
    lm = landmarks.astype(np.float64)
    forehead = lm[BROWS] - FOREHEAD_LIFT * frame.iod * frame.ey
    cheeks = np.stack([0.4 * lm[2] + 0.3 * lm[31] + 0.3 * lm[41], 0.4 * lm[14] + 0.3 * lm[35] + 0.3 * lm[46]])
    nasolabial = np.stack([0.5 * lm[31] + 0.5 * lm[48], 0.5 * lm[35] + 0.5 * lm[54]])
    return np.concatenate([lm, forehead, cheeks, nasolabial])


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


def roi_rect(points: np.ndarray, frame: FaceFrame, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Bounding box of all control points plus the feather margin, clipped to the image."""
    margin = ROI_MARGIN * frame.iod
    h, w = shape[:2]
    x1, y1 = np.floor(points.min(axis=0) - margin).astype(int)
    x2, y2 = np.ceil(points.max(axis=0) + margin).astype(int) + 1
    return max(0, int(x1)), max(0, int(y1)), min(w, int(x2)), min(h, int(y2))


def feather_weights(roi: tuple[int, int, int, int], shape: tuple[int, ...], width_px: float) -> np.ndarray:
    """Weight 1 inside the ROI falling smoothly to 0 at its edges, except edges lying on the image border."""
    x1, y1, x2, y2 = roi
    h, w = shape[:2]
    xs, ys = np.arange(x1, x2, dtype=np.float32), np.arange(y1, y2, dtype=np.float32)
    inf = np.float32(np.inf)
    dx = np.minimum(xs - x1 if x1 > 0 else inf, (x2 - 1) - xs if x2 < w else inf)
    dy = np.minimum(ys - y1 if y1 > 0 else inf, (y2 - 1) - ys if y2 < h else inf)
    dist = np.minimum(dy[:, None], dx[None, :])
    t = np.clip(dist / max(width_px, 1.0), 0.0, 1.0)
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
