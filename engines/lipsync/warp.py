"""Landmark-driven mouth warps over a piecewise-affine displacement field (``engines.lipsync.piecewise_affine``).

The 68 iBUG landmarks of a face plus fixed anchor points on the border of a crop are triangulated
once per avatar frame. A mouth shape (open, spread, round) moves the jaw, chin and lip landmarks by
a displacement that is linear in the shape, so the dense displacement field over the crop is too:
it is precomputed as three basis fields on a coarse grid (the field is piecewise linear, so linear
upsampling loses little) and a frame costs one weighted sum, one resize and one ``cv2.remap``.

The forward field d (source point p moves to p + d(p)) is inverted to first order: the pixel at q
samples the source at q - d(q). That is exact where d is locally constant (the lower lip and chin move
as a block) and only wrong inside the opened lip gap, which is repainted with the mouth interior
(``engines.lipsync.mouth``: the avatar's own open mouth when it has one, else a shaded one with teeth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from engines.lipsync import mouth
from engines.lipsync.mouth import MouthDonor
from engines.lipsync.piecewise_affine import border_anchors, displacement_fields, separate_points, warp_region

# iBUG 300-W landmark indices.
JAW = tuple(range(2, 15))
NOSE = (30, 31, 32, 33, 34, 35)
MOUTH = tuple(range(48, 68))
UPPER_OUTER = (49, 50, 51, 52, 53)
LOWER_OUTER = (55, 56, 57, 58, 59)
UPPER_INNER = (61, 62, 63)
LOWER_INNER = (67, 66, 65)  # paired with UPPER_INNER left to right
CORNERS = (48, 54, 60, 64)
INNER_LIP = tuple(range(60, 68))  # polygon order around the lip gap
LEFT_EYE, RIGHT_EYE = tuple(range(36, 42)), tuple(range(42, 48))
LEFT_BROW, RIGHT_BROW = tuple(range(17, 22)), tuple(range(22, 27))

# Mouth geometry, in mouth widths (distance between the outer lip corners).
MAX_JAW_DROP = 0.4  # chin travel at open = 1
JAW_DROP_WEIGHTS = dict(zip(JAW, (0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0, 0.95, 0.8, 0.6, 0.4, 0.2, 0.05), strict=True))
LOWER_LIP_FOLLOW = {55: 0.7, 56: 0.88, 57: 0.92, 58: 0.88, 59: 0.7, 65: 0.85, 66: 0.92, 67: 0.85}
CORNER_DROP, CORNER_INWARD = 0.4, 0.08
UPPER_LIP_RISE = {"outer": 0.04, "inner": 0.08}  # fractions of the jaw drop
SPREAD_STRETCH, SPREAD_CORNER_RISE, SPREAD_THIN = 0.25, 0.03, 0.015
ROUND_SQUEEZE, ROUND_CHIN = 0.32, 0.06
ROUND_LIP_PUSH = {"upper_outer": 0.04, "lower_outer": 0.05, "upper_inner": 0.03, "lower_inner": 0.07}

CROP_SIDE_MARGIN = 0.3  # mouth widths beyond the jaw line
CROP_BOTTOM_MARGIN = 0.4  # mouth widths below the lowest jaw point after the full drop
ANCHOR_SPACING = 0.5  # mouth widths between fixed anchor points on the crop border
GRID_CELLS_PER_MOUTH = 24  # coarse grid resolution of the basis fields
FEATHER = 0.12  # fraction of the crop over which the blend mask ramps up at its sides and bottom
SPLIT_GAP = 1.0  # px between the two sides of the line where the lips part
UPPER_TEETH_SHARE = 0.65  # of the source's lip gap above the split: teeth shown there are mostly upper ones

# Mouth interior (``engines.lipsync.mouth``).
MIN_GAP_PX = 0.75  # newly opened gap below which nothing is painted
INTERIOR_FADE_IN = 0.08  # mouth widths of extra opening over which the interior fades in
SHOWN_TEETH_PX = 3.0  # a source lip gap this wide shows the person's teeth: no painted ones under them
CAVITY_FROM_LIPS = np.array([0.3, 0.32, 0.5], dtype=np.float32)  # BGR: a deeper red than the lips
TEETH_BGR = np.array([214.0, 228.0, 238.0], dtype=np.float32)  # a warm off-white, scaled by the skin's light


@dataclass
class MouthWarp:
    """Everything one avatar frame needs to render any mouth shape (crop coordinates are local)."""

    crop: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels
    fields: np.ndarray  # (3, gh, gw, 2) float32 basis displacement fields on the coarse grid
    ramp_y: np.ndarray  # (ch,) float32 blend mask rows: 0 at the nose, 1 below it
    ramp_x: np.ndarray  # (cw,) float32 blend mask columns
    inner_lip: np.ndarray  # (8, 2) float32 split polygon (see split_line), crop coordinates
    inner_bases: np.ndarray  # (3, 8, 2) float32 its displacement per unit of each shape component
    down: np.ndarray  # (2,) unit vector from the eyes to the chin
    mouth_width: float
    source_gap: float  # px between the two sides of the split line in the source
    lip_gap: float  # px between the inner lips in the source (teeth may show there)
    lips_inner: np.ndarray  # (8, 2) float32 the inner-lip landmarks 60-67, crop coordinates
    lips_inner_bases: np.ndarray  # (3, 8, 2) float32 their displacement per unit of each shape component
    lips_bgr: np.ndarray  # (3,) float32
    teeth_bgr: np.ndarray  # (3,) float32
    donor: MouthDonor | None = None  # the avatar's own open mouth, painted in when there is one

    @property
    def cavity_bgr(self) -> np.ndarray:
        return self.lips_bgr * CAVITY_FROM_LIPS

    @property
    def nbytes(self) -> int:
        return self.fields.nbytes + self.ramp_x.nbytes + self.ramp_y.nbytes + 1024


def face_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(down, right, mouth centre, mouth width): the face's own frame, so head roll is followed."""
    eyes = landmarks[36:48].mean(axis=0)
    down = landmarks[8] - eyes
    down = down / max(float(np.linalg.norm(down)), 1e-6)
    right = np.array([down[1], -down[0]], dtype=np.float32)
    centre = (landmarks[48] + landmarks[54]) / 2.0
    width = float(np.linalg.norm(landmarks[54] - landmarks[48]))
    jaw_width = float(np.linalg.norm(landmarks[14] - landmarks[2]))
    return down.astype(np.float32), right, centre, max(width, 0.3 * jaw_width, 4.0)


