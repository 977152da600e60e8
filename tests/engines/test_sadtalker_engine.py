"""SadTalker preprocessing (upstream's crop and 224-px alignment from our landmarks), paste-back, the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.context import EngineContext
from engines.face import load_face_analyzer
from engines.lipsync import AvatarFrames, DrivingAudio
from engines.sadtalker.engine import SadTalkerLipSync
from engines.sadtalker.preprocess import (
    REFERENCE_5P,
    PasteBack,
    align_224,
    coeffs_73,
    crop_landmarks,
    cut_square,
    face_box,
    five_points,
)
from tests.media import astronaut_bgr, tone


@pytest.fixture(scope="module")
def portrait() -> tuple[np.ndarray, np.ndarray]:
    image = astronaut_bgr(384)
    analyzer = load_face_analyzer()
    box = max(analyzer.detect(image), key=lambda b: b.area)
    return image, analyzer.landmarks(image, box)


def test_face_box_is_upstreams_eye_mouth_square(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, lm = portrait
    boxes = face_box(lm, image.shape[1], image.shape[0])
    x1, y1, x2, y2 = boxes.box
    assert boxes.box == boxes.quad_box
    eye_to_eye = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    eye_to_mouth = np.linalg.norm((lm[48] + lm[54]) / 2 - (lm[36:48].mean(0)))
    side = 2 * max(2.0 * eye_to_eye, 1.8 * eye_to_mouth)  # before the axis-aligned bounds of the tilted quad
    assert side * 0.98 <= x2 - x1 <= side * 1.45 and abs((x2 - x1) - (y2 - y1)) <= 2
    assert (lm[:, 0] > x1).all() and (lm[36:68, 1] > y1).all() and (lm[:, 0] < x2).all()
    ext = face_box(lm, image.shape[1], image.shape[0], "extcrop").box
    assert ext == boxes.bordered and ext[0] <= x1 and ext[2] >= x2 and ext[3] - ext[1] > y2 - y1
    near_edge = face_box(lm - [x1 + 20, 0], image.shape[1], image.shape[0], "extfull").box
    assert near_edge[0] == 0  # clipped to the image


def test_alignment_puts_the_five_points_on_the_mean_face(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, lm = portrait
    box = face_box(lm, image.shape[1], image.shape[0]).box
    square = cut_square(image[..., ::-1], box, 256)
    landmarks = crop_landmarks(lm, box, 256)
    aligned, params = align_224(np.ascontiguousarray(square), landmarks)
    assert aligned.shape == (224, 224, 3) and aligned.dtype == np.uint8
    w0, h0, s, tx, ty = params
    assert (w0, h0) == (256, 256) and s > 0
    # upstream's landmark transform: y flipped, shifted by t, scaled by s, cut at the 224 window
    flipped = landmarks.copy()
    flipped[:, 1] = h0 - 1 - flipped[:, 1]
    w, h = int(w0 * s), int(h0 * s)
    mapped = (five_points(flipped) - [tx, ty] + [w0 / 2, h0 / 2]) * s - [w / 2 - 112, h / 2 - 112]
    target = REFERENCE_5P[:, :2] * 102 + 112
    assert np.abs(mapped - target).max() < 12  # a weak-perspective fit of 5 points: a few pixels off
    coeffs = coeffs_73(np.arange(257, dtype=np.float32)[None], params)
    assert coeffs.shape == (1, 73) and coeffs[0, 0] == 80 and coeffs[0, 64] == 224 and coeffs[0, 67] == 254
    assert np.allclose(coeffs[0, 70:], params[2:])


def test_paste_back_blends_inside_the_box_and_matches_colour(portrait: tuple[np.ndarray, np.ndarray]) -> None:
    image, lm = portrait
    box = face_box(lm, image.shape[1], image.shape[0]).box
    x1, y1, x2, y2 = box
    paste = PasteBack(image, box)
    square = cut_square(image, box, 256)
    same = paste(square)
    outside = np.ones(image.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(same[outside], image[outside])
    assert np.abs(same.astype(int) - image.astype(int)).mean() < 2  # its own crop pasted back: nearly unchanged
    tinted = paste(np.clip(square.astype(int) + 40, 0, 255).astype(np.uint8))
    inner = (slice(y1 + (y2 - y1) // 3, y2 - (y2 - y1) // 3), slice(x1 + (x2 - x1) // 3, x2 - (x2 - x1) // 3))
    assert np.abs(tinted[inner].astype(int) - same[inner].astype(int)).mean() < 6  # the tint is matched away
    assert np.array_equal(tinted[outside], image[outside])
    assert np.abs(tinted[y1, x1:x2].astype(int) - image[y1, x1:x2].astype(int)).max() <= 1  # feathered edge


def test_engine_renders_one_frame_per_audio_frame(
    sadtalker_root: Path, portrait: tuple[np.ndarray, np.ndarray]
) -> None:
    image, lm = portrait
    engine = SadTalkerLipSync.load(sadtalker_root, EngineContext("cpu", "auto", {"render_size": 128}))
    assert engine.info["size"] == 128 and engine.info["preprocess"] == "crop"
    avatar = AvatarFrames(frames=[image], coords=[(0, 384, 0, 384)], landmarks=lm[None].astype(np.float32))
    audio = DrivingAudio(tone(0.17))  # 2720 samples: 5 frames (ceil), padded with silence
    frames = list(engine.render(avatar, audio))
    assert len(frames) == audio.num_frames == 5 and all(f.shape == image.shape for f in frames)
    x1, y1, x2, y2 = face_box(lm, 384, 384).box
    assert np.array_equal(frames[0][: y1 - 1], image[: y1 - 1])  # above the face box: the portrait
    assert np.abs(frames[0][y1:y2, x1:x2].astype(int) - image[y1:y2, x1:x2].astype(int)).mean() > 1
    again = list(engine.render(avatar, audio))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))  # seeded blinks and pose
    with pytest.raises(Exception, match="landmarks"):
        list(engine.render(AvatarFrames(frames=[image], coords=[(0, 1, 0, 1)]), audio))
