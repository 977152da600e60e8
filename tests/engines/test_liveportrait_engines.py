"""LivePortrait as engines: crop geometry, paste-back, expression presets, emotion stills and talking frames.

With random weights (official layout, written once per module) the rendered pixels mean nothing, so these
tests check the plumbing: geometry, which pixels change, that edits reach the keypoints, determinism, that
seven emotions analyse the portrait once. The networks run at a 128-px input to keep the CPU cost low (same
modules and code paths as 256 px). Landmark re-detection on the renders needs the real weights: skipped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.constants import EMOTIONS
from engines.context import EngineContext
from engines.face import find_face, load_face_analyzer
from engines.lipsync import DrivingAudio
from engines.lipsync.portrait_avatar import build_portrait_avatar
from engines.liveportrait import load_liveportrait
from engines.liveportrait.animate import FrameEdits
from engines.liveportrait.crop import CROP_SIZE, crop_face, crop_transform, eye_ratios, lip_ratio, paste_back
from engines.liveportrait.editing import EMOTION_PRESETS, LINEAR_SLIDERS, emotion_edit, exp_delta, mouth_edit
from engines.liveportrait.expression import LivePortraitExpressionEngine
from engines.liveportrait.random_weights import write_random_weights
from engines.liveportrait.talking import LivePortraitLipSync, idle_pose
from handlers.engine_choice import device
from tests.engines.test_expression import EXPECTED, INTENSITY, MIN_SHIFT_PX, features, landmarks
from tests.media import astronaut_bgr, tone

SMALL_INPUT = 128


@pytest.fixture(scope="module")
def portrait() -> tuple[np.ndarray, np.ndarray]:
    image = astronaut_bgr()
    return image, find_face(image, load_face_analyzer()).landmarks


@pytest.fixture(scope="module")
def expression_engine(tmp_path_factory: pytest.TempPathFactory) -> LivePortraitExpressionEngine:
    root = write_random_weights(tmp_path_factory.mktemp("lp-weights"), seed=2)
    lp = load_liveportrait(root, device="cpu")
    return LivePortraitExpressionEngine(lp, load_face_analyzer(), input_size=SMALL_INPUT)


def _rotated(image: np.ndarray, landmarks: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT), landmarks @ m[:, :2].T + m[:, 2]


def _eye_line_degrees(points: np.ndarray) -> float:
    left, right = points[[36, 39]].mean(0), points[[42, 45]].mean(0)
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


# ---- crop geometry and paste-back -----------------------------------------------------------------


def test_crop_is_rotation_aligned_and_scale_invariant(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = portrait
    upright = crop_face(image, landmarks)
    tilted = crop_face(*_rotated(image, landmarks, 20.0))
    assert upright.image.shape == tilted.image.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert abs(_eye_line_degrees(tilted.landmarks) - _eye_line_degrees(upright.landmarks)) < 1.0
    assert np.abs(tilted.landmarks - upright.landmarks).max() < 2.0  # the same face, wherever it was
    # scale 2.3 of the landmarks' extent: the face spans about 1/2.3 of the crop; vy < 0 puts it below centre
    extent = upright.landmarks.max(0) - upright.landmarks.min(0)
    assert 0.38 < extent.max() / CROP_SIZE < 0.48
    assert upright.landmarks[:, 1].mean() > CROP_SIZE / 2


def test_paste_back_only_touches_the_crop(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = portrait
    crop = crop_face(image, landmarks)
    pasted = paste_back(image, crop.image, crop.to_crop)
    assert np.abs(pasted.astype(int) - image.astype(int)).mean() < 1.0  # its own crop goes back in place
    grey = paste_back(image, np.full_like(crop.image, 128), crop.to_crop)
    outside = (
        cv2.warpAffine(np.ones((CROP_SIZE, CROP_SIZE), np.uint8), np.linalg.inv(crop.to_crop)[:2], image.shape[1::-1])
        == 0
    )
    assert np.array_equal(grey[outside], image[outside])
    centre = crop.landmarks.mean(0) @ np.linalg.inv(crop.to_crop)[:2, :2].T + np.linalg.inv(crop.to_crop)[:2, 2]
    x, y = int(centre[0]), int(centre[1])
    # the flat render is pasted at the centre, its colour matched to the frame around the crop (engines.face.paste)
    assert (grey[y, x] == grey[y + 5, x + 5]).all() and not (grey[y, x] == image[y, x]).all()


def test_small_render_pastes_back_at_the_crop_place(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = portrait
    crop = crop_face(image, landmarks)
    half = cv2.resize(crop.image, (CROP_SIZE // 2, CROP_SIZE // 2), interpolation=cv2.INTER_AREA)
    assert np.abs(paste_back(image, half, crop.to_crop).astype(int) - image.astype(int)).mean() < 2.0


def test_eye_and_lip_ratios_follow_the_landmarks(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    _, landmarks = portrait
    opened = landmarks.copy()
    opened[[57, 58, 56, 65, 66, 67]] += [0.0, 10.0]  # lower lip down
    assert lip_ratio(opened) > lip_ratio(landmarks) + 0.1
    closed = landmarks.copy()
    closed[[37, 38, 43, 44]] = closed[[41, 40, 47, 46]]  # upper lids onto the lower lids
    assert eye_ratios(closed).max() < 0.02 < eye_ratios(landmarks).min()
    assert crop_transform(landmarks).shape == (3, 3)


# ---- expression editing ------------------------------------------------------------------------


def test_sliders_add_upstreams_entries() -> None:
    delta = exp_delta({"smile": 1.0})
    assert delta[14, 1] == pytest.approx(-0.02) and delta[17, 2] == pytest.approx(0.003)
    assert np.count_nonzero(delta) == len(LINEAR_SLIDERS["smile"])
    assert exp_delta({"eyebrow": 10.0})[1, 1] == pytest.approx(0.01)
    assert exp_delta({"eyebrow": -10.0})[1, 0] == pytest.approx(0.01)  # lowered: the other branch
    with pytest.raises(ValueError):
        exp_delta({"frown": 1.0})


def test_presets_cover_the_seven_emotions_and_scale_with_intensity() -> None:
    assert set(EMOTION_PRESETS) == set(EMOTIONS)
    for emotion in EMOTIONS:
        full, pose = emotion_edit(emotion, 1.0)
        half, half_pose = emotion_edit(emotion, 0.5)
        assert np.allclose(half, full / 2, atol=1e-7)
        assert all(half_pose[k] == pytest.approx(pose[k] / 2) for k in pose)
        assert (np.abs(full).sum() > 0) == (emotion != "neutral")
    ratios = [mouth_edit(o, 0.0, 0.0)[0] for o in (0.0, 0.5, 1.0)]
    assert ratios == sorted(ratios) and ratios[0] < ratios[-1]


# ---- emotion stills --------------------------------------------------------------------------------


def test_seven_emotions_analyse_once_and_change_only_the_face(
    expression_engine: LivePortraitExpressionEngine, portrait: tuple[np.ndarray, np.ndarray], monkeypatch
) -> None:
    image, _ = portrait
    lp = expression_engine.animator.lp
    calls = {"appearance": 0, "motion": 0}
    for name in calls:
        original = getattr(lp, name)
        monkeypatch.setattr(lp, name, lambda x, _f=original, _n=name: calls.__setitem__(_n, calls[_n] + 1) or _f(x))
    analysis = expression_engine.analyze(image)
    renders = {e: expression_engine.render(analysis, e, 0.8) for e in EMOTIONS}
    assert calls == {"appearance": 1, "motion": 1}
    assert np.array_equal(renders["neutral"], image)
    crop = analysis.source.crop
    footprint = cv2.warpAffine(
        np.ones((CROP_SIZE, CROP_SIZE), np.uint8), np.linalg.inv(crop.to_crop)[:2], image.shape[1::-1]
    )
    for emotion, out in renders.items():
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out[footprint == 0], image[footprint == 0]), emotion
    assert not np.array_equal(renders["happy"], renders["sad"])
    assert np.array_equal(expression_engine.render(analysis, "happy", 0.8), renders["happy"])  # deterministic


def test_the_edit_reaches_the_driving_keypoints(
    expression_engine: LivePortraitExpressionEngine, portrait: tuple[np.ndarray, np.ndarray]
) -> None:
    animator = expression_engine.animator
    src = animator.prepare(*portrait)
    delta, _ = emotion_edit("happy", 1.0)
    plain = animator.lp.keypoints(src.info)
    edited = animator.lp.keypoints(src.info | {"exp": src.info["exp"] + torch.from_numpy(delta)})
    moved = (edited - plain).abs().sum(-1)[0]
    assert set(torch.nonzero(moved > 0).flatten().tolist()) == set(np.flatnonzero(np.abs(delta).sum(1)))
    kp = animator.drive(src, FrameEdits(exp=np.stack([delta * 0, delta]), pose=np.zeros((2, 3), np.float32)))
    assert kp.shape == (2, 21, 3) and not torch.allclose(kp[0], kp[1])


REAL_WEIGHTS = os.environ.get("LIVEPORTRAIT_TEST_DIR")  # a copy of the official weights, when available


@pytest.fixture(scope="module")
def real_engine() -> LivePortraitExpressionEngine:
    if not REAL_WEIGHTS:
        pytest.skip("set LIVEPORTRAIT_TEST_DIR to the official weights: random weights render noise")
    return LivePortraitExpressionEngine.load(Path(REAL_WEIGHTS), EngineContext(device(), faces=load_face_analyzer()))


@pytest.mark.parametrize("emotion", list(EXPECTED))
def test_emotions_show_on_redetected_landmarks_with_real_weights(
    real_engine: LivePortraitExpressionEngine, emotion: str
) -> None:
    """The CPU engine's check on this engine's renders: re-detected landmarks move the expected way."""
    source = astronaut_bgr()
    rendered = features(landmarks(real_engine.render(real_engine.analyze(source), emotion, INTENSITY)))
    before = features(landmarks(source))
    for name, direction in EXPECTED[emotion]:
        change = (rendered[name] - before[name]) * direction
        assert change >= MIN_SHIFT_PX, f"{emotion}: {name} moved {change:+.2f} px the expected way"


# ---- talking frames ------------------------------------------------------------------------------


def test_talking_frames_follow_speech_blinks_and_idle_motion(
    expression_engine: LivePortraitExpressionEngine, portrait: tuple[np.ndarray, np.ndarray]
) -> None:
    image, _ = portrait
    engine = LivePortraitLipSync(expression_engine.animator.lp, input_size=SMALL_INPUT, batch_frames=3)
    avatar = build_portrait_avatar(image, load_face_analyzer(), seconds=0.2)
    audio = DrivingAudio(tone(0.2).astype(np.float32))
    frames = list(engine.render(avatar, audio))
    assert len(frames) == audio.num_frames == 5
    assert all(f.shape == image.shape and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[-1])
    pose = idle_pose(50)
    assert np.allclose(pose[0], 0.0) and np.abs(pose).max() <= 2.0 and np.abs(pose).max() > 0.5
