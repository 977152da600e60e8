"""The streaming seam of every lip-sync engine: the silence gate, chunked pushes, flush and reset; silence is
still with each engine (random weights in the official layouts), frames equal to the avatar's bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.context import EngineContext
from engines.face import find_face, load_face_analyzer
from engines.lipsync import LIPSYNC_ENGINES, AvatarFrames, DrivingAudio, pingpong_index
from engines.lipsync.silence import FADE_FRAMES, HOLD_FRAMES, SPEECH_OFF_DBFS, SilenceGate
from engines.lipsync.stream import RETAIN_FRAMES, TRIM_STEP, LipSyncStream
from tests.engines.wav2lip_fixtures import small_avatar, speech_like, write_checkpoint
from tests.media import astronaut_bgr

SR = 16000
SILENT_HEAD_S, SPEECH_S, SILENT_TAIL_S = 0.6, 0.6, 0.8


def speech_between_silences() -> np.ndarray:
    tail = np.zeros(int(SILENT_TAIL_S * SR), np.float32)
    return np.concatenate([speech_like(SPEECH_S, silence_s=SILENT_HEAD_S), tail])


# ---- the gate ------------------------------------------------------------------------------------


def decide(levels: list[float], span: tuple[int, int] = (0, 0)) -> tuple[list[bool], list[float]]:
    gate = SilenceGate(span)
    gate.advance(levels, len(levels), final=True)
    return gate.speaking, [gate.weight(k, len(levels)) for k in range(len(levels))]


def test_gate_hysteresis_holds_short_pauses_and_ignores_noise() -> None:
    loud, between, quiet = -20.0, SPEECH_OFF_DBFS + 2, -80.0
    # noise between the thresholds never starts speech
    assert decide([between] * 10)[0] == [False] * 10
    # a pause of HOLD_FRAMES quiet frames stays speech; one frame more ends it
    short = [loud] * 6 + [quiet] * HOLD_FRAMES + [loud] * 6
    assert all(decide(short)[0])
    long = [loud] * 6 + [quiet] * (HOLD_FRAMES + 2) + [loud] * 6
    speaking = decide(long)[0]
    assert speaking[6 : 6 + HOLD_FRAMES] == [True] * HOLD_FRAMES and speaking[6 + HOLD_FRAMES] is False
    # a level between the thresholds keeps speech going
    assert all(decide([loud] * 3 + [between] * 10 + [loud])[0])


def test_gate_crossfades_in_and_out_and_follows_the_engines_span() -> None:
    levels = [-90.0] * 5 + [-20.0] * 12 + [-90.0] * 12
    speaking, weights = decide(levels)
    steps = [(k + 1) / (FADE_FRAMES + 1) for k in range(FADE_FRAMES)]
    assert weights[:5] == [0.0] * 5 and weights[5 : 5 + FADE_FRAMES] == steps
    end = speaking.index(False, 5)  # after the hold
    assert end == 17 + HOLD_FRAMES and weights[end - FADE_FRAMES : end] == steps[::-1]
    assert weights[end:] == [0.0] * (len(levels) - end)
    # Wav2Lip's frame k hears frames k..k+4: its speech starts 4 frames earlier
    assert decide(levels, (0, 4))[0].index(True) == 1


def test_weights_wait_for_the_frames_that_decide_them() -> None:
    gate = SilenceGate((0, 2))
    gate.advance([-20.0] * 10, 10, final=False)
    assert len(gate.speaking) == 8  # frame 8 needs frames 9 and 10
    assert gate.weight(4, None) == 1.0 and gate.weight(5, None) is None  # its fade-out is not known yet


# ---- engines with random weights ----------------------------------------------------------------


def portrait_avatar() -> AvatarFrames:
    image = astronaut_bgr(384)
    landmarks = find_face(image, load_face_analyzer()).landmarks
    return AvatarFrames(frames=[image], coords=[(0, 384, 0, 384)], landmarks=landmarks[None].astype(np.float32))


def landmarked_avatar() -> AvatarFrames:
    image = astronaut_bgr(384)
    face = find_face(image, load_face_analyzer())
    box = face.box
    return AvatarFrames(
        frames=[image, image.copy()],
        coords=[(box.y1, box.y2, box.x1, box.x2)] * 2,
        landmarks=np.stack([face.landmarks] * 2).astype(np.float32),
    )


def make_engine(name: str, tmp_path: Path) -> tuple[object, AvatarFrames]:
    if name == "viseme_warp":
        from engines.lipsync.viseme_warp import VisemeWarpEngine

        return VisemeWarpEngine(load_face_analyzer()), landmarked_avatar()
    if name in ("wav2lip96", "wav2lip256"):
        import engines.lipsync.wav2lip  # noqa: F401

        path = write_checkpoint(tmp_path / f"{name}.pth", name)
        engine = LIPSYNC_ENGINES[name].load(path, EngineContext("cpu", options={"batch_size": 8}))
        return engine, small_avatar(frames=4, crop_size=96)
    if name == "musetalk":
        from engines.lipsync.musetalk import MuseTalkEngine
        from engines.lipsync.musetalk.model import load_musetalk
        from tests.engines.musetalk_fixtures import write_models

        model = load_musetalk(write_models(tmp_path / "models", seed=3), precision="fp32", device="cpu")
        return MuseTalkEngine(model, batch_size=4), small_avatar(frames=3, with_crops=False)
    if name == "liveportrait":
        from engines.liveportrait import load_liveportrait
        from engines.liveportrait.random_weights import write_random_weights
        from engines.liveportrait.talking import LivePortraitLipSync

        lp = load_liveportrait(write_random_weights(tmp_path / "lp", seed=2), device="cpu")
        return LivePortraitLipSync(lp, input_size=128, batch_frames=4), portrait_avatar()
    from engines.sadtalker.engine import SadTalkerLipSync
    from engines.sadtalker.random_weights import write_random_weights

    root = write_random_weights(tmp_path / "sadtalker", seed=3, sizes=(256,))
    return SadTalkerLipSync.load(root, EngineContext("cpu", options={"render_size": 128})), portrait_avatar()


ENGINES = ["viseme_warp", "wav2lip96", "wav2lip256", "musetalk", "liveportrait", "sadtalker"]


@pytest.mark.parametrize("name", ENGINES)
def test_silent_frames_are_the_avatars_own_with_every_engine(name: str, tmp_path: Path) -> None:
    engine, avatar = make_engine(name, tmp_path)
    audio = DrivingAudio(speech_between_silences())
    frames = list(engine.render(avatar, audio))
    assert len(frames) == audio.num_frames == 50
    own = [avatar.frames[pingpong_index(i, len(avatar))] for i in range(len(frames))]
    same = [np.array_equal(frame, source) for frame, source in zip(frames, own, strict=True)]
    head, speech_end = int(SILENT_HEAD_S * 25), int((SILENT_HEAD_S + SPEECH_S) * 25)
    # before the speech and after its hold: the avatar bit for bit, whatever the engine makes of silence
    assert all(same[: head - 5]), same
    assert all(same[speech_end + HOLD_FRAMES + 3 :]), same
    assert not any(same[head + FADE_FRAMES : speech_end - 1]), same  # the engine's frames while speaking


def test_chunked_pushes_give_the_offline_frames(tmp_path: Path) -> None:
    engine, avatar = make_engine("wav2lip96", tmp_path)
    samples = speech_between_silences()
    offline = list(engine.render(avatar, DrivingAudio(samples)))
    stream = LipSyncStream(engine, avatar)
    live: list[tuple[int, np.ndarray]] = []
    rng = np.random.default_rng(0)
    at = 0
    while at < len(samples):
        size = int(rng.integers(1, 3000))
        stream.push(samples[at : at + size])
        at += size
        live += stream.step()
    stream.flush()
    live += list(stream.drain())
    assert [n for n, _ in live] == list(range(len(offline)))
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for (_, a), b in zip(live, offline, strict=True))
    assert worst <= 2, worst  # features of a prefix of the audio: the same up to float rounding


def test_frames_come_out_once_the_engine_has_its_lookahead(tmp_path: Path) -> None:
    engine, avatar = make_engine("wav2lip96", tmp_path)
    stream = LipSyncStream(engine, avatar, first_frame=100)
    stream.push(speech_like(0.4))  # 10 frames of speech
    ready = [n for n, _ in stream.drain()]
    assert ready and ready[0] == 100 and ready[-1] < 110 - stream.lookahead + 1
    stream.flush()
    assert [n for n, _ in stream.drain()] == list(range(ready[-1] + 1, 110))
    # a new utterance later: the frames in between are idle (not returned), but for FADE_FRAMES of silence before
    # it (the fade-in is over when the sound starts)
    stream.push(speech_like(0.2), at_frame=130)
    stream.flush()
    assert [n for n, _ in stream.drain()] == list(range(130 - FADE_FRAMES, 135))


def test_reset_drops_speech_not_yet_rendered(tmp_path: Path) -> None:
    engine, avatar = make_engine("viseme_warp", tmp_path)
    stream = LipSyncStream(engine, avatar)
    stream.push(speech_like(2.0))
    first = stream.step(4)
    assert [n for n, _ in first] == [0, 1, 2, 3]
    stream.reset(at_frame=10)
    stream.flush()
    assert list(stream.drain()) == []
    stream.push(speech_like(0.2))
    stream.flush()
    assert [n for n, _ in stream.drain()] == [10, 11, 12, 13, 14]


def test_a_long_live_utterance_keeps_a_bounded_window(tmp_path: Path) -> None:
    engine, avatar = make_engine("viseme_warp", tmp_path)
    stream = LipSyncStream(engine, avatar)
    second = speech_like(1.0)
    numbers: list[int] = []
    windows = set()
    for _ in range(30):  # a microphone speaking for 30 s, one second at a time
        stream.push(second)
        for pending in stream.take(1000):
            numbers.append(pending.index)
            windows.add((pending.window.first, len(pending.window.samples)))
    stream.flush()
    numbers += [p.index for p in stream.take(1000)]
    assert numbers == list(range(750))  # every frame once, in order
    assert max(length for _, length in windows) <= (RETAIN_FRAMES + 25) * 640
    assert max(first for first, _ in windows) > 0 and all(first % TRIM_STEP == 0 for first, _ in windows)
