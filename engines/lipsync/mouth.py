"""The inside of a mouth the warp opened: the avatar's own, or a shaded one with teeth.

- **From the avatar** (``MouthDonor``): a recorded avatar with an open-mouth frame (inner-lip gap at
  least ``OPEN_FRAME_MIN`` of the mouth width) lends that frame's inner mouth (the person's teeth, tongue
  and throat) to every rendered frame. Both mouths are read in their own face axes, column by column
  from one lip corner to the other: the donor's upper ``TEETH_TOP`` of the gap keeps its size under the
  rendered upper lip (upper teeth), its lower ``TEETH_BOTTOM`` above the rendered lower lip (lower
  teeth), and only the band between them (tongue, throat) stretches or shrinks to the rendered gap;
  colours are matched to the frame through the ratio of the two frames' lip colours.
- **Shaded** (no open frame, a portrait): a throat gradient (darkest behind the teeth, lighter toward a
  tongue at the bottom, darker toward the corners), an upper row of teeth under the upper lip (tooth
  boundaries, whiter at the front, shadowed at the gum line, a soft shadow under their edge) and, for
  wide openings, a hint of lower teeth. Never a flat bar.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INNER_LIP = tuple(range(60, 68))  # corner, upper lip x3, corner, lower lip x3
OPEN_FRAME_MIN = 0.22  # inner-lip gap over mouth width from which a frame shows its mouth's inside
DONOR_MARGIN = 0.15  # mouth widths of context kept around the donor's inner lips
TEETH_TOP, TEETH_BOTTOM = 0.4, 0.25  # shares of the donor's gap kept at their size (upper, lower teeth)
GAIN_RANGE = (0.75, 1.33)  # per-channel colour match between the donor's lips and the frame's

# Shaded interior.
CAVITY_SHADE = (0.5, 0.7)  # throat brightness behind the teeth, rising by this much toward the floor
CORNER_SHADOW = 0.45  # darker toward the lip corners (the cheeks' inner shadow)
TONGUE_LIFT = 0.8  # tongue colour over the lips' colour (lit from the front)
TONGUE_HEIGHT, TONGUE_HALF_WIDTH = 0.42, 0.75  # the tongue's rise (share of the gap) and half width (half mouths)
TEETH_FRACTION, TEETH_MAX = 0.32, 0.12  # upper teeth height: share of the gap, capped in mouth widths
GUM_SHADOW = 0.85  # teeth brightness right under the upper lip, rising to 1 over their top third
TOOTH_EDGES = (0.0, 0.3, 0.55, 0.76)  # tooth boundaries across the half mouth (0 = middle): incisors, canines
TOOTH_GAP_SHADE, TOOTH_GAP_WIDTH = 0.8, 0.03  # brightness at a boundary and its half width (half mouths)
TEETH_SPAN = 0.88  # half mouths: beyond it the row turns away into the cheeks' shadow
LOWER_TEETH_FROM = 0.25  # gap (mouth widths) from which lower front teeth show above the lower lip
LOWER_TEETH_SHARE, LOWER_TEETH_SHADE, LOWER_TEETH_SPAN = 0.35, 0.6, 0.55  # height over the upper's, light, span


@dataclass
class MouthDonor:
    """An open mouth from one avatar frame, in its own face axes (patch pixels)."""

    patch: np.ndarray  # BGR uint8 crop around the inner lips
    polygon: np.ndarray  # (8, 2) float32 inner lips (landmarks 60-67) in patch pixels
    down: np.ndarray  # (2,) unit vector from the eyes to the chin
    lips_bgr: np.ndarray  # (3,) float32 median colour of the lips

    @property
    def nbytes(self) -> int:
        return self.patch.nbytes + 256


def opening_ratio(landmarks: np.ndarray) -> float:
    """Mean inner-lip gap (61-67, 62-66, 63-65) over the mouth width (48-54)."""
    lm = np.asarray(landmarks, np.float64)
    gap = np.mean([np.hypot(*(lm[a] - lm[b])) for a, b in ((61, 67), (62, 66), (63, 65))])
    return float(gap / max(np.hypot(*(lm[54] - lm[48])), 1.0))


def most_open_frame(landmarks: np.ndarray) -> int | None:
    """Index of the frame whose mouth is open widest, if one is open at least OPEN_FRAME_MIN."""
    ratios = [opening_ratio(lm) for lm in landmarks]
    best = int(np.argmax(ratios)) if ratios else 0
    return best if ratios and ratios[best] >= OPEN_FRAME_MIN else None


def lips_colour(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Median BGR of the lower lip's middle (between its outer and inner edges)."""
    h, w = frame.shape[:2]
    lower_lip = (landmarks[[56, 57, 58]] + landmarks[[65, 66, 67]]) / 2.0
    xs = np.clip(np.round(lower_lip[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.round(lower_lip[:, 1]).astype(int), 0, h - 1)
    return np.median(frame[ys, xs].astype(np.float32), axis=0)


def make_donor(frame: np.ndarray, landmarks: np.ndarray, down: np.ndarray) -> MouthDonor:
    """The inner mouth of ``frame`` (BGR) with its 68 landmarks (frame pixels), ``down`` its face's axis."""
    lm = np.asarray(landmarks, np.float32)
    inner = lm[list(INNER_LIP)]
    margin = DONOR_MARGIN * float(np.hypot(*(lm[54] - lm[48]))) + 2.0
    h, w = frame.shape[:2]
    x0, y0 = (int(v) for v in np.maximum(np.floor(inner.min(axis=0) - margin), 0))
    x1, y1 = (int(v) for v in np.minimum(np.ceil(inner.max(axis=0) + margin), (w, h)))
    patch = np.ascontiguousarray(frame[y0:y1, x0:x1])
    return MouthDonor(patch, inner - np.array([x0, y0], np.float32), down.astype(np.float32), lips_colour(frame, lm))


def _right(down: np.ndarray) -> np.ndarray:
    """The face's horizontal axis for its ``down`` axis (as ``engines.lipsync.warp.face_axes``)."""
    return np.array([down[1], -down[0]], np.float32)


def _chains(polygon: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, float, tuple[np.ndarray, ...]]:
    """(origin, width, (upper xs, upper ys, lower xs, lower ys)) of a mouth polygon in its face axes."""
    right = _right(down)
    origin = polygon[0]
    across, depth = (polygon - origin) @ right, (polygon - origin) @ down
    width = max(float(across[4]), 1.0)
    upper, lower = [0, 1, 2, 3, 4], [0, 7, 6, 5, 4]
    chains = []
    for chain in (upper, lower):
        order = np.argsort(across[chain], kind="stable")
        chains += [across[chain][order], depth[chain][order]]
    return origin, width, tuple(chains)


def donor_maps(
    size: tuple[int, int], polygon: np.ndarray, down: np.ndarray, donor: MouthDonor
) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (``size`` = h, w, over the region ``polygon`` is given in) into the donor patch."""
    h, w = size
    right = _right(down)
    origin, width, (ux, uy, lx, ly) = _chains(polygon, down)
    d_origin, d_width, (dux, duy, dlx, dly) = _chains(donor.polygon, donor.down)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rel_x, rel_y = xs - origin[0], ys - origin[1]
    across, depth = rel_x * right[0] + rel_y * right[1], rel_x * down[0] + rel_y * down[1]
    t = np.clip(across / width, 0.0, 1.0)
    top, bottom = np.interp(across, ux, uy), np.interp(across, lx, ly)
    d_across = t * d_width
    d_top, d_bottom = np.interp(d_across, dux, duy), np.interp(d_across, dlx, dly)
    gap, d_gap = np.maximum(bottom - top, 1e-3), np.maximum(d_bottom - d_top, 1e-3)
    keep_top = np.minimum(TEETH_TOP * d_gap, TEETH_TOP * gap)
    keep_bottom = np.minimum(TEETH_BOTTOM * d_gap, TEETH_BOTTOM * gap)
    middle = np.maximum(gap - keep_top - keep_bottom, 1e-3)
    d_middle = np.maximum(d_gap - keep_top - keep_bottom, 0.0)
    below_top = depth - top
    d_depth = np.where(
        below_top < keep_top,
        d_top + below_top,
        np.where(
            bottom - depth < keep_bottom,
            d_bottom - (bottom - depth),
            d_top + keep_top + (below_top - keep_top) * d_middle / middle,
        ),
    )
    d_right = _right(donor.down)
    map_x = d_origin[0] + d_across * d_right[0] + d_depth * donor.down[0]
    map_y = d_origin[1] + d_across * d_right[1] + d_depth * donor.down[1]
    return map_x.astype(np.float32), map_y.astype(np.float32)


def donor_interior(
    size: tuple[int, int], polygon: np.ndarray, down: np.ndarray, donor: MouthDonor, lips_bgr: np.ndarray
) -> np.ndarray:
    """The donor's inner mouth fitted to ``polygon`` (region pixels), colour-matched to ``lips_bgr``."""
    map_x, map_y = donor_maps(size, polygon, down, donor)
    pixels = cv2.remap(donor.patch, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    gain = np.clip(lips_bgr / np.maximum(donor.lips_bgr, 1.0), *GAIN_RANGE).astype(np.float32)
    return np.clip(pixels.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def shaded_interior(
    size: tuple[int, int],
    polygon: np.ndarray,
    down: np.ndarray,
    colours: tuple[np.ndarray, np.ndarray, np.ndarray],
    teeth_height: float,
    mouth_width: float,
) -> np.ndarray:
    """A plausible inside for ``polygon`` (region pixels): throat gradient, tongue, upper (and lower) teeth.

    ``colours``: (cavity, tongue, teeth) BGR; ``teeth_height``: px of upper teeth to draw under the upper lip.
    """
    cavity_bgr, tongue_bgr, teeth_bgr = colours
    h, w = size
    right = _right(down)
    origin, width, (ux, uy, lx, ly) = _chains(polygon, down)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rel_x, rel_y = xs - origin[0], ys - origin[1]
    across, depth = rel_x * right[0] + rel_y * right[1], rel_x * down[0] + rel_y * down[1]
    top, bottom = np.interp(across, ux, uy), np.interp(across, lx, ly)
    gap = np.maximum(bottom - top, 1.0)
    below_top = depth - top
    fraction = np.clip(below_top / gap, 0.0, 1.0)
    half = np.clip(np.abs(across / width * 2.0 - 1.0), 0.0, 1.0)  # 0 in the middle, 1 at the corners
    shade = CAVITY_SHADE[0] + CAVITY_SHADE[1] * np.clip((fraction - 0.3) / 0.7, 0.0, 1.0) ** 1.5
    image = (shade * (1.0 - CORNER_SHADOW * half**2))[..., None] * cavity_bgr
    # the tongue: a mound rising from the lower lip in the middle, its back (top) in shadow
    middle_gap = float(np.interp(width / 2.0, lx, ly) - np.interp(width / 2.0, ux, uy))
    rise = TONGUE_HEIGHT * middle_gap * np.clip(1.0 - (half / TONGUE_HALF_WIDTH) ** 2, 0.0, 1.0)
    above_floor = bottom - depth
    tongue = np.clip((rise - above_floor) / 1.5, 0.0, 1.0) * (rise > 0.5)
    lit = 0.7 + 0.3 * np.clip(1.0 - above_floor / np.maximum(rise, 1.0), 0.0, 1.0)
    image = image + tongue[..., None] * (lit[..., None] * tongue_bgr - image)
    if teeth_height > 0.5:
        edge = teeth_height * (1.0 - 0.3 * half**2)  # the row's lower edge curves up toward the corners
        weight = np.clip((edge - below_top) / 1.2, 0.0, 1.0) * np.clip((TEETH_SPAN - half) / 0.1, 0.0, 1.0)
        image = image + weight[..., None] * (_teeth(half, below_top, edge, teeth_bgr) - image)
        wide = float(np.clip((middle_gap / mouth_width - LOWER_TEETH_FROM) / 0.1, 0.0, 1.0))
        if wide > 0.0:
            lower_edge = LOWER_TEETH_SHARE * teeth_height * (1.0 - 0.3 * half**2)
            span = np.clip((LOWER_TEETH_SPAN - half) / 0.1, 0.0, 1.0)
            lower = np.clip((lower_edge - (bottom - depth)) / 1.2, 0.0, 1.0) * wide * span
            lower_teeth = LOWER_TEETH_SHADE * _teeth(half, bottom - depth, lower_edge, teeth_bgr)
            image = image + lower[..., None] * (lower_teeth - image)
    return np.clip(image, 0, 255).astype(np.uint8)


def _teeth(half: np.ndarray, from_gum: np.ndarray, edge: np.ndarray, teeth_bgr: np.ndarray) -> np.ndarray:
    """Teeth colour per pixel: whiter at the front, separated at tooth boundaries, shadowed at the gum line."""
    boundary = np.min([np.abs(half - e) for e in TOOTH_EDGES[1:]], axis=0)
    gaps = 1.0 - (1.0 - TOOTH_GAP_SHADE) * np.clip(1.0 - boundary / TOOTH_GAP_WIDTH, 0.0, 1.0)
    front = np.clip(1.0 - 0.5 * half**2, 0.45, 1.0)
    gum = GUM_SHADOW + (1.0 - GUM_SHADOW) * np.clip(from_gum / np.maximum(edge / 3.0, 1.0), 0.0, 1.0)
    return (gaps * front * gum)[..., None] * teeth_bgr


def smooth_polygon(polygon: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Chaikin corner cutting of a closed polygon: lip outlines are curves, not zigzags."""
    points = polygon
    for _ in range(iterations):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following], axis=1)
        points = points.reshape(-1, 2)
    return points


def paint(region: np.ndarray, polygon: np.ndarray, interior: np.ndarray, strength: float) -> None:
    """Blend ``interior`` into ``region`` (in place) inside the smoothed, anti-aliased ``polygon``."""
    coverage = np.zeros(region.shape[:2], dtype=np.uint8)
    cv2.fillPoly(coverage, [np.round(smooth_polygon(polygon) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = coverage.astype(np.float32) * (strength / 255.0)
    region[:] = cv2.blendLinear(interior, region, alpha, 1.0 - alpha)


__all__ = ["MouthDonor", "make_donor", "most_open_frame", "opening_ratio", "paint", "shaded_interior"]
