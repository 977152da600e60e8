"""A live session's renderer: the timeline's speech through the engine's stream, frames at their numbers on the
session clock, the avatar's own frames otherwise; an interruption resets the stream; late frames are dropped or
repeated, never shown late."""

from __future__ import annotations

import numpy as np
import pytest

from engines.face import load_face_analyzer
from engines.lipsync import pingpong_index
from engines.lipsync.scheduler import StreamScheduler
from engines.lipsync.stream import LipSyncStream
from engines.lipsync.viseme_warp import VisemeWarpEngine
from realtime.media import REPEAT_FRAMES, LiveRenderer
from realtime.timeline import SAMPLES_PER_FRAME, SpeechTimeline, speech_block
from tests.engines.test_lipsync_stream import landmarked_avatar
from tests.engines.wav2lip_fixtures import speech_like


class StoppedClock:
    """The session clock, moved by hand."""

    def __init__(self) -> None:
        self.frame = 0

    def frame_now(self) -> int:
        return self.frame


@pytest.fixture(scope="module")
def engine_and_avatar() -> tuple[VisemeWarpEngine, object]:
    return VisemeWarpEngine(load_face_analyzer()), landmarked_avatar()


def open_mouths(frames: int) -> np.ndarray:
    return np.tile(np.array([0.8, 0.2, 0.0], np.float32), (frames, 1))


def test_speech_frames_come_at_their_numbers_and_idle_frames_are_the_avatars(engine_and_avatar) -> None:
    engine, avatar = engine_and_avatar
    timeline, clock, scheduler = SpeechTimeline(), StoppedClock(), StreamScheduler()
    renderer = LiveRenderer(avatar, engine, timeline, clock, scheduler)
    samples = speech_like(1.0)
    timeline.interrupt_with(speech_block(10, samples, open_mouths(25)))
    while scheduler.run_round():
        pass
    alone = LipSyncStream(engine, avatar)
    alone.push(np.pad(samples, (0, 25 * SAMPLES_PER_FRAME - len(samples))), open_mouths(25), at_frame=10)
    alone.flush()
    expected = dict(alone.drain())
    for n in range(0, 45):
        clock.frame = n
        scheduler.run_round()  # the utterance's last frames render once they fall due (nothing came after it)
        image = renderer.frame(n)
        own = avatar.frames[pingpong_index(n, len(avatar))]
        if n in expected:
            assert np.array_equal(image, expected[n]), n
        else:
            assert np.array_equal(image, own), n  # before and after the speech: idle
    assert not np.array_equal(expected[20], avatar.frames[pingpong_index(20, len(avatar))])
    renderer.close()
    assert len(scheduler) == 0


def test_an_interruption_resets_the_stream_and_late_frames_are_repeated_then_idle(engine_and_avatar) -> None:
    engine, avatar = engine_and_avatar
    timeline, clock, scheduler = SpeechTimeline(), StoppedClock(), StreamScheduler()
    renderer = LiveRenderer(avatar, engine, timeline, clock, scheduler)
    timeline.interrupt_with(speech_block(0, speech_like(2.0), open_mouths(50)))
    scheduler.run_round()  # one batch rendered: frames 0..3
    assert renderer.rendered_frames() == [0, 1, 2, 3]
    clock.frame = 2
    timeline.cut_from(3)  # an interruption at frame 3
    while scheduler.run_round():
        pass
    assert renderer.frame(2) is not None
    for n in range(3, 10):  # after the cut: the avatar's own frames, the rendered frame 3 dropped
        assert np.array_equal(renderer.frame(n), avatar.frames[pingpong_index(n, len(avatar))]), n

    # speech whose frames come too late: inside speech the last rendered frame repeats, then the avatar idles
    clock.frame = 20
    timeline.interrupt_with(speech_block(20, speech_like(2.0), open_mouths(50)))
    scheduler.run_round()  # one batch rendered (the first frames skipped by the pass time: late otherwise)
    first, last = renderer.rendered_frames()[0], renderer.rendered_frames()[-1]
    assert 20 <= first <= 24 and last == first + engine.batch_size - 1
    rendered = renderer.frame(last)
    clock.frame = 40  # the clock went on without the scheduler: the frames after it were never rendered
    repeated = [renderer.frame(n) for n in range(last + 1, last + 1 + REPEAT_FRAMES)]
    assert all(np.array_equal(image, rendered) for image in repeated)
    assert not np.array_equal(rendered, avatar.frames[0])  # an open mouth, not the idle face
    assert renderer.frames_repeated == len(repeated)
    later = last + 1 + REPEAT_FRAMES
    assert np.array_equal(renderer.frame(later), avatar.frames[pingpong_index(later, len(avatar))])
    scheduler.run_round()  # the stream skips the late frames: the next ones it renders are not behind the clock
    assert renderer.rendered_frames()[0] >= 40 and renderer.frames_late == 0
