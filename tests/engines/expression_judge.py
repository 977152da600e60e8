"""A landmark judge of rendered emotions, and smear measures, for the expression tests and bench/quality.py.

The judge finds dlib's 68 landmarks again on a render and compares them with the neutral render of the
same portrait at the same intensity, in the neutral's face frame (origin between the eyes, x along the
eye line, unit = the neutral's inter-ocular distance, IOD), so it reads a turned face like a frontal one.
Each emotion has rules from its facial actions (``shared/reference/emotions.md``); a rule holds when
the measure moved at least ``STEP`` IOD the expected way (dlib's landmarks are whole pixels: 0.03 IOD is
about two pixels on a 768-px portrait).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.expression.landmark_warp import main_face
from engines.face import FaceAnalyzer

STEP = 0.03  # IOD
LOOKS = (1.0, 0.8, 0.65)  # scales the landmarks are found at (median)
RIGHT_EYE, LEFT_EYE = list(range(36, 42)), list(range(42, 48))
RIGHT_BROW, LEFT_BROW = list(range(17, 22)), list(range(22, 27))


@dataclass(frozen=True)
class Frame:
    origin: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    iod: float

    @classmethod
    def of(cls, lm: np.ndarray) -> Frame:
        right, left = lm[RIGHT_EYE].mean(axis=0), lm[LEFT_EYE].mean(axis=0)
        iod = float(np.hypot(*(left - right)))
        ex = (left - right) / iod
        return cls((left + right) / 2.0, ex, np.array([-ex[1], ex[0]]), iod)

    def local(self, lm: np.ndarray) -> np.ndarray:
        rel = lm - self.origin
        return np.stack([rel @ self.ex, rel @ self.ey], axis=-1) / self.iod


def find_landmarks(analyzer: FaceAnalyzer, image: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks, the per-point median over the image at three scales (LOOKS): dlib's cascade
    moves every point a little with any change anywhere on the face, and the median steadies it."""
    found = []
    for scale in LOOKS:
        seen = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes = analyzer.detect(seen) or analyzer.detect(seen, upsample=1)
        assert boxes, "no face found on the render"
        found.append(analyzer.landmarks(seen, main_face(boxes)).astype(np.float64) / scale)
    return np.median(found, axis=0)


def measures(lm: np.ndarray, frame: Frame) -> dict[str, float]:
    """Expression measures in IOD (+y towards the chin), in the reference's face frame."""
    p = frame.local(lm)
    eyes_y = p[[36, 39, 42, 45], 1].mean()  # the eye corners: lids opening or closing do not move them

    def raised(points: list[int]) -> float:
        return float(eyes_y - p[points, 1].mean())

    lip_middle = p[[62, 66], 1].mean()
    out = {
        "brow_height": raised(RIGHT_BROW + LEFT_BROW),
        "inner_brow_height": raised([20, 21, 22, 23]),
        "outer_brow_height": raised([17, 18, 25, 26]),
        "brow_slant": raised([20, 21, 22, 23]) - raised([17, 18, 25, 26]),  # > 0: inner ends higher (sad, fear)
        "inner_brow_gap": float(p[22, 0] - p[21, 0]),
        "eye_opening": float((p[[41, 40, 47, 46], 1] - p[[37, 38, 43, 44], 1]).mean()),
        "mouth_width": float(p[54, 0] - p[48, 0]),
        "corner_lift": float(lip_middle - p[[48, 54], 1].mean()),  # > 0: corners above the lips' middle
        "mouth_open": float(p[[65, 66, 67], 1].mean() - p[[61, 62, 63], 1].mean()),
        "lip_thickness": float(
            (p[[61, 62, 63], 1] - p[[50, 51, 52], 1]).mean() + (p[[56, 57, 58], 1] - p[[65, 66, 67], 1]).mean()
        ),
        "nose_to_lip": float(p[[50, 51, 52], 1].mean() - p[33, 1]),
        "upper_lip_height": raised([50, 51, 52]),  # the upper lip's top below the eye line (negative)
    }
    return out | {
        # composites: two actions of the same muscles, so one weak reading does not hide the other
        "brows_knit_up": out["brow_slant"] - out["inner_brow_gap"],  # inner ends raised and drawn together
        "brows_knit_down": -out["brow_height"] - out["inner_brow_gap"],  # lowered and drawn together
    }


