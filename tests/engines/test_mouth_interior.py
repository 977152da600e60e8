"""The CPU lip-sync's mouth interior: the avatar's own open mouth when it has one, else shaded with teeth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.face import FaceAnalyzer, load_face_analyzer
from engines.lipsync import AvatarFrames
from engines.lipsync.mouth import most_open_frame, opening_ratio
from engines.lipsync.viseme_warp import VisemeWarpEngine
from engines.lipsync.warp import prepare_mouth_warp, render_mouth, shape_bases
from tests.media import astronaut_bgr, close_lips

WIDE_OPEN = np.array([1.0, 0.0, 0.0], np.float32)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return load_face_analyzer()


@pytest.fixture(scope="module")
def closed_portrait(analyzer: FaceAnalyzer) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut with her lips painted shut, and landmarks with the inner lips together."""
    image = np.ascontiguousarray(astronaut_bgr(768)[40:360, 176:496])
    landmarks = analyzer.landmarks(image, analyzer.detect(image)[0])
    closed = landmarks.copy()
    middle = (landmarks[[61, 62, 63]] + landmarks[[67, 66, 65]]) / 2.0
    closed[[61, 62, 63]], closed[[67, 66, 65]] = middle, middle
    return close_lips(image, landmarks), closed


def opened(landmarks: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """The landmarks after the warp's motion for ``shape``."""
    return landmarks + np.tensordot(shape, shape_bases(landmarks), axes=1)


def interior_mask(shape: tuple[int, ...], landmarks: np.ndarray, shrink: int = 2) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[60:68]).astype(np.int32)], 1)
    return cv2.erode(mask, np.ones((2 * shrink + 1, 2 * shrink + 1), np.uint8)).astype(bool)


def test_a_portrait_without_open_frames_gets_a_shaded_mouth_with_teeth(closed_portrait) -> None:
    image, landmarks = closed_portrait
    out = render_mouth(image, prepare_mouth_warp(image, landmarks), WIDE_OPEN)
    moved = opened(landmarks, WIDE_OPEN)
    inside = interior_mask(out.shape, moved)
    grey = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float64)
    rows = [grey[y][inside[y]].mean() for y in range(out.shape[0]) if inside[y].sum() >= 8]
    top, middle, bottom = np.mean(rows[:3]), min(rows), np.mean(rows[-3:])
    assert top >= 150 and top - middle >= 100, rows  # a bright upper row of teeth over a dark throat
    assert bottom - middle >= 20, rows  # lighter again toward the tongue: a vertical gradient, not a bar
    teeth_row = grey[int(moved[62, 1]) + 2][inside[int(moved[62, 1]) + 2]]
    assert teeth_row.max() - teeth_row.min() >= 25  # tooth boundaries and shading across, not flat


def test_an_avatar_with_an_open_mouth_frame_lends_its_teeth_and_tongue(analyzer: FaceAnalyzer, closed_portrait) -> None:
    image, landmarks = closed_portrait
    donor_lm = opened(landmarks, WIDE_OPEN).astype(np.float32)
    donor = render_mouth(image, prepare_mouth_warp(image, landmarks), WIDE_OPEN)
    inside = interior_mask(donor.shape, donor_lm, shrink=0)
    texture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, donor.shape, np.uint8), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 20, 235, cv2.NORM_MINMAX)
    donor[inside] = texture[inside]  # a recorded open mouth whose inside we can recognise
    avatar = AvatarFrames(
        frames=[image, donor], coords=[(0, 320, 0, 320)] * 2, landmarks=np.stack([landmarks, donor_lm])
    )
    assert opening_ratio(landmarks) < 0.05 and most_open_frame(avatar.landmarks) == 1

    out = VisemeWarpEngine(analyzer).render_frame(avatar, 0, WIDE_OPEN)
    check = interior_mask(out.shape, donor_lm, shrink=2)
    grey_out, grey_donor = (cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)[check].astype(float) for x in (out, donor))
    assert np.corrcoef(grey_out, grey_donor)[0, 1] >= 0.9  # the person's own inner mouth, in place

    shaded = render_mouth(image, prepare_mouth_warp(image, landmarks), WIDE_OPEN)
    grey_shaded = cv2.cvtColor(shaded, cv2.COLOR_BGR2GRAY)[check].astype(float)
    assert abs(np.corrcoef(grey_shaded, grey_donor)[0, 1]) < 0.3  # without the donor: nothing of it


def test_a_closed_avatar_has_no_donor(analyzer: FaceAnalyzer, closed_portrait) -> None:
    image, landmarks = closed_portrait
    avatar = AvatarFrames(frames=[image], coords=[(0, 320, 0, 320)], landmarks=landmarks[None])
    assert most_open_frame(avatar.landmarks) is None
    assert VisemeWarpEngine(analyzer).mouth_donor(avatar, "closed") is None