def shape_bases(landmarks: np.ndarray) -> np.ndarray:
    """(3, 68, 2) displacement of every landmark per unit of open, spread and round."""
    down, right, centre, width = face_axes(landmarks)
    drop = MAX_JAW_DROP * width
    bases = np.zeros((3, 68, 2), dtype=np.float32)
    for k, weight in JAW_DROP_WEIGHTS.items():
        bases[0, k] = down * drop * weight
        bases[2, k] = down * ROUND_CHIN * width * weight
    for k, follow in LOWER_LIP_FOLLOW.items():
        bases[0, k] = down * drop * follow
    for k in UPPER_OUTER:
        bases[0, k] = -down * drop * UPPER_LIP_RISE["outer"]
    for k in UPPER_INNER:
        bases[0, k] = -down * drop * UPPER_LIP_RISE["inner"]
    for k in MOUTH:
        across = float(np.dot(landmarks[k] - centre, right))
        bases[1, k] = right * across * SPREAD_STRETCH
        bases[2, k] = right * across * -ROUND_SQUEEZE
    for k in CORNERS:
        across = float(np.dot(landmarks[k] - centre, right))
        bases[0, k] = down * drop * CORNER_DROP - right * across * CORNER_INWARD
        bases[1, k] += -down * SPREAD_CORNER_RISE * width
    for group, sign, spread, push in (
        (UPPER_OUTER, 1.0, SPREAD_THIN, -ROUND_LIP_PUSH["upper_outer"]),
        (LOWER_OUTER, -1.0, SPREAD_THIN, ROUND_LIP_PUSH["lower_outer"]),
        (UPPER_INNER, 0.0, 0.0, -ROUND_LIP_PUSH["upper_inner"]),
        (LOWER_INNER, 0.0, 0.0, ROUND_LIP_PUSH["lower_inner"]),
    ):
        for k in group:
            bases[1, k] += down * sign * spread * width
            bases[2, k] += down * push * width
    return bases


