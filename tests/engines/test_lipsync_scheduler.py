"""The per-worker scheduler: sessions of one engine batch together, take turns fairly, and get the frames they
would get rendering alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.lipsync.scheduler import StreamScheduler
from engines.lipsync.stream import LipSyncStream
from tests.engines.test_lipsync_stream import make_engine
from tests.engines.wav2lip_fixtures import speech_like


class Counting:
    """An engine wrapper that records the size and the streams of each pass."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.passes: list[list[int]] = []
        for name in ("name", "batch_size", "lookahead_frames", "audio_span", "uses_mouth_shapes"):
            setattr(self, name, getattr(engine, name))

    def stream_state(self, avatar: object) -> object:
        return self.engine.stream_state(avatar)

    def render_frames(self, jobs: list) -> list[np.ndarray]:
        self.passes.append([id(job.state) for job in jobs])
        return self.engine.render_frames(jobs)


def alone(engine: object, avatar: object, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
    stream = LipSyncStream(engine, avatar)
    stream.push(samples)
    stream.flush()
    return list(stream.drain())


@pytest.fixture(scope="module")
def wav2lip(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    return make_engine("wav2lip96", tmp_path_factory.mktemp("w2l"))


def test_two_sessions_batch_together_and_get_the_frames_they_get_alone(wav2lip: tuple[object, object]) -> None:
    engine, avatar = wav2lip
    counting = Counting(engine)
    speech = {"a": speech_like(1.0), "b": 0.5 * speech_like(1.2, silence_s=0.3)}
    got: dict[str, list] = {"a": [], "b": []}
    scheduler = StreamScheduler()
    streams = {}
    for key, samples in speech.items():
        streams[key] = LipSyncStream(counting, avatar)
        streams[key].push(samples)
        streams[key].flush()
        scheduler.add(streams[key], got[key].extend)
    while scheduler.run_round():
        pass
    for key, samples in speech.items():
        expected = alone(engine, avatar, samples)
        assert [n for n, _ in got[key]] == [n for n, _ in expected]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got[key], expected, strict=True)), key
    states = {id(streams[k].state) for k in streams}
    mixed = [p for p in counting.passes if set(p) == states]
    assert mixed, counting.passes  # both sessions' frames in one engine pass
    assert all(len(p) <= engine.batch_size for p in counting.passes)


def test_turns_are_fair_between_sessions(wav2lip: tuple[object, object]) -> None:
    engine, avatar = wav2lip
    counting = Counting(engine)
    scheduler = StreamScheduler()
    streams = [LipSyncStream(counting, avatar) for _ in range(3)]
    for stream in streams:
        stream.push(speech_like(3.0))  # far more ready frames than one batch
        stream.flush()
        scheduler.add(stream, lambda frames: None)
    for _ in range(3):
        scheduler.run_round()
    for rendered in counting.passes[:3]:
        shares = [rendered.count(id(s.state)) for s in streams]
        assert max(shares) - min(shares) <= 1, shares  # round robin within a batch
    totals = [sum(p.count(id(s.state)) for p in counting.passes[:3]) for s in streams]
    assert totals == [totals[0]] * 3, totals  # the odd frame goes to each session in turn


def test_engines_do_not_mix_and_a_failing_pass_is_reported(wav2lip: tuple[object, object], tmp_path: Path) -> None:
    engine, avatar = wav2lip
    warp, warp_avatar = make_engine("viseme_warp", tmp_path)

    class Broken(Counting):
        def render_frames(self, jobs: list) -> list[np.ndarray]:
            raise RuntimeError("out of memory")

    scheduler = StreamScheduler()
    failures: list[BaseException] = []
    good, bad = LipSyncStream(warp, warp_avatar), LipSyncStream(Broken(engine), avatar)
    frames: list = []
    for stream, deliver in ((good, frames.extend), (bad, lambda f: None)):
        stream.push(speech_like(0.4))
        stream.flush()
        scheduler.add(stream, deliver, failed=failures.append)
    while scheduler.run_round():
        pass
    assert [n for n, _ in frames] == list(range(10))
    assert failures and isinstance(failures[0], RuntimeError)
