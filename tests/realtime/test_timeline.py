"""SpeechTimeline and live lip-sync: one schedule for mouth and sound, clean interruptions, 80 ms live chunks."""

from __future__ import annotations

import numpy as np

from realtime.timeline import (
    CHUNK_SAMPLES,
    CLOSED,
    SAMPLES_PER_FRAME,
    LiveLipSync,
    SpeechTimeline,
    speech_block,
)
from tests.media import tone


def block_of(start: int, frames: int, value: float) -> tuple[np.ndarray, np.ndarray]:
    return np.full(frames * SAMPLES_PER_FRAME, value, np.float32), np.full((frames, 3), value, np.float32)


def test_mouth_and_sound_come_from_one_schedule() -> None:
    timeline = SpeechTimeline()
    timeline.interrupt_with(speech_block(10, *block_of(10, 5, 0.5)))
    assert np.array_equal(timeline.shape(9), CLOSED) and timeline.shape(10)[0] == 0.5
    assert np.array_equal(timeline.shape(15), CLOSED)
    audio = timeline.audio(9 * SAMPLES_PER_FRAME, 7 * SAMPLES_PER_FRAME)
    assert not audio[:SAMPLES_PER_FRAME].any() and (audio[SAMPLES_PER_FRAME : 6 * SAMPLES_PER_FRAME] == 0.5).all()
    assert not audio[6 * SAMPLES_PER_FRAME :].any()
    timeline.forget_before(16)
    assert timeline.speaking_until() == 0


def test_an_interruption_cuts_at_its_frame_with_a_short_fade() -> None:
    timeline = SpeechTimeline()
    timeline.interrupt_with(speech_block(0, *block_of(0, 50, 0.5)))
    timeline.append(*block_of(0, 10, 0.2), earliest_frame=0)  # queued after the first: frames 50..59
    timeline.interrupt_with(speech_block(20, *block_of(20, 5, 0.9)))
    assert timeline.shape(19)[0] == 0.5 and timeline.shape(20)[0] == 0.9 and np.array_equal(timeline.shape(30), CLOSED)
    assert timeline.speaking_until() == 25  # the rest of the first and the queued block are gone
    cut = timeline.audio(20 * SAMPLES_PER_FRAME - 100, 100)
    assert cut[0] == 0.5 and 0 <= cut[-1] < 0.01  # faded out over 5 ms, no click
    assert timeline.audio(20 * SAMPLES_PER_FRAME, 1)[0] == 0.9


def test_live_audio_is_lip_synced_80_ms_at_a_time() -> None:
    timeline = SpeechTimeline()
    lipsync = LiveLipSync(timeline)
    silence, voice = np.zeros(CHUNK_SAMPLES * 5, np.float32), tone(0.8)
    assert lipsync.feed(silence[:1000], earliest_frame=3) == 0  # less than one chunk: nothing yet
    assert lipsync.feed(np.concatenate([silence[1000:], voice]), earliest_frame=3) == 15
    assert timeline.speaking_until() == 3 + 30
    opening = np.array([timeline.shape(n)[0] for n in range(3, 33)])
    assert opening[:8].max() == 0.0 and opening[14:].mean() > 0.3  # closed in the silence, open with the voice
    played = timeline.audio(3 * SAMPLES_PER_FRAME, 30 * SAMPLES_PER_FRAME)
    assert np.allclose(played[-len(voice) :], voice)  # the audio plays back paired with its frames
