"""Paste-back of a generated face into its frame, shared by every engine: local, colour-matched, feathered.

- **Local**: only pixels whose mask weight is above zero change; every other pixel of the frame stays
  byte-identical (nothing outside the mask is resampled or re-quantised).
- **Colour-matched**: over the mask's rim (weights between ``RIM_LOW`` and ``RIM_HIGH``: where the generated
  face meets the frame), the generated face's per-channel mean and standard deviation in an opponent colour
  space (luma and two colour differences, BT.601) are moved to the frame's, and that correction applied to
  the whole pasted face. A render's tint, brightness or
  contrast drift then leaves no seam. Gains are bounded to [1 / ``MAX_GAIN``, ``MAX_GAIN``]; a correction
  below ``NEGLIGIBLE`` (a tenth of a grey level) is skipped, so an identity face comes back exactly.
- **Feathered**: the caller's mask ramps from 0 at its edge to 1 inside (``edge_ramp`` builds a box's ramp);
  the blend is ``w * face + (1 - w) * frame``, rounded once.
"""

from __future__ import annotations

import cv2
import numpy as np

RIM_LOW, RIM_HIGH = 0.02, 0.98
MIN_RIM_PIXELS = 32  # a thinner rim (a hard-edged mask): the whole mask is the rim
RIM_SAMPLES = 2048
MAX_GAIN = 1.5
NEGLIGIBLE = 0.1  # grey levels


def edge_ramp(height: int, width: int, feather: float) -> np.ndarray:
    """(h, w) float32 weights: 0 at the box's edge, rising smoothly to 1 at ``feather`` px inward."""
    ramp = max(1.0, feather)
    dy = np.minimum(np.arange(height) + 0.5, height - 0.5 - np.arange(height))
    dx = np.minimum(np.arange(width) + 0.5, width - 0.5 - np.arange(width))
    t = np.clip(np.minimum(dy[:, None], dx[None, :]) / ramp, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no visible line where the fade starts


# BT.601 luma and the two colour differences (rows Y, Cr, Cb) of BGR columns: an opponent space in which
# per-channel mean/std matching is one affine map of BGR, applied in a single pass (a Lab round trip costs
# 30 times more for the same correction of a tint, brightness or contrast drift).
OPPONENT = np.array([[0.114, 0.587, 0.299], [-0.0813, -0.4187, 0.5], [0.5, -0.3313, -0.1687]], np.float64)
TO_BGR = np.linalg.inv(OPPONENT)


def match_colour(face: np.ndarray, frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``face`` (uint8 BGR) with its mean/std per opponent channel over the rim of ``weights`` moved
    to ``frame``'s."""
    rim = np.flatnonzero((weights > RIM_LOW) & (weights < RIM_HIGH))
    if rim.size < MIN_RIM_PIXELS:
        rim = np.flatnonzero(weights > RIM_LOW)
        if rim.size < MIN_RIM_PIXELS:
            return face
    rim = rim[:: rim.size // RIM_SAMPLES + 1]  # an even sample of the rim is enough for two moments
    face_rim = face.reshape(-1, 3)[rim].astype(np.float64) @ OPPONENT.T
    frame_rim = frame.reshape(-1, 3)[rim].astype(np.float64) @ OPPONENT.T
    face_mean, frame_mean = face_rim.mean(axis=0), frame_rim.mean(axis=0)
    face_std, frame_std = face_rim.std(axis=0), frame_rim.std(axis=0)
    gain = np.clip(frame_std / np.maximum(face_std, 1e-3), 1.0 / MAX_GAIN, MAX_GAIN)
    spread = np.abs(gain - 1.0) * np.maximum(face_std, 1.0)  # the gain's effect, grey levels
    if np.abs(frame_mean - face_mean).max() < NEGLIGIBLE and spread.max() < NEGLIGIBLE:
        return face
    affine = np.empty((3, 4))
    affine[:, :3] = TO_BGR @ np.diag(gain) @ OPPONENT
    affine[:, 3] = TO_BGR @ (frame_mean - gain * face_mean)
    return cv2.transform(face, affine)  # uint8 in, uint8 out (rounded, saturated)


def paste(frame: np.ndarray, face: np.ndarray, weights: np.ndarray, top_left: tuple[int, int]) -> np.ndarray:
    """A copy of ``frame`` with ``face`` ((h, w, 3) uint8, frame resolution) blended in at ``top_left`` (y, x)
    through ``weights`` ((h, w) float in [0, 1]); the parts of the region outside the frame are ignored."""
    out = frame.copy()
    paste_into(out, face, weights, top_left)
    return out


def paste_into(frame: np.ndarray, face: np.ndarray, weights: np.ndarray, top_left: tuple[int, int]) -> None:
    """``paste`` in place."""
    y, x = top_left
    height, width = frame.shape[:2]
    fy1, fx1 = max(y, 0), max(x, 0)
    fy2, fx2 = min(y + face.shape[0], height), min(x + face.shape[1], width)
    if fy2 <= fy1 or fx2 <= fx1:
        return
    inner = (slice(fy1 - y, fy2 - y), slice(fx1 - x, fx2 - x))
    w = np.asarray(weights[inner], np.float32)
    rows, cols = np.nonzero(np.any(w > 0, axis=1))[0], np.nonzero(np.any(w > 0, axis=0))[0]
    if rows.size == 0:
        return
    r1, r2, c1, c2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # the mask's extent: nothing else is touched
    w = np.ascontiguousarray(w[r1:r2, c1:c2])
    region = frame[fy1 + r1 : fy1 + r2, fx1 + c1 : fx1 + c2]
    generated = match_colour(np.ascontiguousarray(face[inner][r1:r2, c1:c2]), region, w)
    # w * generated + (1 - w) * frame, rounded once: a weight of 0 gives the frame's own value back exactly
    region[:] = cv2.blendLinear(generated, region, w, 1.0 - w)
