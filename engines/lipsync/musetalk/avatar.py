"""MuseTalk's per-avatar material: face boxes, input latents, blend masks and their crop boxes.

What upstream's avatar preparation computes (and LiveTalking's musetalk avatars store):

- the face box ``(x1, y1, x2, y2)`` from the 68 landmarks: x from the landmarks' extent, y from the chin
  up to as far above the nose (point 29, moved by ``bbox_shift``) as the chin is below it, then
  ``extra_margin`` pixels more below the chin (v1.5);
- the input latents of the box's crop resized to 256x256 (``MuseTalk.face_latents``);
- a crop box: the square 1.5x the face box around its centre, and a uint8 mask of that size that keeps
  the generated lower face: ``jaw`` mode (the lower face down to just below the jaw, upper half of the
  crop box excluded, Gaussian-blurred edges). With the BiSeNet face-parsing weights the jaw region
  comes from the parsing (``face_parsing``); without them from the landmarks: the face outline (jaw
  line and brows), widened downwards like upstream's cone-shaped dilation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engines.errors import EngineError
from engines.face.boxes import smooth_boxes
from engines.face.paste import paste

NOSE_POINT = 29  # the 68-point scheme's lower nose bridge, upstream's "half face" reference
JAW = slice(0, 17)
BROWS_RIGHT_TO_LEFT = list(range(26, 16, -1))
CROP_EXPAND = 1.5
UPPER_BOUNDARY = 0.5  # rows of the crop box above this fraction keep the original frame
BLUR_FRACTION = 0.1
JAW_DROP = 0.04  # fraction of the crop height the jaw region is widened downwards (upstream's cone kernel)
EXTRA_MARGIN = 10
FACE_SIZE = 256


@dataclass
class MuseTalkMaterial:
    """Per avatar frame: face box, crop box (both x1, y1, x2, y2), blend mask (crop-box sized), input latents."""

    boxes: np.ndarray  # (N, 4) int
    crop_boxes: np.ndarray  # (N, 4) int, may reach outside the frame
    masks: Sequence[np.ndarray]  # N uint8 (h, w) of the crop boxes
    latents: torch.Tensor  # (N, 8, 32, 32)

    def __len__(self) -> int:
        return len(self.boxes)


def landmark_box(
    landmarks: np.ndarray, height: int, width: int, bbox_shift: int = 0, extra_margin: int = EXTRA_MARGIN
) -> tuple[int, int, int, int]:
    """Upstream's v1.5 face box from 68 landmarks, clamped to the frame."""
    xs, ys = landmarks[:, 0], landmarks[:, 1]
    nose_y = float(landmarks[NOSE_POINT, 1]) + bbox_shift
    chin_y = float(ys.max())
    top = nose_y - (chin_y - nose_y)
    x1, y1 = max(0, int(xs.min())), max(0, int(top))
    x2, y2 = min(width, int(xs.max())), min(height, int(chin_y) + extra_margin)
    if x2 - x1 < 8 or y2 - y1 < 8:
        raise EngineError("no_face", f"the landmarks give no usable face box ({(x1, y1, x2, y2)})")
    return x1, y1, x2, y2


def landmark_boxes(
    landmarks: np.ndarray, height: int, width: int, bbox_shift: int = 0, extra_margin: int = EXTRA_MARGIN
) -> list[tuple[int, int, int, int]]:
    """``landmark_box`` of every frame, smoothed over time as the avatar's coords are (``smooth_boxes``: the mean
    of 5 frames), so landmark noise does not make the pasted face jitter (upstream does not smooth them)."""
    raw = np.array([landmark_box(points, height, width, bbox_shift, extra_margin) for points in landmarks])
    return [(int(x1), int(y1), int(x2), int(y2)) for x1, y1, x2, y2 in smooth_boxes(raw)]


def crop_box(box: Sequence[int]) -> tuple[int, int, int, int]:
    """The square CROP_EXPAND x the face box around its centre (upstream's get_crop_box)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    half = int(max(x2 - x1, y2 - y1) // 2 * CROP_EXPAND)
    return cx - half, cy - half, cx + half, cy + half


def face_crop(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The face box's pixels resized to 256x256 (Lanczos, as upstream prepares them)."""
    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LANCZOS4)


