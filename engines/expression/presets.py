"""Emotion presets: the service's parameter table plus facial action units (FACS) as landmark motion.

Every displacement is in face-frame units (inter-ocular distance, IOD; +y towards the chin, +outward
away from the face's vertical midline) for the control points of ``engines.expression.geometry``.

How the table (emotions.md) and ``intensity`` drive a preset, with ``s = intensity * expression_scale``:

- ``eyebrows`` (signed): the whole brows move up by ``eyebrows * BROW_SHIFT`` IOD or, when negative,
  down by ``-eyebrows * BROW_DROP`` of their gap to the eyes (brows sit close to the eyes on some
  faces); the forehead skin and upper lids follow a little;
- ``eyes`` (eye-opening ratio, 1 = as in the photo): the lids close by the fraction ``1 - eyes`` of
  each eye's measured opening (lid tightener / cheek raiser squint), two thirds from the lower lid; the
  upper-lid raiser opens them by at most ``EYE_WIDEN`` of that opening per unit, so an eye is never
  stretched beyond what its landmarks show (its iris would smear into a dark blot); each eye's centre
  moves with its corners and each lid crease with its lid, so the eye itself moves as a block;
- ``mouth``: the strength of the preset's mouth action: lips parting in a grin (happy), jaw drop
  (surprised, fearful: the lower lip drops, the chin only a little, so nothing below the chin moves
  beyond the face hull's margin), upper lip parting (disgusted) or lip press (angry);
- the source photo may smile: every preset but happy and surprised levels the lip corners back to the
  lips' midline first (fully for neutral and angry), so angry or sad never read as a smile;
- action units with no column in the table (lip-corner puller, cheek raiser, inner-brow raiser, brow
  lowerer, upper-lid raiser, lip-corner depressor, nose wrinkler, upper-lip raiser, lip stretcher,
  neutral mouth relaxation) have fixed magnitudes per preset;
- the sum of all of these is multiplied by ``s``: intensity 0 moves nothing, and every point moves
  linearly (so monotonically) with intensity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.expression.geometry import (
    BROW_TOPS,
    BROWS,
    CREASE_LIFT,
    CREASES,
    EYE_CENTRES,
    FOREHEAD,
    NUM_MOVING,
    UPPER_LIDS,
)

BROW_SHIFT = 0.13  # IOD the brows rise for eyebrows = 1
BROW_DROP = 0.6  # fraction of the brow-to-crease gap the brows descend for eyebrows = -1
JAW_DROP = 0.25  # IOD the lower lip drops for mouth = 1 (the chin: CHIN_FOLLOW of it)
EYE_WIDEN = 0.2  # fraction of an eye's opening its upper lid rises per unit of upper-lid raiser
GRIN_PART = 0.14  # IOD the lips part in a grin for mouth = 1
UPPER_PART = 0.25  # IOD the upper lip lifts off the lower one for mouth = 1
PRESS_GAIN = 2.75  # fraction of the lip gap closed per unit of mouth: angry (0.3, scale 1.2) just closes at intensity 1
PRESS_THIN = 0.5  # how much of each lip's thickness a full press removes


@dataclass(frozen=True)
class EmotionParams:
    """One row of the service's table."""

    mouth: float
    eyes: float
    eyebrows: float
    scale: float


@dataclass(frozen=True)
class Preset:
    params: EmotionParams
    mouth_action: str  # "none", "grin", "jaw_drop", "upper_part" or "press"
    shapes: tuple[tuple[str, float], ...]  # (action unit, weight) with no column in the table


PRESETS: dict[str, Preset] = {
    "neutral": Preset(EmotionParams(0.0, 1.0, 0.0, 1.0), "none", (("level_corners", 1.0), ("close_lips", 1.0))),
    "happy": Preset(EmotionParams(0.6, 0.9, 0.2, 1.3), "grin", (("lip_corner_puller", 1.0), ("cheek_raiser", 1.0))),
    "sad": Preset(
        EmotionParams(0.0, 0.7, -0.5, 1.0),
        "none",
        (
            ("inner_brow_raiser", 1.0),
            ("brow_lowerer", 0.3),
            ("lip_corner_depressor", 1.0),
            ("level_corners", 0.6),
            ("close_lips", 0.6),
        ),
    ),
    "surprised": Preset(EmotionParams(0.8, 1.0, 0.8, 1.5), "jaw_drop", (("upper_lid_raiser", 1.0),)),
    "angry": Preset(
        EmotionParams(0.3, 0.8, -0.7, 1.2),
        "press",
        (("brow_lowerer", 1.0), ("level_corners", 1.0), ("lip_corner_depressor", 0.3)),
    ),
    "disgusted": Preset(
        EmotionParams(0.2, 0.6, -0.3, 1.1),
        "upper_part",
        (("nose_wrinkler", 1.0), ("upper_lip_raiser", 1.0), ("level_corners", 0.5)),
    ),
    "fearful": Preset(
        EmotionParams(0.4, 1.0, 0.6, 1.2),
        "jaw_drop",
        (
            ("inner_brow_raiser", 0.6),
            ("brow_knit", 1.3),
            ("upper_lid_raiser", 1.2),
            ("lip_stretcher", 1.0),
            ("level_corners", 0.7),
        ),
    ),
}