def split_line(landmarks: np.ndarray, bases: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Where the mouth opens: (8 polygon points, their (3, 8, 2) bases, inner-lip landmarks kept as controls).

    The split runs through the source's lip gap, UPPER_TEETH_SHARE of it down, so whatever shows between
    the lips (the upper teeth of a smiling avatar) moves with the upper lip, the rest with the lower; the
    polygon 60, upper split x3, 64, lower split x3 encloses only the newly opened gap. Inner-lip landmarks
    closer than the split to each other are dropped from the controls (they would coincide with the split
    points).
    """
    polygon = np.zeros((8, 2), dtype=np.float32)
    polygon_bases = np.zeros((3, 8, 2), dtype=np.float32)
    polygon[0], polygon[4] = landmarks[60], landmarks[64]
    polygon_bases[:, 0], polygon_bases[:, 4] = bases[:, 60], bases[:, 64]
    kept = [60, 64]
    for i, (upper, lower) in enumerate(zip(UPPER_INNER, LOWER_INNER, strict=True)):
        mid = landmarks[upper] + UPPER_TEETH_SHARE * (landmarks[lower] - landmarks[upper])
        polygon[1 + i] = mid - down * (SPLIT_GAP / 2.0)
        polygon[7 - i] = mid + down * (SPLIT_GAP / 2.0)
        polygon_bases[:, 1 + i], polygon_bases[:, 7 - i] = bases[:, upper], bases[:, lower]
        if float(np.dot(landmarks[lower] - landmarks[upper], down)) >= 2.0 * SPLIT_GAP:
            kept += [upper, lower]
    return polygon, polygon_bases, sorted(kept)


def lip_gap(polygon: np.ndarray, down: np.ndarray) -> float:
    """Mean distance between the lower and upper halves of a split polygon, along ``down``."""
    return float(np.mean((polygon[[7, 6, 5]] - polygon[[1, 2, 3]]) @ down))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return (x * x * (3.0 - 2.0 * x)).astype(np.float32)


def _feather(length: int, start_ramp: float, end_ramp: float) -> np.ndarray:
    """1-D blend weights over ``length`` px: 0 -> 1 over the first ``start_ramp`` px, 1 -> 0 over the last."""
    pos = np.arange(length, dtype=np.float32)
    rise = _smoothstep(pos / max(start_ramp, 1.0))
    fall = _smoothstep((length - 1 - pos) / max(end_ramp, 1.0))
    return rise * fall


def _crop_rect(landmarks: np.ndarray, width: float, frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    frame_w, frame_h = frame_size
    jaw = landmarks[list(JAW)]
    margin = CROP_SIDE_MARGIN * width
    x0 = max(0, int(math.floor(jaw[:, 0].min() - margin)))
    x1 = min(frame_w, int(math.ceil(jaw[:, 0].max() + margin)))
    nose_top = min(float(landmarks[30, 1]), float(landmarks[31:36, 1].min()) - 3.0)
    y0 = max(0, int(math.floor(nose_top)))
    y1 = min(frame_h, int(math.ceil(jaw[:, 1].max() + (MAX_JAW_DROP + CROP_BOTTOM_MARGIN) * width)))
    return x0, y0, x1, y1


def _lip_colours(frame: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lips, teeth) BGR colours matched to this face's lips and lighting."""
    lips = mouth.lips_colour(frame, landmarks)
    x0, y0 = np.clip(landmarks[[2, 29]].min(axis=0).astype(int), 0, None)
    x1, y1 = landmarks[[14, 8]].max(axis=0).astype(int)
    skin = frame[y0 : max(y0 + 1, y1), x0 : max(x0 + 1, x1)].reshape(-1, 3).mean(axis=0)
    brightness = float(np.clip(skin.mean() / 150.0, 0.55, 1.1))
    return lips, TEETH_BGR * brightness


def prepare_mouth_warp(frame: np.ndarray, landmarks: np.ndarray, donor: MouthDonor | None = None) -> MouthWarp:
    """Precompute the warp of one avatar frame (BGR) with its 68 landmarks (full-frame pixels); ``donor``: the
    avatar's open mouth to paint into opened mouths (``engines.lipsync.mouth``), else a shaded one."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    down, _, _, width = face_axes(landmarks)
    x0, y0, x1, y1 = _crop_rect(landmarks, width, (frame.shape[1], frame.shape[0]))
    cw, ch = x1 - x0, y1 - y0
    local = landmarks - np.array([x0, y0], dtype=np.float32)
    bases = shape_bases(landmarks)
    polygon, polygon_bases, inner_kept = split_line(local, bases, down)
    controls = [*JAW, *NOSE, *range(48, 60), *inner_kept]
    anchors = border_anchors(cw, ch, ANCHOR_SPACING * width)
    points = separate_points(np.concatenate([local[controls], polygon[[1, 2, 3, 5, 6, 7]], anchors]))
    moves = np.concatenate(
        [bases[:, controls], polygon_bases[:, [1, 2, 3, 5, 6, 7]], np.zeros((3, len(anchors), 2), np.float32)], axis=1
    )
    step = max(1.0, width / GRID_CELLS_PER_MOUTH)
    grid = (max(2, int(math.ceil(cw / step))), max(2, int(math.ceil(ch / step))))
    fields = displacement_fields(points, moves, (cw, ch), grid)
    nose_base = float(landmarks[33, 1]) - y0
    lips, teeth = _lip_colours(frame, landmarks)
    return MouthWarp(
        crop=(x0, y0, x1, y1),
        fields=fields,
        ramp_y=_feather(ch, nose_base + 2.0, FEATHER * ch),
        ramp_x=_feather(cw, FEATHER * cw, FEATHER * cw),
        inner_lip=polygon,
        inner_bases=polygon_bases,
        down=down,
        mouth_width=width,
        source_gap=lip_gap(polygon, down),
        lip_gap=max(0.0, lip_gap(local[list(INNER_LIP)], down)),
        lips_inner=local[list(INNER_LIP)],
        lips_inner_bases=np.ascontiguousarray(bases[:, list(INNER_LIP)]),
        lips_bgr=lips.astype(np.float32),
        teeth_bgr=teeth.astype(np.float32),
        donor=donor,
    )


def render_mouth(frame: np.ndarray, warp: MouthWarp, shape: np.ndarray) -> np.ndarray:
    """A new full frame with the lower face warped to ``shape`` (open, spread, round); the input is not modified."""
    x0, y0, x1, y1 = warp.crop
    crop = frame[y0:y1, x0:x1]
    field = np.tensordot(shape.astype(np.float32), warp.fields, axes=1)
    warped = warp_region(crop, field)
    paint_mouth_interior(warped, warp, shape)
    mask = np.outer(warp.ramp_y, warp.ramp_x)
    out = frame.copy()
    out[y0:y1, x0:x1] = cv2.blendLinear(warped, crop, mask, 1.0 - mask)
    return out


def paint_mouth_interior(warped: np.ndarray, warp: MouthWarp, shape: np.ndarray) -> None:
    """Paint the inside of the opened mouth (in place): the avatar's own open mouth over the whole inner-lip
    area when the warp has a donor, else a shaded interior in the newly opened gap."""
    weights = shape.astype(np.float32)
    split = warp.inner_lip + np.tensordot(weights, warp.inner_bases, axes=1)
    extra = lip_gap(split, warp.down) - warp.source_gap
    if extra < MIN_GAP_PX:
        return
    polygon = split if warp.donor is None else warp.lips_inner + np.tensordot(weights, warp.lips_inner_bases, axes=1)
    h, w = warped.shape[:2]
    lo = np.clip(np.floor(polygon.min(axis=0)).astype(int) - 1, 0, [w - 1, h - 1])
    hi = np.clip(np.ceil(polygon.max(axis=0)).astype(int) + 2, lo + 1, [w, h])
    region = warped[lo[1] : hi[1], lo[0] : hi[0]]
    local = polygon - lo
    if warp.donor is not None:
        interior = mouth.donor_interior(region.shape[:2], local, warp.down, warp.donor, warp.lips_bgr)
    else:
        shows_teeth = warp.lip_gap >= SHOWN_TEETH_PX  # the person's own upper teeth are already above the split
        teeth = 0.0 if shows_teeth else min(mouth.TEETH_FRACTION * extra, mouth.TEETH_MAX * warp.mouth_width)
        tongue = warp.lips_bgr * mouth.TONGUE_LIFT
        colours = (warp.cavity_bgr, tongue, warp.teeth_bgr)
        interior = mouth.shaded_interior(region.shape[:2], local, warp.down, colours, teeth, warp.mouth_width)
    mouth.paint(region, local, interior, min(1.0, extra / (INTERIOR_FADE_IN * warp.mouth_width)))
