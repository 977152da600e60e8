"""The lip-sync score (engines.quality) and the CPU engine's lip-sync quality as that score sees it.

The score finds the landmarks again on the output frames, so it is checked on real renders: the CPU
engine driven by eSpeak speech scores high, the same face with a still mouth or a mouth moving at random
scores low.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from engines.codecs.video_in import av_offset_ms
from engines.codecs.video_out import encode_mp4
from engines.face import FaceAnalyzer, load_face_analyzer
from engines.lipsync import AvatarFrames, DrivingAudio, pingpong_index
from engines.lipsync.viseme_warp import VisemeWarpEngine
from engines.lipsync.visemes import smooth_track
from engines.lipsync.wav2lip.engine import Wav2Lip96Engine
from engines.quality import (
    BUDGET,
    LipSyncMeter,
    QualityMeter,
    QualityReport,
    audio_energy,
    best_lag_correlation,
    mouth_opening,
    score_lip_sync,
)
from engines.quality.report import MIN_MEASURED, MIN_MOTION, SILENCE_MARGIN
from engines.tts import VoiceParams, load_synthesizer, resample
from tests.engines.wav2lip_fixtures import random_model, real_weights_like
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


# ---- the report of every result (QualityMeter): both sides of the score, cost, silence, A/V offset ----------------


def report(
    analyzer: FaceAnalyzer, avatar: AvatarFrames, frames: list[np.ndarray], speech: DrivingAudio, sampled: bool
) -> QualityReport:
    """``sampled``: as in production for an engine that costs nothing (only the evenly spread minimum measured)."""
    energy = audio_energy(speech.samples, len(frames))
    meter = QualityMeter(analyzer, avatar, BUDGET if sampled else None, expected_frames=len(frames))
    for i, frame in enumerate(frames):
        meter.add(frame, energy[i], pingpong_index(i, len(avatar)), 0.0 if sampled else None)
    return meter.report()


@pytest.fixture(scope="module")
def random_wav2lip(avatar: AvatarFrames, speech: DrivingAudio) -> list[np.ndarray]:
    return list(Wav2Lip96Engine(random_model("wav2lip96")).render(avatar, speech))


@pytest.mark.parametrize("sampled", [False, True], ids=["every frame", "sampled"])
def test_the_report_scores_speaking_mouths_high_and_garbage_or_still_ones_low(
    analyzer: FaceAnalyzer,
    avatar: AvatarFrames,
    speech: DrivingAudio,
    rendered: list[np.ndarray],
    random_wav2lip: list[np.ndarray],
    sampled: bool,
) -> None:
    still = [avatar.frames[pingpong_index(i, len(avatar))] for i in range(speech.num_frames)]
    high = {"viseme_warp": rendered, "real-weights-like": real_weights_like(avatar, rendered)}
    low = {"wav2lip96 random weights": random_wav2lip, "still mouth": still}
    for name, frames in high.items():
        scored = report(analyzer, avatar, frames, speech, sampled)
        assert scored.lip_sync >= 0.65 and abs(scored.lag_frames) <= 1, (name, scored)
        assert scored.frames_face_lost == 0 and scored.mouth_motion > 0.05, (name, scored)
    for name, frames in low.items():
        scored = report(analyzer, avatar, frames, speech, sampled)
        assert scored.lip_sync < 0.3, (name, scored)
    assert report(analyzer, avatar, still, speech, sampled).mouth_motion < MIN_MOTION  # never moved: scored 0
    if sampled:
        n = speech.num_frames  # the minimum, evenly spread
        assert scored.frames_measured == len(range(0, n, n // MIN_MEASURED)) >= MIN_MEASURED


def test_the_meter_keeps_to_its_budget_and_measures_every_frame_of_a_slow_engine(
    analyzer: FaceAnalyzer, avatar: AvatarFrames, speech: DrivingAudio, rendered: list[np.ndarray]
) -> None:
    energy = audio_energy(speech.samples, len(rendered))
    slow = QualityMeter(analyzer, avatar)  # no clip length given: the budget alone decides
    for i, frame in enumerate(rendered):
        slow.add(frame, energy[i], pingpong_index(i, len(avatar)), render_s=1.0)
    assert slow.report().frames_measured == len(rendered)
    fast = QualityMeter(analyzer, avatar)
    render_s = 0.0002  # an engine far faster than any we ship: the budget leaves most frames out
    for i, frame in enumerate(rendered):
        fast.add(frame, energy[i], pingpong_index(i, len(avatar)), render_s)
    measured = fast.report()
    assert 1 <= measured.frames_measured < len(rendered) / 2
    assert measured.cost_share <= BUDGET + 0.02  # over by the last measurement and the skipped frames' bookkeeping


def test_the_meter_measures_every_frame_of_the_cpu_engine_within_five_percent_of_its_render_time(
    analyzer: FaceAnalyzer, avatar: AvatarFrames, speech: DrivingAudio
) -> None:
    energy = audio_energy(speech.samples, speech.num_frames)
    meter = QualityMeter(analyzer, avatar, expected_frames=speech.num_frames)
    frames = VisemeWarpEngine(analyzer).render(avatar, speech)
    for i in range(speech.num_frames):
        started = time.perf_counter()
        frame = next(frames)
        meter.add(frame, energy[i], pingpong_index(i, len(avatar)), time.perf_counter() - started)
    scored = meter.report()
    assert scored.cost_share <= BUDGET, scored
    assert scored.frames_measured >= 0.9 * scored.frames, scored  # cheap enough to measure (nearly) every frame
    assert scored.lip_sync >= 0.65 and scored.frames_face_lost == 0, scored


def test_silence_held_still_and_a_lost_face_are_reported(
    analyzer: FaceAnalyzer, avatar: AvatarFrames, rendered: list[np.ndarray]
) -> None:
    n = len(rendered)
    energy = np.where(np.arange(n) < n // 2, 0.1, 0.0)  # speech, then silence
    frames = [
        avatar.frames[pingpong_index(i, len(avatar))] if i >= n // 2 + 10 else rendered[i] for i in range(n)
    ]  # the first 10 silent frames still move, then the avatar's own frames
    frames[5] = np.full_like(frames[5], 128)
    meter = QualityMeter(analyzer, avatar, budget=None)
    for i, frame in enumerate(frames):
        meter.add(frame, energy[i], pingpong_index(i, len(avatar)))
    scored = meter.report()
    deep = n - n // 2 - SILENCE_MARGIN  # the first SILENCE_MARGIN silent frames border on speech
    assert scored.silent_frames == deep and scored.frames_face_lost == 1
    assert scored.silent_held_still == pytest.approx((deep - (10 - SILENCE_MARGIN)) / deep)


def test_the_av_offset_of_a_muxed_file(tmp_path, rendered: list[np.ndarray], speech: DrivingAudio) -> None:
    encode_mp4(tmp_path / "out.mp4", rendered[:25], speech.samples[:16000])
    encode_mp4(tmp_path / "mute.mp4", rendered[:5])
    assert av_offset_ms(tmp_path / "out.mp4") == 0.0 and av_offset_ms(tmp_path / "mute.mp4") is None