# Subject's right-side point -> its mirror on the left; unlisted points lie on the midline.
MIRROR = {
    **{i: 16 - i for i in range(8)},
    **dict(zip(range(17, 22), range(26, 21, -1), strict=True)),
    31: 35,
    32: 34,
    **{36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46},
    **{48: 54, 49: 53, 50: 52, 59: 55, 58: 56, 60: 64, 61: 63, 67: 65},
    **dict(zip(range(68, 73), range(77, 72, -1), strict=True)),
    78: 79,
    80: 81,
}


def _pattern(spec: dict[int, tuple[float, float]]) -> np.ndarray:
    """(outward, down) per right-side or midline point -> (x, y) for every point, mirrored to the left."""
    d = np.zeros((NUM_MOVING, 2))
    for i, (out, down) in spec.items():
        if i in MIRROR:
            d[i] = (-out, down)
            d[MIRROR[i]] = (out, down)
        else:
            d[i] = (0.0, down)
    return d


BROW_UNIT = _pattern(
    {17: (0, -0.85), 18: (0, -1), 19: (0, -1), 20: (0, -1), 21: (0, -1), 37: (0, -0.04), 38: (0, -0.04)}
    | {i: (0, -0.3) for i in range(68, 73)}
)
CHIN_FOLLOW = 0.4  # of the lower lip's drop: the chin may not move past the face hull's margin
JAW_UNIT = _pattern(
    {57: (0, 1.0), 58: (0, 0.97), 59: (0, 0.8), 66: (0, 1.0), 67: (0, 0.95), 48: (-0.08, 0.4), 60: (-0.08, 0.4)}
    | {i: (0, CHIN_FOLLOW * w) for i, w in ((8, 1.0), (7, 0.9), (6, 0.65), (5, 0.38), (4, 0.15), (3, 0.04))}
    | {61: (0, -0.06), 62: (0, -0.08), 50: (0, -0.04), 51: (0, -0.05), 80: (0, 0.08)}
)
GRIN_UNIT = _pattern(
    {61: (0, -0.35), 62: (0, -0.35), 50: (0, -0.2), 51: (0, -0.2), 49: (0, -0.12), 48: (0.05, 0), 60: (0.05, 0)}
    | {66: (0, 0.65), 67: (0, 0.65), 57: (0, 0.6), 58: (0, 0.6), 59: (0, 0.45)}
    | {8: (0, 0.4), 7: (0, 0.35), 6: (0, 0.22), 5: (0, 0.1)}
)
UPPER_PART_UNIT = _pattern(
    {61: (0, -1.0), 62: (0, -1.0), 50: (0, -0.6), 51: (0, -0.6), 49: (0, -0.35), 48: (0, -0.1), 60: (0, -0.1)}
)

SHAPES = {
    "inner_brow_raiser": _pattern(  # AU1
        {21: (0, -0.2), 20: (0, -0.14), 19: (0, -0.07), 18: (0, -0.02), 72: (0, -0.08), 71: (0, -0.05), 70: (0, -0.02)}
    ),
    "cheek_raiser": _pattern({78: (0, -0.08), 40: (0, -0.035), 41: (0, -0.035), 80: (0, -0.04)}),  # AU6
    "lip_corner_puller": _pattern(  # AU12
        {48: (0.1, -0.16), 60: (0.08, -0.15), 49: (0.05, -0.09), 59: (0.05, -0.08), 61: (0.02, -0.05)}
        | {67: (0.02, -0.04), 50: (0.02, -0.03), 58: (0.02, -0.03), 80: (0.03, -0.05)}
    ),
    "lip_corner_depressor": _pattern(  # AU15
        {48: (-0.02, 0.16), 60: (-0.02, 0.14), 49: (0, 0.07), 59: (0, 0.09), 61: (0, 0.05), 67: (0, 0.06)}
        | {50: (0, 0.02), 58: (0, 0.03), 80: (0, 0.03)}
    ),
    "lip_stretcher": _pattern(  # AU20
        {48: (0.12, 0.03), 60: (0.11, 0.03), 49: (0.06, 0.01), 59: (0.06, 0.02), 61: (0.04, 0), 67: (0.04, 0.01)}
        | {50: (0.02, 0), 58: (0.02, 0), 80: (0.03, 0)}
    ),
    "upper_lip_raiser": _pattern(  # AU10
        {50: (0, -0.11), 51: (0, -0.09), 49: (0, -0.07), 61: (0, -0.09), 62: (0, -0.08), 48: (0, -0.03)}
        | {60: (0, -0.03), 80: (0, -0.04), 31: (0.01, -0.02)}
    ),
    "nose_wrinkler": _pattern(  # AU9: nose, inner brows and upper lip pulled together
        {31: (0.01, -0.06), 32: (0, -0.06), 33: (0, -0.06), 30: (0, -0.04), 29: (0, -0.025), 28: (0, -0.01)}
        | {21: (-0.03, 0.05), 20: (-0.02, 0.03), 72: (-0.02, 0.02), 78: (0, -0.04), 40: (0, -0.02), 41: (0, -0.02)}
        | {80: (0.01, -0.05), 50: (0, -0.04), 51: (0, -0.04), 49: (0, -0.03), 61: (0, -0.03), 62: (0, -0.03)}
    ),
}

