"""The CPU expression engine on ordinary photos, frontal and three-quarter: bounded warps, recognisable emotions.

The three-quarter face is synthetic (``tests.media.three_quarter_astronaut``: the frontal photo turned 30
degrees on an ellipsoid head model), since no real three-quarter photo ships with our packages.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.expression import DEFAULT_ENGINE, EMOTIONS, load_expression_engine
from engines.face import FaceAnalyzer, load_face_analyzer
from tests.engines.expression_judge import Frame, below_chin, eye_structure_kept, find_landmarks, judge, measures
from tests.media import astronaut_bgr, three_quarter_astronaut

FACES = {"frontal": lambda: astronaut_bgr(768), "three_quarter": lambda: three_quarter_astronaut(768)}
INTENSITIES = (0.25, 0.5, 0.75, 1.0)
JUDGED_AT = (0.7, 1.0)  # the default intensity, and the strongest


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return load_face_analyzer()


@pytest.fixture(scope="module")
def engine(analyzer: FaceAnalyzer):
    return load_expression_engine(DEFAULT_ENGINE, analyzer)


@pytest.fixture(scope="module", params=list(FACES))
def face(request, engine, analyzer: FaceAnalyzer):
    """(name, source image, its analysis, its re-detected landmarks)."""
    image = FACES[request.param]()
    return request.param, image, engine.analyze(image), find_landmarks(analyzer, image)


def test_the_three_quarter_face_is_turned(analyzer: FaceAnalyzer) -> None:
    def nose_across_jaw(image: np.ndarray) -> float:
        lm = find_landmarks(analyzer, image)
        return float((lm[30, 0] - lm[0, 0]) / (lm[16, 0] - lm[0, 0]))

    assert abs(nose_across_jaw(FACES["frontal"]()) - 0.5) < 0.06
    assert nose_across_jaw(FACES["three_quarter"]()) > 0.65  # the nose well off the jaw's middle


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_no_smear_at_any_intensity(engine, face, emotion: str) -> None:
    """The eyes keep their dark and bright parts (no iris smeared to a blot), nothing below the chin moves."""
    name, image, analysis, source_lm = face
    first_row_below_chin = below_chin(source_lm)
    for intensity in INTENSITIES:
        out = engine.render(analysis, emotion, intensity)
        problems = eye_structure_kept(out, image, source_lm)
        assert not problems, f"{name} {emotion} at {intensity}: {problems}"
        below = np.abs(out[first_row_below_chin:].astype(int) - image[first_row_below_chin:])
        assert below.max() <= 2 and below.mean() <= 0.05, f"{name} {emotion} at {intensity}: the collar moved"


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_the_landmark_judge_recognises_each_emotion(engine, analyzer: FaceAnalyzer, face, emotion: str) -> None:
    name, image, analysis, source_lm = face
    for intensity in JUDGED_AT:
        neutral_lm = find_landmarks(analyzer, engine.render(analysis, "neutral", intensity))
        render_lm = find_landmarks(analyzer, engine.render(analysis, emotion, intensity))
        verdict = judge(emotion, render_lm, source_lm if emotion == "neutral" else neutral_lm)
        assert verdict.passed, f"{name} at {intensity}: {verdict.line()}"


def test_angry_is_not_a_smile_on_a_smiling_photo(engine, analyzer: FaceAnalyzer, face) -> None:
    """The test photo smiles; angry levels and lowers the corners below the photo's and the neutral's."""
    _, _, analysis, source_lm = face
    frame = Frame.of(source_lm)
    lift = {
        which: measures(find_landmarks(analyzer, engine.render(analysis, which, 0.7)), frame)["corner_lift"]
        for which in ("neutral", "angry", "happy")
    }
    smile = measures(source_lm, frame)["corner_lift"]
    assert lift["angry"] < lift["neutral"] < smile < lift["happy"], lift
