"""Face crop for LivePortrait from our own 68 landmarks, with upstream's crop geometry, and soft paste-back.

Geometry (upstream ``src/utils/crop.py``): the axis from the eyes' midpoint to the mouth's midpoint fixes the
rotation; the landmarks' extent along the rotated axes, squared and scaled by 2.3, fixes the size; the centre
moves by ``vy = -0.125`` of the size along that axis (towards the forehead). The crop is 512 px, fed to the
networks at 256 px. Eye and lip opening ratios (inputs of the retargeting MLPs) come from the same landmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from engines.face.paste import paste

CROP_SIZE = 512
INPUT_SIZE = 256
SCALE = 2.3
VX_RATIO = 0.0
VY_RATIO = -0.125
EPS = 1e-6
# iBUG 300-W indices
LEFT_EYE, RIGHT_EYE = (36, 41), (42, 47)  # image-left eye, image-right eye (corner, lids..., corner)
NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = 30, 48, 54
INNER_LIP_TOP, INNER_LIP_BOTTOM = 62, 66
MASK_FEATHER = 0.12  # fraction of the crop over which the paste-back mask fades out at the edges
# A driving video's crop (upstream ``crop_driving_video``): one unrotated square for the whole video, the
# average of each frame's landmark square at this scale and offset.
DRIVING_SCALE = 2.2
DRIVING_VY_RATIO = -0.1


@dataclass(frozen=True)
class Crop:
    image: np.ndarray  # (size, size, 3) crop, same channel order as the source
    to_crop: np.ndarray  # 3x3: source pixels -> crop pixels
    landmarks: np.ndarray  # (68, 2) in crop pixels

    @property
    def to_source(self) -> np.ndarray:
        return np.linalg.inv(self.to_crop)


def _axis_points(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eyes = landmarks[[LEFT_EYE[0], 39, RIGHT_EYE[0], 45]].mean(0)  # the four eye corners, as upstream's 68-point path
    mouth = (landmarks[MOUTH_LEFT] + landmarks[MOUTH_RIGHT]) / 2
    return eyes, mouth


def face_square(
    landmarks: np.ndarray, scale: float = SCALE, vx: float = VX_RATIO, vy: float = VY_RATIO
) -> tuple[np.ndarray, float, np.ndarray]:
    """(centre, side, x axis) of upstream's face square: the landmarks' extent along the eyes-to-mouth axes."""
    pts = np.asarray(landmarks, np.float64)
    eyes, mouth = _axis_points(pts)
    uy = mouth - eyes
    length = float(np.linalg.norm(uy))
    uy = uy / length if length > 1e-3 else np.array([0.0, 1.0])
    ux = np.array([uy[1], -uy[0]])
    rot = np.stack([ux, uy])
    center0 = pts.mean(0)
    local = (pts - center0) @ rot.T
    low, high = local.min(0), local.max(0)
    side = float((high - low).max()) * scale
    mid = (low + high) / 2
    center = center0 + ux * mid[0] + uy * mid[1] + ux * (vx * side) + uy * (vy * side)
    return center, side, ux


def crop_transform(
    landmarks: np.ndarray, size: int = CROP_SIZE, scale: float = SCALE, vx: float = VX_RATIO, vy: float = VY_RATIO
) -> np.ndarray:
    """3x3 similarity from source pixels to a ``size`` crop, rotation-aligned on the eyes-to-mouth axis."""
    center, side, ux = face_square(landmarks, scale, vx, vy)
    s = size / side
    angle = math.atan2(ux[1], ux[0])
    cos, sin = math.cos(angle), math.sin(angle)
    half = size / 2
    return np.array(
        [
            [s * cos, s * sin, half - s * (cos * center[0] + sin * center[1])],
            [-s * sin, s * cos, half - s * (-sin * center[0] + cos * center[1])],
            [0.0, 0.0, 1.0],
        ]
    )


def crop_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = CROP_SIZE,
    scale: float = SCALE,
    vx: float = VX_RATIO,
    vy: float = VY_RATIO,
) -> Crop:
    """The rotation-aligned face crop (border replicated) and where the landmarks land in it."""
    return _crop(image, landmarks, crop_transform(landmarks, size, scale, vx, vy), size, cv2.BORDER_REPLICATE)


def warp_crop(image: np.ndarray, to_crop: np.ndarray, size: int = CROP_SIZE, border: int = cv2.BORDER_REPLICATE):
    """``image`` through the 3x3 ``to_crop`` into a ``size`` square (bilinear)."""
    return cv2.warpAffine(image, to_crop[:2], (size, size), flags=cv2.INTER_LINEAR, borderMode=border)


def _crop(image: np.ndarray, landmarks: np.ndarray | None, to_crop: np.ndarray, size: int, border: int) -> Crop:
    warped = warp_crop(image, to_crop, size, border)
    if landmarks is None:
        return Crop(warped, to_crop, np.zeros((0, 2), np.float32))
    points = np.asarray(landmarks, np.float64) @ to_crop[:2, :2].T + to_crop[:2, 2]
    return Crop(warped, to_crop, points.astype(np.float32))


def driving_box(
    landmarks: Sequence[np.ndarray], scale: float = DRIVING_SCALE, vx: float = VX_RATIO, vy: float = DRIVING_VY_RATIO
) -> tuple[float, float, float]:
    """(centre x, centre y, side) of a driving video's crop: each frame's face square, unrotated, averaged."""
    squares = []
    for points in landmarks:
        center, side, _ = face_square(points, scale, vx, vy)
        squares.append([center[0] - side / 2, center[1] - side / 2, center[0] + side / 2, center[1] + side / 2])
    left, top, right, bottom = np.mean(np.asarray(squares, np.float64), axis=0)
    return (left + right) / 2, (top + bottom) / 2, right - left


def crop_box(
    image: np.ndarray, box: tuple[float, float, float], landmarks: np.ndarray | None = None, size: int = CROP_SIZE
) -> Crop:
    """An unrotated square crop ``box`` (centre x, centre y, side) at ``size`` px, black outside the image."""
    cx, cy, side = box
    s = size / side
    to_crop = np.array([[s, 0.0, size / 2 - s * cx], [0.0, s, size / 2 - s * cy], [0.0, 0.0, 1.0]])
    return _crop(image, landmarks, to_crop, size, cv2.BORDER_CONSTANT)


@lru_cache(maxsize=8)
def soft_mask(size: int) -> np.ndarray:
    """(size, size) float32 weights: 1 in the middle, a smooth fade to 0 at the crop's edges (read-only)."""
    ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / (MASK_FEATHER * size), 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: no visible seam where the fade starts
    mask = np.outer(ramp, ramp).astype(np.float32)
    mask.flags.writeable = False
    return mask