LID_PAIRS = ([37, 38], [43, 44]), ([41, 40], [47, 46])  # upper lids, lower lids per eye
EYE_CORNERS = ([36, 39], [42, 45])
LOWER_LID_SHARE = 0.2  # the lower lid's share of a widening
BROWS_ABOVE_LIDS = [19, 20, 23, 24]  # the brow point above each upper-lid point (37, 38, 43, 44)
CREASE_FOLLOWS_BROW = 0.35  # the lid crease moves with its lid plus this share of the brow's extra motion
BROW_SIDES = (list(range(17, 22)), list(range(26, 21, -1)))  # outer to inner, with the lids below them
KNIT_INWARD = (0.0, 0.03, 0.08, 0.14, 0.22)  # of half the inner brows' gap, towards the midline, outer to inner
KNIT_DROP = (0.0, 0.03, 0.06, 0.1, 0.15)  # fraction of the brow-to-lid gap, outer to inner
FOREHEAD_FOLLOW = 0.3  # forehead points move with the brow below them by this much
INNER_UPPER, INNER_LOWER = [61, 62, 63], [67, 66, 65]  # column-aligned pairs
OUTER_UPPER, OUTER_LOWER = [50, 51, 52], [58, 57, 56]
CORNERS = [48, 54, 60, 64]
CORNER_NEIGHBOURS = {49: 48, 59: 48, 53: 54, 55: 54}


def lid_narrowing(local: np.ndarray, fraction: float) -> np.ndarray:
    """Close each eye by ``fraction`` of its measured opening: a third from above, two thirds from below."""
    d = np.zeros((NUM_MOVING, 2))
    for upper, lower in zip(*LID_PAIRS, strict=True):
        opening = _eye_opening(local, upper, lower)
        d[upper, 1] += fraction * opening / 3.0
        d[lower, 1] -= fraction * opening * 2.0 / 3.0
    return d


def _eye_opening(local: np.ndarray, upper: list[int], lower: list[int]) -> float:
    return max(0.0, float(local[lower, 1].mean() - local[upper, 1].mean()))


def lid_widening(local: np.ndarray) -> np.ndarray:
    """AU5: each upper lid rises by EYE_WIDEN of its eye's measured opening (the lower lid drops a little)."""
    d = np.zeros((NUM_MOVING, 2))
    for upper, lower in zip(*LID_PAIRS, strict=True):
        opening = _eye_opening(local, upper, lower)
        d[upper, 1] -= EYE_WIDEN * (1.0 - LOWER_LID_SHARE) * opening
        d[lower, 1] += EYE_WIDEN * LOWER_LID_SHARE * opening
    return d


def as_blocks(d: np.ndarray) -> np.ndarray:
    """The derived points: each eye's centre moves with its corners, each lid crease with its lid point (and
    a little with the brow), each brow top with its brow point, so eyes and brows are moved, not stretched."""
    d = d.copy()
    for centre, corners in zip(EYE_CENTRES, EYE_CORNERS, strict=True):
        d[centre] = d[corners].mean(axis=0)
    d[CREASES] = d[UPPER_LIDS] + CREASE_FOLLOWS_BROW * (d[BROWS_ABOVE_LIDS] - d[UPPER_LIDS])
    d[BROW_TOPS] = d[BROWS]
    return d


def _brow_gaps(local: np.ndarray) -> list[np.ndarray]:
    """Per brow side, the vertical gap (IOD) from each brow point (outer to inner) down to its lid crease."""
    return [
        np.maximum(0.0, local[lids, 1].mean() - CREASE_LIFT - local[brow, 1])
        for brow, lids in zip(BROW_SIDES, LID_PAIRS[0], strict=True)
    ]


