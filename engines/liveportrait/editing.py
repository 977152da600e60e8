"""Expression editing on LivePortrait's implicit keypoints: upstream's sliders, our emotion presets, mouth shapes.

Each slider adds fixed multiples to fixed (keypoint, axis) entries of the expression ``exp`` (21 x 3), as
upstream's Gradio image retargeting does (``src/gradio_pipeline.py``, ``update_delta_new_*``, 2024-08; the
slider ranges of its ``app.py`` are noted). Sad, angry, fearful and disgusted have no upstream preset: the
presets below combine the same sliders and are our own design (README, "LivePortrait expression presets").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from engines.liveportrait.model import NUM_KP

Entry = tuple[int, int, float]  # (keypoint, axis x/y/z, coefficient per slider unit)

LINEAR_SLIDERS: dict[str, tuple[Entry, ...]] = {
    # smile, -0.3..1.3
    "smile": (
        (20, 1, -0.01),
        (14, 1, -0.02),
        (17, 1, 0.0065),
        (17, 2, 0.003),
        (13, 1, -0.00275),
        (16, 1, -0.00275),
        (3, 1, -0.0035),
        (7, 1, -0.0035),
    ),
    # wink (closes the image-left eye), 0..39
    "wink": ((11, 1, 0.001), (13, 1, -0.0003), (17, 0, 0.0003), (17, 1, 0.0003), (3, 1, -0.0003)),
    "pouting": ((19, 0, 1.0),),  # lip_variation_zero, -0.09..0.09
    "pursing": ((14, 1, 0.001), (3, 1, -0.0005), (7, 1, -0.0005), (17, 2, -0.0005)),  # lip_variation_one, -20..15
    "grin": ((20, 2, -0.001), (20, 1, -0.001), (14, 1, -0.001)),  # lip_variation_two, 0..15
    "lip_open": ((19, 1, 0.001), (19, 2, 0.0001), (17, 1, -0.0001)),  # lip_variation_three, -90..120
    "mov_x": ((5, 0, -1.0),),  # the UI negates x movement, -0.19..0.19
    "mov_y": ((5, 1, 1.0),),
}
# sign-dependent sliders: (entries for a positive value, entries for a negative value)
EYEBROW: tuple[tuple[Entry, ...], tuple[Entry, ...]] = (  # -30..30, raised when positive
    ((1, 1, 0.001), (2, 1, -0.001)),
    ((1, 0, -0.001), (2, 0, 0.001), (1, 1, 0.0003), (2, 1, -0.0003)),
)
GAZE_X = (((11, 0, 0.0007), (15, 0, 0.001)), ((11, 0, 0.001), (15, 0, 0.0007)))  # -30..30
GAZE_Y: tuple[Entry, ...] = ((11, 1, -0.001), (15, 1, -0.001))  # -63..63, up when positive
BLINK: tuple[Entry, ...] = ((11, 1, -0.001), (13, 1, 0.0003), (15, 1, -0.001), (16, 1, 0.0003))  # from gaze_y
POSE = ("pitch", "yaw", "roll")  # degrees added to the source pose

# Emotion presets at intensity 1 (scaled linearly by intensity). happy and surprised follow upstream's smile,
# eyebrow and lip-open sliders; the other four are our own combinations of the same sliders.
EMOTION_PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"smile": 1.0, "grin": 3.0, "eyebrow": 4.0},
    "surprised": {"eyebrow": 25.0, "lip_open": 70.0, "gaze_y": 8.0, "pitch": -3.0},
    "sad": {"smile": -0.3, "eyebrow": -10.0, "pursing": -6.0, "gaze_y": -10.0, "pitch": 6.0},
    "angry": {"eyebrow": -28.0, "pursing": 8.0, "smile": -0.2, "pitch": 3.0},
    "fearful": {"eyebrow": 20.0, "grin": 6.0, "lip_open": 30.0, "gaze_y": 6.0, "pitch": 2.0},
    "disgusted": {"eyebrow": -14.0, "grin": 5.0, "smile": -0.25, "pouting": -0.04, "wink": 5.0, "yaw": -4.0},
}


def _add(delta: np.ndarray, entries: tuple[Entry, ...], value: float) -> None:
    for kp, axis, coefficient in entries:
        delta[kp, axis] += coefficient * value


def exp_delta(sliders: Mapping[str, float]) -> np.ndarray:
    """(21, 3) float32 expression delta of slider values (pose keys are ignored here)."""
    delta = np.zeros((NUM_KP, 3), np.float32)
    for name, value in sliders.items():
        if value == 0 or name in POSE:
            continue
        if name in LINEAR_SLIDERS:
            _add(delta, LINEAR_SLIDERS[name], value)
        elif name == "eyebrow":
            _add(delta, EYEBROW[0] if value > 0 else EYEBROW[1], value)
        elif name == "gaze_x":
            _add(delta, GAZE_X[0] if value > 0 else GAZE_X[1], value)
        elif name == "gaze_y":
            _add(delta, GAZE_Y, value)
            _add(delta, BLINK, -value / 2.0)  # upstream couples a half blink to vertical gaze
        else:
            raise ValueError(f"unknown expression slider {name!r}")
    return delta


def emotion_edit(emotion: str, intensity: float) -> tuple[np.ndarray, dict[str, float]]:
    """(exp delta, pose deltas in degrees) of an emotion preset at ``intensity`` in [0, 1]."""
    preset = {k: v * intensity for k, v in EMOTION_PRESETS[emotion].items()}
    return exp_delta(preset), {k: preset.get(k, 0.0) for k in POSE}


# Mouth shapes for speech (our visemes' open / spread / round in 0..1): lip opening through the lip
# retargeting ratio, plus the slider entries that shape the lips (grin spreads, pursing rounds).
LIP_RATIO_CLOSED = 0.0
LIP_RATIO_OPEN = 0.55  # inner-lip opening over mouth width of a wide-open "aa"
SPREAD_GRIN = 6.0
ROUND_PURSING = 12.0
ROUND_POUT = 0.03


def mouth_edit(open_: float, spread: float, round_: float) -> tuple[float, np.ndarray]:
    """(target lip-open ratio, exp delta) of one mouth shape."""
    ratio = LIP_RATIO_CLOSED + (LIP_RATIO_OPEN - LIP_RATIO_CLOSED) * open_
    delta = exp_delta({"grin": SPREAD_GRIN * spread, "pursing": ROUND_PURSING * round_, "pouting": ROUND_POUT * round_})
    return ratio, delta
