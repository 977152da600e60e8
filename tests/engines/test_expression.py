"""The expression engine, checked on its output: landmarks re-detected on each rendered portrait."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.errors import EngineError
from engines.expression import DEFAULT_ENGINE, EMOTIONS, encode_image, fit_max_side, load_expression_engine, presets
from engines.expression.landmark_warp import main_face
from engines.face import FaceBox, load_face_analyzer
from tests.media import ASTRONAUT_FACE_CENTER, astronaut_bgr, coffee_bgr, psnr

INTENSITY = 0.7
MIN_SHIFT_PX = 2.0  # dlib's landmarks are whole pixels: two of them is the smallest change we trust


def landmarks(image: np.ndarray) -> np.ndarray:
    faces = load_face_analyzer()
    return faces.landmarks(image, main_face(faces.detect(image))).astype(np.float64)


def features(lm: np.ndarray) -> dict[str, float]:
    """Expression measures in image pixels (the test portrait is upright: +y is down)."""
    return {
        "lip_corners_y": float(lm[[48, 54], 1].mean()),
        "upper_lip_y": float(lm[50:53, 1].mean()),
        "mouth_open": float(lm[66, 1] - lm[62, 1]),
        "brows_y": float(lm[17:27, 1].mean()),
        "inner_brows_y": float(lm[[21, 22], 1].mean()),
        "inner_brow_gap": float(lm[22, 0] - lm[21, 0]),
        "eye_opening": float((lm[[40, 41, 46, 47], 1].sum() - lm[[37, 38, 43, 44], 1].sum()) / 4.0),
    }


# (feature, direction): +1 the value must grow, -1 shrink (rising points have a smaller y).
EXPECTED = {
    "happy": [("lip_corners_y", -1)],
    "sad": [("lip_corners_y", +1), ("inner_brows_y", -1)],
    "surprised": [("brows_y", -1), ("mouth_open", +1)],
    "angry": [("inner_brows_y", +1), ("inner_brow_gap", -1)],
    "disgusted": [("upper_lip_y", -1)],
    "fearful": [("brows_y", -1), ("eye_opening", +1)],
}


# The CPU warp widens an eye by at most a fifth of its opening per unit of upper-lid raiser (a wider eye
# would be a stretched iris: a dark blot), about a pixel on this 512-px portrait: its fear shows in the
# raised brows and the dropped jaw instead.
WARP_EXPECTED = {**EXPECTED, "fearful": [("brows_y", -1), ("mouth_open", +1)]}


@pytest.fixture(scope="module")
def engine():
    return load_expression_engine(DEFAULT_ENGINE, load_face_analyzer())


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return astronaut_bgr()


@pytest.fixture(scope="module")
def analysis(engine, source):
    return engine.analyze(source)


@pytest.fixture(scope="module")
def source_features(source) -> dict[str, float]:
    return features(landmarks(source))


@pytest.fixture(scope="module")
def detector_noise(source, source_features) -> dict[str, float]:
    """How far each measure moves when the unchanged portrait is re-encoded or slightly blurred."""
    variants = [
        cv2.imdecode(cv2.imencode(".jpg", source, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR),
        cv2.imdecode(cv2.imencode(".jpg", source, [cv2.IMWRITE_JPEG_QUALITY, 75])[1], cv2.IMREAD_COLOR),
        cv2.GaussianBlur(source, (0, 0), 0.6),
    ]
    noise = dict.fromkeys(source_features, 0.0)
    for variant in variants:
        for name, value in features(landmarks(variant)).items():
            noise[name] = max(noise[name], abs(value - source_features[name]))
    return noise


@pytest.mark.parametrize("emotion", list(WARP_EXPECTED))
def test_expression_shows_on_the_redetected_landmarks(
    engine, analysis, source_features, detector_noise, emotion
) -> None:
    rendered = features(landmarks(engine.render(analysis, emotion, INTENSITY)))
    for name, direction in WARP_EXPECTED[emotion]:
        change = (rendered[name] - source_features[name]) * direction
        needed = max(MIN_SHIFT_PX, 2.0 * detector_noise[name])
        assert change >= needed, f"{emotion}: {name} moved {change:+.2f} px the expected way, needed {needed:.2f}"


def test_detector_noise_is_small(detector_noise) -> None:
    assert max(detector_noise.values()) <= 1.0, detector_noise


def test_neutral_closes_the_lips_and_levels_the_corners(engine, analysis) -> None:
    """The test portrait smiles with parted lips; neutral brings the corners and the lips together."""
    moved = engine.moved_points(analysis, "neutral", 1.0)
    before, after = analysis.points, moved

    def gap(p):
        return p[66, 1] - p[62, 1]

    def corner_lift(p):
        return p[[62, 66], 1].mean() - p[[48, 54], 1].mean()

    assert gap(before) > 3 and abs(gap(after)) < 0.5
    assert corner_lift(before) > 3 and abs(corner_lift(after)) < 0.5


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_intensity_zero_returns_the_source(engine, analysis, source, emotion) -> None:
    assert psnr(engine.render(analysis, emotion, 0.0), source) >= 45.0


@pytest.mark.parametrize("emotion", ["happy", "sad", "surprised", "fearful"])
def test_more_intensity_moves_landmarks_further(engine, analysis, source, emotion) -> None:
    base = landmarks(source)
    moved = [float(np.abs(landmarks(engine.render(analysis, emotion, t)) - base).mean()) for t in (0.3, 0.6, 0.9)]
    assert moved[0] < moved[1] < moved[2], moved


def test_preset_motion_is_linear_in_intensity(analysis) -> None:
    for emotion in EMOTIONS:
        full = presets.displacements(analysis.local, emotion, 1.0)
        assert np.abs(full).max() > 0.02, emotion
        np.testing.assert_allclose(presets.displacements(analysis.local, emotion, 0.4), 0.4 * full, atol=1e-12)
        assert not presets.displacements(analysis.local, emotion, 0.0).any()


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_background_and_hair_stay_untouched(engine, analysis, source, emotion) -> None:
    out = engine.render(analysis, emotion, 1.0)
    assert out.shape == source.shape and out.dtype == np.uint8
    x1, y1, x2, y2 = analysis.roi
    changed = np.any(out != source, axis=2)
    changed[y1:y2, x1:x2] = False
    assert not changed.any(), "pixels outside the face ROI changed"
    # The ROI itself stays around the face: 1.2 face-box sizes from the box are always untouched.
    box, margin = analysis.box, int(1.2 * max(analysis.box.x2 - analysis.box.x1, analysis.box.y2 - analysis.box.y1))
    far = np.ones(source.shape[:2], bool)
    far[max(0, box.y1 - margin) : box.y2 + margin, max(0, box.x1 - margin) : box.x2 + margin] = False
    assert far.sum() > 0.4 * far.size
    assert np.array_equal(out[far], source[far])
    assert np.any(out[y1:y2, x1:x2] != source[y1:y2, x1:x2])


def test_rotated_face_opens_its_mouth(engine) -> None:
    centre = ASTRONAUT_FACE_CENTER
    tilted = cv2.warpAffine(
        astronaut_bgr(), cv2.getRotationMatrix2D(centre, 15.0, 1.0), (512, 512), borderMode=cv2.BORDER_REFLECT
    )
    before = landmarks(tilted)
    after = landmarks(engine.render(engine.analyze(tilted), "surprised", INTENSITY))
    opening = [float(np.hypot(*(lm[66] - lm[62]))) for lm in (before, after)]
    assert opening[1] - opening[0] >= 3 * MIN_SHIFT_PX


def test_no_face(engine) -> None:
    with pytest.raises(EngineError) as err:
        engine.analyze(coffee_bgr())
    assert err.value.code == "no_face"
    assert err.value.message == "No face detected in image"


def test_render_arguments_are_checked(engine, analysis) -> None:
    with pytest.raises(EngineError) as err:
        engine.render(analysis, "bored", 0.5)
    assert err.value.code == "unknown_emotion"
    assert all(e in err.value.message for e in EMOTIONS)
    with pytest.raises(EngineError) as err:
        engine.render(analysis, "happy", 1.5)
    assert err.value.code == "invalid_intensity"


def test_main_face_ignores_faint_false_hits() -> None:
    face = FaceBox(100, 100, 190, 190, score=1.5)
    faint_but_larger = FaceBox(0, 300, 120, 420, score=0.01)
    small_second_face = FaceBox(300, 100, 360, 160, score=1.2)
    assert main_face([faint_but_larger, face, small_second_face]) == face


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_encoded_outputs_decode(fmt) -> None:
    image = astronaut_bgr(128)
    decoded = cv2.imdecode(np.frombuffer(encode_image(image, fmt), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape
    assert psnr(decoded, image) > (1e9 if fmt == "png" else 30.0)


def test_fit_max_side() -> None:
    image = np.zeros((600, 1000, 3), np.uint8)
    assert fit_max_side(image, 500).shape == (300, 500, 3)
    assert fit_max_side(image, 1000) is image