def brow_motion(local: np.ndarray, eyebrows: float) -> np.ndarray:
    """Up by ``eyebrows * BROW_SHIFT`` IOD; down by a fraction of the gap to the eyes, so brows never reach them."""
    if eyebrows >= 0.0:
        return BROW_SHIFT * eyebrows * BROW_UNIT
    d = np.zeros((NUM_MOVING, 2))
    for brow, lids, gap in zip(BROW_SIDES, LID_PAIRS[0], _brow_gaps(local), strict=True):
        down = BROW_DROP * -eyebrows * gap
        d[brow, 1] += down
        d[[FOREHEAD[BROWS.index(i)] for i in brow], 1] += FOREHEAD_FOLLOW * down
        d[lids, 1] += 0.1 * down.mean()
    return d


def brow_lowerer(local: np.ndarray, drop: bool = True) -> np.ndarray:
    """AU4: brows drawn together and down, most at their inner ends (``drop`` False: together only)."""
    d = np.zeros((NUM_MOVING, 2))
    half_gap = max(0.0, float(local[22, 0] - local[21, 0])) / 2.0
    for side, (brow, gap) in enumerate(zip(BROW_SIDES, _brow_gaps(local), strict=True)):
        inward = np.array(KNIT_INWARD) * half_gap * (1.0 if side == 0 else -1.0)
        down = np.array(KNIT_DROP) * gap * drop
        forehead = [FOREHEAD[BROWS.index(i)] for i in brow]
        d[brow] += np.column_stack([inward, down])
        d[forehead] += FOREHEAD_FOLLOW * np.column_stack([inward, down])
    return d


def _close_lip_gap(local: np.ndarray, fraction: float, thin: float) -> np.ndarray:
    """Bring the inner lips together by ``fraction`` of their gap; thin each red lip by ``thin`` of it."""
    d = np.zeros((NUM_MOVING, 2))
    gap = np.maximum(0.0, local[INNER_LOWER, 1] - local[INNER_UPPER, 1])
    d[INNER_UPPER, 1] += fraction * gap / 2.0
    d[INNER_LOWER, 1] -= fraction * gap / 2.0
    upper_thickness = np.maximum(0.0, local[INNER_UPPER, 1] - local[OUTER_UPPER, 1])
    lower_thickness = np.maximum(0.0, local[OUTER_LOWER, 1] - local[INNER_LOWER, 1])
    d[OUTER_UPPER, 1] += fraction * gap / 2.0 + thin * upper_thickness
    d[OUTER_LOWER, 1] -= fraction * gap / 2.0 + thin * lower_thickness
    return d


def lip_press(local: np.ndarray, amount: float) -> np.ndarray:
    """AU24: lips closed and pressed thin; ``amount`` in mouth units."""
    fraction = min(1.0, PRESS_GAIN * amount)
    return _close_lip_gap(local, fraction, PRESS_THIN * fraction)


def level_corners(local: np.ndarray) -> np.ndarray:
    """The lip corners (and their neighbours, half as far) back to the height of the lips' midline."""
    d = np.zeros((NUM_MOVING, 2))
    midline = float(local[[62, 66], 1].mean())
    for corner in CORNERS:
        d[corner, 1] += midline - local[corner, 1]
    for neighbour, corner in CORNER_NEIGHBOURS.items():
        d[neighbour, 1] += 0.5 * (midline - local[corner, 1])
    return d


def _mouth_action(local: np.ndarray, action: str, amount: float) -> np.ndarray:
    if action == "grin":
        return GRIN_PART * amount * GRIN_UNIT
    if action == "jaw_drop":
        return JAW_DROP * amount * JAW_UNIT
    if action == "upper_part":
        return UPPER_PART * amount * UPPER_PART_UNIT
    if action == "press":
        return lip_press(local, amount)
    return np.zeros((NUM_MOVING, 2))


def _shape(local: np.ndarray, name: str) -> np.ndarray:
    shaped = {
        "level_corners": level_corners,
        "close_lips": lambda p: _close_lip_gap(p, 1.0, 0.0),
        "brow_lowerer": brow_lowerer,
        "brow_knit": lambda p: brow_lowerer(p, drop=False),
        "upper_lid_raiser": lid_widening,
    }
    return shaped[name](local) if name in shaped else SHAPES[name]


def displacements(local: np.ndarray, emotion: str, intensity: float) -> np.ndarray:
    """(NUM_MOVING, 2) face-frame displacements of the moving control points (``local``: their positions)."""
    preset = PRESETS[emotion]
    p = preset.params
    total = brow_motion(local, p.eyebrows)
    total = total + lid_narrowing(local, 1.0 - p.eyes)
    total = total + _mouth_action(local, preset.mouth_action, p.mouth)
    for name, weight in preset.shapes:
        total = total + weight * _shape(local, name)
    return intensity * p.scale * as_blocks(total)
