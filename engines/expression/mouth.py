"""The mouth interior after the lips moved: two jaws and a cavity between them.

A smooth warp can only stretch what lies between the lips. Inside the moved inner-lip polygon each
output pixel is instead taken from the source interior moved with the upper lip (upper teeth) or with
the lower lip (lower teeth, jaw); what neither covers is the newly opened cavity, shaded as the lip-sync
engine shades it (``engines.lipsync.mouth``): a throat gradient, a tongue and, when the source mouth was
closed, a row of upper teeth.
"""

from __future__ import annotations

import cv2
import numpy as np

from engines.expression import FaceFrame
from engines.lipsync import mouth as shaded

INNER_LIP = list(range(60, 68))  # a closed loop: corner, upper lip, corner, lower lip
UPPER_CHAIN = [60, 61, 62, 63, 64]  # inner lip edges from corner to corner
LOWER_CHAIN = [60, 67, 66, 65, 64]
OUTER_LIP = list(range(48, 60))
CAVITY_DARKNESS = 0.35  # cavity colour as a fraction of the lip colour
TEETH_BGR = np.array([212.0, 222.0, 228.0], np.float32)  # off-white, scaled by the skin's brightness
MIN_MOTION = 0.005  # IOD: inner lips that moved less are left to the warp
UPPER_SHARE = 0.8  # of the source's lip gap moving with the upper lip: visible teeth are mostly upper ones
TONGUE_SHADE = 0.8  # tongue colour as a fraction of the lip colour
HINT_FADE_AREA = 0.03  # IOD^2: a source opening this large shows real teeth, so no painted hint
EDGE_SIGMA = 0.6  # pixels: softness of the inner-lip edge


