"""Mouth opening and face loss read from pixels where the avatar frame's landmarks are known (no landmark fit).

An engine paints its mouth over the avatar frame it was given, so the avatar frame's 68 landmarks say where
to look on the output frame:

- **opening**: the dark interior of the mouth. Over the central half of the mouth's width (corners 48-54),
  from the top of the upper lip (50-52) down to ``JAW_DROP`` face sizes below the bottom of the lower lip
  (the jaw drops when the mouth opens), each pixel's darkness below the avatar frame's median brightness
  of that region (the lips and the skin around them), as a share of that brightness; the mean times the
  region's height over the face size (``lip_sync.face_size``) is about the height of the dark gap in face
  sizes. Green channel only (it carries most of the luma).
- **face lost**: the normalised cross-correlation of the nose box (points 29-35: below the eyes, inside
  every engine's lower-face paste; each colour channel less its mean) with the avatar frame's under
  ``LOST_NCC``. A render with real or real-like weights redraws the nose at >= 0.98 (colour casts and
  gains do not change it); random weights leave a smear at 0.4-0.7.

Both cost a few microseconds per 256-px frame (OpenCV; the avatar frame's side, ~0.05 ms, once per avatar
frame).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

JAW_DROP = 0.6  # the region reaches this many face sizes below the avatar's lower lip
LOST_NCC = 0.8  # nose box correlation with the avatar frame's under this: the face was lost
NOSE_POINTS = slice(29, 36)
RIGID = slice(27, 48)  # lip_sync.RIGID_POINTS


def _box(x1: float, y1: float, x2: float, y2: float, height: int, width: int) -> tuple[int, int, int, int]:
    return max(0, int(y1)), min(height, int(y2) + 2), max(0, int(x1)), min(width, int(x2) + 2)


def _centred(patch: np.ndarray) -> np.ndarray:
    """The patch less each channel's mean, over its norm (float32): its dot with a patch is their correlation."""
    values = patch.astype(np.float32)
    values -= values.reshape(-1, values.shape[-1]).mean(axis=0)
    norm = float(np.sqrt(np.vdot(values, values)))
    return values / norm if norm > 0 else values


class MouthRegion:
    """One avatar frame's mouth and nose boxes; ``opening`` and ``face_lost`` of an output frame made from it."""

    def __init__(self, avatar_frame: np.ndarray, landmarks: np.ndarray) -> None:
        lm = np.asarray(landmarks, np.float64)
        height, width = avatar_frame.shape[:2]
        rigid = lm[RIGID]
        size = float(np.sqrt(np.mean(np.sum((rigid - rigid.mean(axis=0)) ** 2, axis=1))))  # lip_sync.face_size
        (left, _), (right, _) = lm[48], lm[54]
        quarter = 0.25 * (right - left)
        top, bottom = min(lm[50, 1], lm[51, 1], lm[52, 1]), max(lm[56, 1], lm[57, 1], lm[58, 1]) + JAW_DROP * size
        self.mouth = _box(left + quarter, top, right - quarter, bottom, height, width)
        (nx1, ny1), (nx2, ny2) = lm[NOSE_POINTS].min(axis=0), lm[NOSE_POINTS].max(axis=0)
        self.nose = _box(nx1, ny1, nx2, ny2, height, width)
        y1, y2, x1, x2 = self.mouth
        lips = avatar_frame[y1:y2, x1:x2, 1].ravel()
        brightness = max(int(np.partition(lips, lips.size // 2)[lips.size // 2]), 1)  # the median
        self._lips = np.full((y2 - y1, x2 - x1, 3), brightness, np.uint8)
        self._scale = (y2 - y1) / max(size, 1e-6) / brightness
        ny1, ny2, nx1, nx2 = self.nose
        self._nose = _centred(avatar_frame[ny1:ny2, nx1:nx2])
        self.avatar_opening = self.opening(avatar_frame)

    def opening(self, frame: np.ndarray) -> float:
        y1, y2, x1, x2 = self.mouth
        darkness = cv2.subtract(self._lips, frame[y1:y2, x1:x2])  # saturates at 0: brighter than the lips
        return cv2.mean(darkness)[1] * self._scale

    def face_lost(self, frame: np.ndarray) -> bool:
        y1, y2, x1, x2 = self.nose
        nose = frame[y1:y2, x1:x2]
        _, std = cv2.meanStdDev(nose)  # per channel: the output's norm less its means, without a copy
        norm = math.sqrt(nose.shape[0] * nose.shape[1] * sum(v * v for v in std.ravel().tolist()))
        return norm == 0.0 or float(np.vdot(nose.astype(np.float32), self._nose)) / norm < LOST_NCC