def paste_back(image: np.ndarray, rendered: np.ndarray, to_crop: np.ndarray) -> np.ndarray:
    """``image`` with the rendered crop warped back through the inverse crop transform, blended softly and
    colour-matched at the mask's rim (``engines.face.paste``). Only the crop's footprint is resampled: every
    pixel outside it stays as it was."""
    height, width = image.shape[:2]
    size = rendered.shape[0]
    if size != CROP_SIZE:  # the transform is for CROP_SIZE; scale it to the rendered size
        to_crop = np.diag([size / CROP_SIZE, size / CROP_SIZE, 1.0]) @ to_crop
    back = np.linalg.inv(to_crop)
    corners = back @ np.array([[0.0, size, 0.0, size], [0.0, 0.0, size, size], [1.0, 1.0, 1.0, 1.0]])
    x0, y0 = max(0, math.floor(corners[0].min())), max(0, math.floor(corners[1].min()))
    x1, y1 = min(width, math.ceil(corners[0].max()) + 1), min(height, math.ceil(corners[1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return image.copy()
    to_region = (np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ back)[:2]
    region = (x1 - x0, y1 - y0)
    # bicubic: the crop is an upsampled copy of the face, and bilinear twice (in and back) blurs it (42 vs 46 dB)
    face = cv2.warpAffine(rendered, to_region, region, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpAffine(soft_mask(size), to_region, region, flags=cv2.INTER_LINEAR)
    return paste(image, face, weight, (y0, x0))


def _ratio(landmarks: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    return float(np.linalg.norm(landmarks[a] - landmarks[b]) / (np.linalg.norm(landmarks[c] - landmarks[d]) + EPS))


def eye_ratios(landmarks: np.ndarray) -> np.ndarray:
    """(2,) eye opening over eye width for each eye (the eye retargeting network's source ratios)."""
    pts = np.asarray(landmarks, np.float64)
    ratios = []
    for first, last in (LEFT_EYE, RIGHT_EYE):
        top = pts[[first + 1, first + 2]].mean(0)
        bottom = pts[[last, last - 1]].mean(0)
        ratios.append(np.linalg.norm(top - bottom) / (np.linalg.norm(pts[first] - pts[first + 3]) + EPS))
    return np.array(ratios, np.float32)


def lip_ratio(landmarks: np.ndarray) -> float:
    """Inner-lip opening over mouth width (the lip retargeting network's source ratio)."""
    return _ratio(np.asarray(landmarks, np.float64), INNER_LIP_TOP, INNER_LIP_BOTTOM, MOUTH_LEFT, MOUTH_RIGHT)