# emotion -> rules (measure, direction, steps): the change from the neutral render, times direction, must
# reach steps * STEP (a negative steps allows that much movement the other way: "must not grow/shrink").
RULES: dict[str, list[tuple[str, int, float]]] = {
    "happy": [("corner_lift", +1, 1.0)],
    "sad": [("corner_lift", -1, 1.0), ("brow_slant", +1, 1.0)],
    # dlib follows the inner brows of a turned face better than the outer ones (they reach the hair)
    "surprised": [("inner_brow_height", +1, 2.0), ("mouth_open", +1, 2.0), ("eye_opening", +1, -0.5)],
    "angry": [
        ("brows_knit_down", +1, 2.0),  # brows down and together ...
        ("brow_height", -1, 0.5),  # ... down for sure
        ("lip_thickness", -1, -0.5),  # lips pressed: no fuller than neutral's (dlib sees thin lips poorly) ...
        ("mouth_open", -1, -0.5),  # ... and not parted
        ("corner_lift", -1, -0.5),  # not a smile: corners no higher than neutral's
    ],
    "disgusted": [("upper_lip_height", +1, 1.0), ("brow_height", -1, 0.0)],
    # brows raised at their inner ends and drawn together, eyes not narrowed, lips apart
    "fearful": [("brows_knit_up", +1, 2.0), ("eye_opening", +1, -0.5), ("mouth_open", +1, 1.0)],
}
# Neutral is judged against the source photo: lips together, corners level (the test photo smiles).
NEUTRAL_RULES = [("mouth_open", -1, -0.5), ("corner_lift", -1, 1.0)]


@dataclass
class Verdict:
    emotion: str
    passed: bool
    changes: dict[str, float]  # measure -> change in IOD
    failed: list[str]

    def line(self) -> str:
        shown = ", ".join(f"{k} {v:+.3f}" for k, v in self.changes.items())
        return f"{self.emotion}: {'recognised' if self.passed else 'NOT recognised'} ({shown})" + (
            f"; failed {self.failed}" if self.failed else ""
        )


def judge(emotion: str, render_lm: np.ndarray, reference_lm: np.ndarray) -> Verdict:
    """Whether a render's landmarks show ``emotion`` against the reference (neutral render, or source for neutral)."""
    frame = Frame.of(reference_lm)
    before, after = measures(reference_lm, frame), measures(render_lm, frame)
    rules = NEUTRAL_RULES if emotion == "neutral" else RULES[emotion]
    changes, failed = {}, []
    for name, direction, steps in rules:
        change = (after[name] - before[name]) * direction
        changes[name] = after[name] - before[name]
        if change < steps * STEP:
            failed.append(f"{name} {'+' if direction > 0 else '-'}{steps * STEP:.3f}")
    return Verdict(emotion, not failed, changes, failed)


# ---- smear -----------------------------------------------------------------------------------------------

DARK = 60  # grey level: iris, pupil, lashes
BRIGHT_DROP = 25  # grey levels the eye box's bright decile may lose
EYE_MARGIN_X, EYE_ABOVE, EYE_BELOW = 0.2, 0.18, 0.2  # IOD around each eye's landmarks (lids, lashes; not the brows)


def eye_boxes(lm: np.ndarray) -> list[tuple[int, int, int, int]]:
    """x1, y1, x2, y2 around each eye, with room for the eye to move (upright faces)."""
    iod = Frame.of(lm).iod
    boxes = []
    for eye in (RIGHT_EYE, LEFT_EYE):
        (x1, y1), (x2, y2) = lm[eye].min(axis=0), lm[eye].max(axis=0)
        boxes.append(
            (
                int(x1 - EYE_MARGIN_X * iod),
                int(y1 - EYE_ABOVE * iod),
                int(np.ceil(x2 + EYE_MARGIN_X * iod)),
                int(np.ceil(y2 + EYE_BELOW * iod)),
            )
        )
    return boxes


def eye_structure(image: np.ndarray, lm: np.ndarray) -> list[tuple[int, float]]:
    """Per eye box (dark pixels: iris, pupil, lashes; the 90th-percentile grey level: whites and skin)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    out = []
    for x1, y1, x2, y2 in eye_boxes(lm):
        patch = grey[y1:y2, x1:x2]
        out.append((int((patch < DARK).sum()), float(np.percentile(patch, 90))))
    return out


def eye_structure_kept(render: np.ndarray, source: np.ndarray, source_lm: np.ndarray) -> list[str]:
    """Problems with the render's eyes compared with the source's: the dark parts grown (an iris stretched into
    a blot), the bright parts gone dark."""
    problems = []
    pairs = zip(eye_structure(source, source_lm), eye_structure(render, source_lm), strict=True)
    for side, ((dark0, bright0), (dark1, bright1)) in enumerate(pairs):
        if dark1 > 1.5 * dark0 + 4:
            problems.append(f"eye {side}: dark pixels {dark0} -> {dark1}")
        if bright1 < bright0 - BRIGHT_DROP:
            problems.append(f"eye {side}: bright level {bright0:.0f} -> {bright1:.0f}")
    return problems


def below_chin(lm: np.ndarray, margin_iod: float = 0.3) -> int:
    """First image row counted as below the chin: the chin landmark plus a margin."""
    return int(np.ceil(lm[8, 1] + margin_iod * Frame.of(lm).iod))