def mouth_colors(image: np.ndarray, landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Cavity and teeth colours from the source: lips darkened, teeth lit like the skin around them."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[OUTER_LIP]).astype(np.int32)], 255)
    cv2.fillPoly(mask, [np.round(landmarks[INNER_LIP]).astype(np.int32)], 0)
    lips = image[mask > 0].astype(np.float32)
    lip = np.median(lips, axis=0) if len(lips) else np.array([90.0, 90.0, 150.0], np.float32)
    x1, y1 = np.floor(landmarks.min(axis=0)).astype(int)
    x2, y2 = np.ceil(landmarks.max(axis=0)).astype(int)
    skin = image[max(0, y1) : max(y1 + 1, y2), max(0, x1) : max(x1 + 1, x2)].reshape(-1, 3).astype(np.float32)
    brightness = float(np.clip(np.median(skin.mean(axis=1)) / 170.0, 0.55, 1.05))
    return {
        "cavity": (lip * CAVITY_DARKNESS).astype(np.float32),
        "tongue": (lip * TONGUE_SHADE).astype(np.float32),
        "teeth": TEETH_BGR * brightness,
    }


def _polygon_mask(shape: tuple[int, int], polygon: np.ndarray, sigma: float = EDGE_SIGMA) -> np.ndarray:
    """Anti-aliased, slightly softened float mask of a polygon given in the mask's pixel coordinates."""
    mask = np.zeros(shape, np.float32)
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def _chain_motion(x_local: np.ndarray, src: np.ndarray, dst: np.ndarray, chain: list[int], frame: FaceFrame):
    """Per-pixel (dx, dy) of one lip edge, interpolated along the face's horizontal axis."""
    idx = [INNER_LIP.index(i) for i in chain]
    xs = (dst[idx] - frame.origin) @ frame.ex
    order = np.argsort(xs)
    motion = dst[idx] - src[idx]
    return [np.interp(x_local, xs[order], motion[order, k]).astype(np.float32) for k in (0, 1)]


def _jaw_masks(shape, box_origin, src: np.ndarray, frame: FaceFrame) -> tuple[np.ndarray, np.ndarray]:
    """Source interior split across the lip gap (UPPER_SHARE): (upper jaw mask, lower jaw mask)."""
    h, w = shape
    whole = _polygon_mask(shape, src - box_origin)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rel = np.stack([xs + box_origin[0], ys + box_origin[1]], axis=-1) - frame.origin
    x_local, y_local = rel @ frame.ex, rel @ frame.ey
    upper, lower = (src[[INNER_LIP.index(i) for i in c]] - frame.origin for c in (UPPER_CHAIN, LOWER_CHAIN))
    mid_x = (upper @ frame.ex + lower @ frame.ex) / 2.0
    mid_y = (1.0 - UPPER_SHARE) * (upper @ frame.ey) + UPPER_SHARE * (lower @ frame.ey)
    order = np.argsort(mid_x)
    above = (y_local <= np.interp(x_local, mid_x[order], mid_y[order])).astype(np.float32)
    return whole * above, whole * (1.0 - above)


def _cavity(shape: tuple[int, int], dst: np.ndarray, frame: FaceFrame, colors, teeth_hint: float) -> np.ndarray:
    """The open mouth's inside, shaded as the lip-sync engine shades it: a throat gradient, a tongue rising
    from the bottom and, when the source mouth was closed, a row of upper teeth (``teeth_hint`` of them)."""
    width = float(np.hypot(*(dst[4] - dst[0])))
    gap = max(1.0, float(np.dot(dst[6] - dst[2], frame.ey)))
    teeth = teeth_hint * min(shaded.TEETH_FRACTION * gap, shaded.TEETH_MAX * width)
    palette = (colors["cavity"], colors["tongue"], colors["teeth"])
    return shaded.shaded_interior(shape, dst, frame.ey, palette, teeth, width).astype(np.float32)


def render_interior(
    image: np.ndarray,
    out: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    frame: FaceFrame,
    colors: dict[str, np.ndarray],
) -> None:
    """Redraw (in place, on ``out``) the inside of the moved inner lips ``dst`` (8, 2) from ``image``."""
    if np.abs(dst - src).max() < MIN_MOTION * frame.iod or cv2.contourArea(dst.astype(np.float32)) < 1.0:
        return
    pad = 3
    h, w = out.shape[:2]
    x1, y1 = (int(v) for v in np.maximum(np.floor(np.minimum(src.min(axis=0), dst.min(axis=0))) - pad, 0))
    x2, y2 = (int(v) for v in np.minimum(np.ceil(np.maximum(src.max(axis=0), dst.max(axis=0))) + pad + 1, (w, h)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return
    shape, origin = (y2 - y1, x2 - x1), np.array([x1, y1], np.float64)
    ys, xs = np.mgrid[y1:y2, x1:x2].astype(np.float32)
    x_local = (xs - frame.origin[0]) * frame.ex[0] + (ys - frame.origin[1]) * frame.ex[1]
    upper_mask, lower_mask = _jaw_masks(shape, origin, src, frame)
    layers = []
    for chain, jaw_mask in ((UPPER_CHAIN, upper_mask), (LOWER_CHAIN, lower_mask)):
        dx, dy = _chain_motion(x_local, src, dst, chain, frame)
        map_x, map_y = xs - dx, ys - dy
        pixels = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        moved = cv2.remap(jaw_mask, map_x - np.float32(x1), map_y - np.float32(y1), cv2.INTER_LINEAR, borderValue=0.0)
        layers.append((pixels.astype(np.float32), moved[..., None]))
    (upper_px, upper_a), (lower_px, lower_a) = layers
    lower_a = lower_a * (1.0 - upper_a)  # where the jaws overlap the upper teeth are in front
    hint = float(np.clip(1.0 - abs(cv2.contourArea(src.astype(np.float32))) / (HINT_FADE_AREA * frame.iod**2), 0, 1))
    cavity = _cavity(shape, dst - origin, frame, colors, hint)
    inside = upper_px * upper_a + lower_px * lower_a + cavity * (1.0 - upper_a - lower_a)
    alpha = _polygon_mask(shape, dst - origin)[..., None]
    patch = out[y1:y2, x1:x2].astype(np.float32)
    out[y1:y2, x1:x2] = np.clip(patch * (1.0 - alpha) + inside * alpha + 0.5, 0, 255).astype(np.uint8)