def finish_mask(region: np.ndarray, box: Sequence[int], crop: Sequence[int]) -> np.ndarray:
    """Keep ``region`` (crop-box sized 0/255) inside the face box and below the upper boundary; blur it."""
    xs, ys, xe, ye = crop
    x1, y1, x2, y2 = box
    mask = np.zeros((ye - ys, xe - xs), np.uint8)
    mask[y1 - ys : y2 - ys, x1 - xs : x2 - xs] = region[y1 - ys : y2 - ys, x1 - xs : x2 - xs]
    mask[: int(mask.shape[0] * UPPER_BOUNDARY)] = 0
    kernel = int(BLUR_FRACTION * mask.shape[1] // 2 * 2) + 1
    return cv2.GaussianBlur(mask, (kernel, kernel), 0)


def landmark_jaw_region(landmarks: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """0/255 crop-box sized lower-face region from the landmarks (the fallback without face parsing)."""
    xs, ys, xe, ye = crop
    outline = np.concatenate([landmarks[JAW], landmarks[BROWS_RIGHT_TO_LEFT]]) - (xs, ys)
    region = np.zeros((ye - ys, xe - xs), np.uint8)
    cv2.fillPoly(region, [np.round(outline).astype(np.int32)], 255)
    drop = max(1, int(JAW_DROP * region.shape[0]))
    cone = np.zeros((2 * drop + 1, 2 * drop + 1), np.uint8)
    for row in range(drop, 2 * drop + 1):  # widening downwards only: the jaw grows down, not up
        half = row - drop
        cone[row, drop - half : drop + half + 1] = 1
    return cv2.dilate(region, cone[::-1])


def blend_mask(
    frame: np.ndarray, box: Sequence[int], landmarks: np.ndarray | None, parser=None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(mask, crop box) for one frame: face parsing when ``parser`` is given, else landmarks, else the box."""
    crop = crop_box(box)
    if parser is not None:
        region = parser.jaw_region(padded_crop(frame, crop))
    elif landmarks is not None:
        region = landmark_jaw_region(landmarks, crop)
    else:
        region = np.full((crop[3] - crop[1], crop[2] - crop[0]), 255, np.uint8)
    return finish_mask(region, box, crop), crop


def padded_crop(frame: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """``frame[crop]`` with black where the crop box leaves the frame (what PIL's crop gives upstream)."""
    xs, ys, xe, ye = crop
    height, width = frame.shape[:2]
    out = np.zeros((ye - ys, xe - xs, *frame.shape[2:]), frame.dtype)
    cx1, cy1, cx2, cy2 = max(xs, 0), max(ys, 0), min(xe, width), min(ye, height)
    if cx2 > cx1 and cy2 > cy1:
        out[cy1 - ys : cy2 - ys, cx1 - xs : cx2 - xs] = frame[cy1:cy2, cx1:cx2]
    return out


def paste_face(
    frame: np.ndarray, face_bgr: np.ndarray, box: Sequence[int], mask: np.ndarray, crop: Sequence[int]
) -> np.ndarray:
    """A copy of ``frame`` with the generated 256x256 face resized into ``box`` and blended through ``mask``,
    colour-matched at the mask's rim (``engines.face.paste``: pixels outside the mask stay as they were)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    xs, ys = int(crop[0]), int(crop[1])
    if mask.ndim == 3:  # a mask PNG decoded as BGR (LiveTalking's are grey saved as colour)
        mask = mask[..., 0]
    # Upstream blends the whole crop box, but outside the face box its "generated" pixels are the frame's own:
    # only the face box can change, and its rim is where the colour is matched.
    weights = mask[y1 - ys : y2 - ys, x1 - xs : x2 - xs].astype(np.float32) / 255.0
    return paste(frame, cv2.resize(face_bgr, (x2 - x1, y2 - y1)), weights, (y1, x1))
