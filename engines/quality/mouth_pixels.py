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


def _spread(patch: np.ndarray) -> tuple[np.ndarray, float]:
    """Each channel's mean, and the norm of the patch less those means."""
    mean, std = cv2.meanStdDev(patch)
    return mean.ravel(), math.sqrt(patch.shape[0] * patch.shape[1] * sum(v * v for v in std.ravel().tolist()))


def mouth_and_nose_boxes(landmarks: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 4) mouth boxes and (N, 4) nose boxes (y1, y2, x1, x2) and (N,) face sizes of N frames' 68 landmarks."""
    lm = np.asarray(landmarks, np.float64)
    sizes = np.sqrt(lm[:, RIGID].var(axis=1).sum(axis=1))  # lip_sync.face_size: RMS distance from the centroid
    left, right = lm[:, 48, 0], lm[:, 54, 0]
    quarter = 0.25 * (right - left)
    top, bottom = lm[:, 50:53, 1].min(axis=1), lm[:, 56:59, 1].max(axis=1) + JAW_DROP * sizes
    nose_min, nose_max = lm[:, NOSE_POINTS].min(axis=1), lm[:, NOSE_POINTS].max(axis=1)
    limits = np.array([height, height, width, width])

    def boxes(y1: np.ndarray, y2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        corners = np.stack([np.floor(y1), np.floor(y2) + 2, np.floor(x1), np.floor(x2) + 2], axis=1)
        return np.clip(corners, 0, limits).astype(int)

    mouths = boxes(top, bottom, left + quarter, right - quarter)
    noses = boxes(nose_min[:, 1], nose_max[:, 1], nose_min[:, 0], nose_max[:, 0])
    return mouths, noses, sizes


class MouthRegion:
    """One avatar frame's mouth and nose boxes; ``opening`` and ``face_lost`` of an output frame made from it."""

    def __init__(self, avatar_frame: np.ndarray, mouth: np.ndarray, nose: np.ndarray, size: float) -> None:
        """``mouth``, ``nose``, ``size``: this frame's row of ``mouth_and_nose_boxes``."""
        self.mouth, self.nose = tuple(mouth.tolist()), tuple(nose.tolist())
        y1, y2, x1, x2 = self.mouth
        half = (y2 - y1) * (x2 - x1) // 2
        brightness = max(int(np.partition(avatar_frame[y1:y2, x1:x2, 1], half, axis=None)[half]), 1)  # the median
        self._lips = np.full((y2 - y1, x2 - x1, 3), brightness, np.uint8)
        self._scale = (y2 - y1) / max(size, 1e-6) / brightness
        ny1, ny2, nx1, nx2 = self.nose
        nose = avatar_frame[ny1:ny2, nx1:nx2]
        self._nose = nose.astype(np.float32)
        self._nose_mean, self._nose_norm = _spread(nose)
        self.avatar_opening = self.opening(avatar_frame)

    def opening(self, frame: np.ndarray) -> float:
        y1, y2, x1, x2 = self.mouth
        darkness = cv2.subtract(self._lips, frame[y1:y2, x1:x2])  # saturates at 0: brighter than the lips
        return cv2.mean(darkness)[1] * self._scale

    def face_lost(self, frame: np.ndarray) -> bool:
        y1, y2, x1, x2 = self.nose
        nose = frame[y1:y2, x1:x2]
        mean, norm = _spread(nose)
        if norm == 0.0 or self._nose_norm == 0.0:
            return True
        centred_dot = float(np.vdot(nose.astype(np.float32), self._nose)) - nose.shape[0] * nose.shape[1] * float(
            mean @ self._nose_mean
        )
        return centred_dot / (norm * self._nose_norm) < LOST_NCC
