"""SadTalker's preprocessing from our own 68 landmarks: the FFHQ-style face box, the 224-px alignment of the
reconstruction network, the 73 coefficients; and the paste-back of rendered crops into the portrait.

Upstream detects with facexlib (RetinaFace + awing FAN) and re-detects landmarks on the crop; we use the
dlib landmarks the caller already has (``engines.face``) and map them into the crop. The geometry is
upstream's (``croper.align_face``, ``face3d/util/preprocess.align_img``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from engines.face.paste import edge_ramp, paste
from engines.sadtalker.recon import ANGLES, EXP, TRANS

ALIGN_SIZE = 224
RESCALE = 102.0
# Deep3DFaceRecon's mean-face landmarks (``similarity_Lm3D_all.mat``, MIT) reduced to its 5 points: eye centres,
# nose tip, mouth corners (x right, y up, z towards the camera).
REFERENCE_5P = np.array(
    [
        [-0.3114865720272064, 0.29036077857017517, 0.13377952575683594],
        [0.30979886651039124, 0.289720356464386, 0.1317952573299408],
        [0.003253498813137412, -0.04617932438850403, 0.5524424314498901],
        [-0.25216928124427795, -0.3813391625881195, 0.22405731678009033],
        [0.24846619367599487, -0.38128235936164856, 0.22235769033432007],
    ]
)
MODES = ("crop", "extcrop", "full", "extfull")
FEATHER = 0.08  # blend ramp, as a fraction of the pasted box's smaller side


@dataclass(frozen=True)
class FaceBox:
    """Where the rendered square goes in the portrait: (x1, y1, x2, y2), and the 73-column crop params."""

    box: tuple[int, int, int, int]
    quad_box: tuple[int, int, int, int]  # the face box (crop modes)
    bordered: tuple[int, int, int, int]  # the box with upstream's border (ext modes)


def face_box(landmarks: np.ndarray, width: int, height: int, mode: str = "crop") -> FaceBox:
    """Upstream's ``align_face`` box from 68 landmarks: an eye/mouth-oriented square of side
    max(4 |eye_to_eye|, 3.6 |eye_to_mouth|) around eye_avg + 0.1 eye_to_mouth, axis-aligned (no rotation).
    The bordered box adds max(0.1 side, 3) px. Boxes are clipped to the image."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    eye_avg, eye_to_eye = (eye_left + eye_right) * 0.5, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    border = max(int(np.rint(np.hypot(*x) * 2 * 0.1)), 3)
    lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    bordered = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, width), min(hi[1] + border, height))
    q = quad + 0.5  # upstream's "(quad + 0.5)" then int(): the face box inside the bordered crop
    tight = (
        int(max(min(q[0, 0], q[1, 0]), 0)),
        int(max(min(q[0, 1], q[3, 1]), 0)),
        int(min(max(q[2, 0], q[3, 0]), width)),
        int(min(max(q[1, 1], q[2, 1]), height)),
    )
    chosen = bordered if mode.startswith("ext") else tight
    return FaceBox(chosen, tight, bordered)


def cut_square(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The box cut from ``image`` and resized to size x size (aspect not kept, as upstream)."""
    x1, y1, x2, y2 = box
    return cv2.resize(image[y1:y2, x1:x2], (size, size))


def crop_landmarks(landmarks: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    x1, y1, x2, y2 = box
    scale = np.array([size / (x2 - x1), size / (y2 - y1)])
    return (np.asarray(landmarks, np.float64) - [x1, y1]) * scale


def _pos(points2d: np.ndarray, points3d: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares weak perspective (upstream POS): translation (2,) and scale of 3D -> 2D."""
    n = points2d.shape[0]
    a = np.zeros((2 * n, 8))
    a[0::2, 0:3], a[0::2, 3] = points3d, 1
    a[1::2, 4:7], a[1::2, 7] = points3d, 1
    k = np.linalg.lstsq(a, points2d.reshape(-1), rcond=None)[0]
    return np.array([k[3], k[7]]), (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres (means of 36/39 and 42/45), nose tip 30, mouth corners 48 and 54."""
    lm = np.asarray(landmarks, np.float64)
    return np.stack([lm[[36, 39]].mean(0), lm[[42, 45]].mean(0), lm[30], lm[48], lm[54]])


def align_224(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reconstruction net's input: (224, 224, 3) uint8 RGB and trans_params [w0, h0, s, tx, ty].

    Landmarks in image pixels (y down); upstream flips y, fits the 5 points to the mean face, scales the image
    by 102 / s (PIL bicubic) and cuts 224 x 224 around the fitted centre."""
    h0, w0 = rgb.shape[:2]
    lm = np.asarray(landmarks, np.float64).copy()
    lm[:, 1] = h0 - 1 - lm[:, 1]
    t, s = _pos(five_points(lm), REFERENCE_5P)
    s = RESCALE / s
    w, h = int(w0 * s), int(h0 * s)
    left = int(w / 2 - ALIGN_SIZE / 2 + float((t[0] - w0 / 2) * s))
    up = int(h / 2 - ALIGN_SIZE / 2 + float((h0 / 2 - t[1]) * s))
    resized = Image.fromarray(rgb).resize((w, h), resample=Image.BICUBIC)
    aligned = np.array(resized.crop((left, up, left + ALIGN_SIZE, up + ALIGN_SIZE)))  # writable
    return aligned, np.array([w0, h0, s, t[0], t[1]], np.float32)


def coeffs_73(raw: np.ndarray, trans_params: np.ndarray) -> np.ndarray:
    """(B, 257) recon output -> (B, 73): exp 64, angles 3, trans 3, then trans_params[2:] (s, tx, ty)."""
    raw = np.asarray(raw, np.float32)
    extra = np.broadcast_to(np.asarray(trans_params, np.float32)[2:], (raw.shape[0], 3))
    return np.concatenate([raw[:, EXP], raw[:, ANGLES], raw[:, TRANS], extra], axis=1)


class PasteBack:
    """Rendered squares back into the portrait at ``box``: resized to the box, colour-matched and feathered.

    Upstream pastes each frame with ``cv2.seamlessClone`` (a Poisson solve per frame, its slowest CPU step).
    Here the mask is computed once: a smooth ramp from 0 at the box edge to 1 at ``FEATHER`` of the box
    inward; each frame goes through ``engines.face.paste`` (colour matched to the portrait in Lab over that
    ramp, pixels outside the box untouched): a few vector operations on the box only.
    """

    def __init__(self, portrait: np.ndarray, box: tuple[int, int, int, int]) -> None:
        self.portrait, self.box = portrait, box
        x1, y1, x2, y2 = box
        width, height = x2 - x1, y2 - y1
        self.alpha = edge_ramp(height, width, max(2.0, FEATHER * min(width, height)))

    def __call__(self, square: np.ndarray) -> np.ndarray:
        """One rendered square (S, S, 3) uint8, same channel order as the portrait -> the full frame."""
        x1, y1, x2, y2 = self.box
        return paste(self.portrait, cv2.resize(square, (x2 - x1, y2 - y1)), self.alpha, (y1, x1))
