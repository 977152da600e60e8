"""No added jitter: the upper face (brows, nose, eyes) of a render moves no more from frame to frame than in the
avatar frames it was made from (the tests' moving astronaut: real head motion), landmarks found again on both;
and MuseTalk's face boxes are smoothed over time like the avatar's coords."""

from __future__ import annotations

import numpy as np
import pytest

from engines.face import FaceAnalyzer, load_face_analyzer
from engines.lipsync import AvatarFrames, DrivingAudio, pingpong_index
from engines.lipsync.musetalk.avatar import landmark_box, landmark_boxes
from engines.lipsync.viseme_warp import VisemeWarpEngine
from engines.quality.jitter import upper_face_motion
from engines.tts import VoiceParams, load_synthesizer, resample
from tests.engines.wav2lip_fixtures import real_weights_like
from tests.media import moving_astronaut_avatar

SENTENCE = "Peter Piper picked a peck of pickled peppers. Good morning, my friend!"
TOLERANCE = 1.05  # landmark fits on a moving mouth: a few per cent, not a visible shake


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return load_face_analyzer()


@pytest.fixture(scope="module")
def avatar(analyzer: FaceAnalyzer) -> AvatarFrames:
    return moving_astronaut_avatar(analyzer, 40)


@pytest.fixture(scope="module")
def speech() -> DrivingAudio:
    spoken = load_synthesizer("espeak").synthesize(SENTENCE, VoiceParams())
    return DrivingAudio(resample(spoken.samples, spoken.sample_rate, 16000), spoken.phonemes)


def test_renders_move_the_upper_face_no_more_than_the_avatar(
    analyzer: FaceAnalyzer, avatar: AvatarFrames, speech: DrivingAudio
) -> None:
    own = [avatar.frames[pingpong_index(i, len(avatar))] for i in range(speech.num_frames)]
    baseline = upper_face_motion(own, analyzer)
    rendered = list(VisemeWarpEngine(analyzer).render(avatar, speech))
    for name, frames in (("viseme_warp", rendered), ("wav2lip paste-back", real_weights_like(avatar, rendered))):
        motion = upper_face_motion(frames, analyzer)
        assert len(motion) == len(baseline), name
        assert motion.mean() <= TOLERANCE * baseline.mean(), (name, motion.mean(), baseline.mean())
        assert np.percentile(motion, 95) <= TOLERANCE * np.percentile(baseline, 95), name


def test_musetalk_boxes_are_smoothed_over_time(avatar: AvatarFrames) -> None:
    height, width = avatar.frames[0].shape[:2]
    rng = np.random.default_rng(0)
    noisy = avatar.landmarks + rng.normal(0.0, 1.5, avatar.landmarks.shape).astype(np.float32)
    raw = np.array([landmark_box(points, height, width) for points in noisy], np.float64)
    smoothed = np.array(landmark_boxes(noisy, height, width), np.float64)
    assert np.abs(np.diff(smoothed, axis=0)).mean() < 0.6 * np.abs(np.diff(raw, axis=0)).mean()
    assert np.abs(smoothed - raw).mean() < 3.0  # the same boxes, steadier
