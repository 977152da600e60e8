"""The lip-sync score (engines.quality) and the CPU engine's lip-sync quality as that score sees it.

The score finds the landmarks again on the output frames, so it is checked on real renders: the CPU
engine driven by eSpeak speech scores high, the same face with a still mouth or a mouth moving at random
scores low.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.face import FaceAnalyzer, load_face_analyzer
from engines.lipsync import AvatarFrames, DrivingAudio, pingpong_index
from engines.lipsync.viseme_warp import VisemeWarpEngine
from engines.lipsync.visemes import smooth_track
from engines.quality import LipSyncMeter, audio_energy, best_lag_correlation, mouth_opening, score_lip_sync
from engines.tts import VoiceParams, load_synthesizer, resample
from tests.media import moving_astronaut_avatar, psnr

SENTENCE = "Peter Piper picked a peck of pickled peppers. Good morning, my friend!"
AVATAR_FRAMES = 40


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return load_face_analyzer()


@pytest.fixture(scope="module")
def avatar(analyzer: FaceAnalyzer) -> AvatarFrames:
    return moving_astronaut_avatar(analyzer, AVATAR_FRAMES)


@pytest.fixture(scope="module")
def speech() -> DrivingAudio:
    spoken = load_synthesizer("espeak").synthesize(SENTENCE, VoiceParams())
    return DrivingAudio(resample(spoken.samples, spoken.sample_rate, 16000), spoken.phonemes)


@pytest.fixture(scope="module")
def rendered(analyzer: FaceAnalyzer, avatar: AvatarFrames, speech: DrivingAudio) -> list[np.ndarray]:
    return list(VisemeWarpEngine(analyzer).render(avatar, speech))


# ---- the measure -------------------------------------------------------------------------------------


def test_mouth_opening_is_normalised_by_the_face_size(avatar: AvatarFrames) -> None:
    landmarks = avatar.landmarks[0].astype(np.float64)
    opened = landmarks.copy()
    opened[[65, 66, 67]] += (0.0, 12.0)
    assert mouth_opening(opened) > mouth_opening(landmarks) + 0.1
    for scale in (0.5, 2.0):  # the same face nearer or further from the camera
        assert mouth_opening(opened * scale) == pytest.approx(mouth_opening(opened), rel=1e-9)


def test_best_lag_finds_the_delay_and_a_still_mouth_scores_zero() -> None:
    rng = np.random.default_rng(0)
    energy = np.convolve(rng.random(120), np.ones(4) / 4, mode="same")
    late = np.roll(energy, 2)  # the mouth two frames after the sound
    late[:2] = np.nan  # unknown frames (no face) are left out
    correlation, lag, at_zero = best_lag_correlation(late, energy)
    assert lag == 2 and correlation > 0.99 and at_zero < 0.9
    assert best_lag_correlation(np.roll(energy, -1), energy)[1] == -1
    assert best_lag_correlation(np.full(120, 0.2), energy) == (0.0, 0, 0.0)


def test_audio_energy_is_the_rms_of_each_40_ms_window() -> None:
    samples = np.zeros(16000, np.float32)
    samples[640:1280] = 0.5  # frame 1
    energy = audio_energy(samples, 25)
    assert energy.shape == (25,) and energy[1] == pytest.approx(0.5) and energy[0] == energy[2] == 0.0


# ---- the CPU engine, scored --------------------------------------------------------------------------


def test_cpu_engine_follows_espeak_speech(
    analyzer: FaceAnalyzer, rendered: list[np.ndarray], speech: DrivingAudio
) -> None:
    score = score_lip_sync(rendered, speech.samples, analyzer)
    assert score.frames == len(rendered) == speech.num_frames and score.frames_without_face == 0
    assert score.correlation_at_zero >= 0.65, score  # lip/audio correlation at lag 0
    assert score.lag == 0
    reported = score.as_dict()  # what a result carries as quality.lip_sync
    assert reported["correlation"] == round(score.correlation, 4) and reported["frames_without_face"] == 0


def test_cpu_engine_leaves_the_upper_face_unchanged(avatar: AvatarFrames, rendered: list[np.ndarray]) -> None:
    for i, frame in enumerate(rendered):
        k = pingpong_index(i, len(avatar))
        nose_line = int(avatar.landmarks[k][27:31, 1].min())  # the top of the nose bridge
        assert psnr(frame[:nose_line], avatar.frames[k][:nose_line]) >= 40.0


def test_a_still_or_random_mouth_scores_low(analyzer: FaceAnalyzer, avatar: AvatarFrames, speech: DrivingAudio) -> None:
    n = speech.num_frames
    still = [avatar.frames[pingpong_index(i, len(avatar))] for i in range(n)]
    assert abs(score_lip_sync(still, speech.samples, analyzer).correlation) < 0.3
    engine = VisemeWarpEngine(analyzer)
    shapes = smooth_track(np.random.default_rng(1).random((n, 3)).astype(np.float32) * [1.0, 0.5, 0.5])
    garbage = (engine.render_frame(avatar, pingpong_index(i, len(avatar)), shapes[i]) for i in range(n))
    assert abs(score_lip_sync(garbage, speech.samples, analyzer).correlation) < 0.3


def test_every_second_frame_scores_like_every_frame(
    analyzer: FaceAnalyzer, rendered: list[np.ndarray], speech: DrivingAudio
) -> None:
    full = score_lip_sync(rendered, speech.samples, analyzer)
    meter = LipSyncMeter(analyzer, stride=2)
    openings = [meter.add(frame) for frame in rendered]
    half = meter.score(speech.samples)
    assert np.isnan(openings[1::2]).all() and np.isfinite(openings[::2]).all()
    assert half.frames == full.frames and abs(half.correlation - full.correlation) < 0.08


def test_frames_without_a_face_are_counted_and_left_out(
    analyzer: FaceAnalyzer, rendered: list[np.ndarray], speech: DrivingAudio
) -> None:
    frames = list(rendered)
    for i in (30, 31, 32):
        frames[i] = np.full_like(frames[i], 128)
    score = score_lip_sync(frames, speech.samples, analyzer)
    assert score.frames_without_face == 3 and score.correlation_at_zero >= 0.6


def test_a_render_that_loses_the_face_scores_zero(
    analyzer: FaceAnalyzer, rendered: list[np.ndarray], speech: DrivingAudio
) -> None:
    frames = [np.full_like(f, 128) if i % 3 else f for i, f in enumerate(rendered)]  # two thirds faceless
    score = score_lip_sync(frames, speech.samples, analyzer)
    assert score.frames_without_face > len(frames) / 2 and score.correlation == 0.0
