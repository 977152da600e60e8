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


def test_liveportrait_source_video_crops_follow_smoothed_landmarks(avatar: AvatarFrames, tmp_path) -> None:
    from engines.liveportrait.crop import crop_face
    from engines.liveportrait.pipeline import load_liveportrait
    from engines.liveportrait.random_weights import write_random_weights
    from engines.liveportrait.reenact import Reenactor

    lp = load_liveportrait(write_random_weights(tmp_path, seed=3), device="cpu")
    count = 12
    noisy = avatar.landmarks[:count] + np.random.default_rng(1).normal(0, 1.5, (count, 68, 2)).astype(np.float32)
    source = Reenactor(lp, input_size=128).video(avatar.frames, noisy, count)
    per_frame = [crop_face(avatar.frames[i], noisy[i]).to_crop for i in range(count)]  # each frame's own crop

    def shake(crops: list[np.ndarray]) -> float:  # the crop centre's frame-to-frame acceleration, pixels
        centres = np.array([np.linalg.inv(crop)[:2] @ (256.0, 256.0, 1.0) for crop in crops])
        return float(np.abs(np.diff(centres, 2, axis=0)).mean())

    assert shake(source.crops) < 0.5 * shake(per_frame)
