"""The lip-sync seam's cost and the engines' live capacity in this process, for ``bench/realtime.py``.

- offline seam cost: ``engine.render`` (the stream: push all, flush, drain; the silence gate and cross-fades)
  vs the same engine's ``render_frames`` called directly on batches of consecutive frames of one audio window
  (the old direct render: no gate), same clip, same process; median of ``--runs``, ratio seam / direct.
- live fps per session: one stream (an utterance pushed whole, as `say` does) in a live worker's scheduler,
  whose passes are cut to what the engine renders in ``TARGET_PASS_S``; frames out per second of rendering
  (the engine's bound for one session, before encoding).
- sessions at >= 24 fps: 1, 2, ... streams of speech in the worker's scheduler at once (their frames batched
  together); each session's rate is the frames delivered per second / sessions.

wav2lip96 runs on random weights in the official layout at 96 px, bf16 where the CPU has it natively
(precision ``auto``), batch 16; viseme_warp on the tests' astronaut avatar with landmarks.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MIN_SESSION_FPS = 24.0
SPEECH_SECONDS = 4.0


def engines(work: Path) -> dict[str, tuple[Any, Any]]:
    import engines.lipsync.wav2lip  # noqa: F401
    from engines.context import EngineContext
    from engines.face import load_face_analyzer
    from engines.lipsync import LIPSYNC_ENGINES
    from engines.lipsync.viseme_warp import VisemeWarpEngine
    from tests.engines.test_lipsync_stream import landmarked_avatar
    from tests.engines.wav2lip_fixtures import small_avatar, write_checkpoint

    checkpoint = write_checkpoint(work / "wav2lip96.pth", "wav2lip96")
    wav2lip = LIPSYNC_ENGINES["wav2lip96"].load(checkpoint, EngineContext("cpu", options={"batch_size": 16}))
    return {
        "viseme_warp": (VisemeWarpEngine(load_face_analyzer()), landmarked_avatar()),
        "wav2lip96": (wav2lip, small_avatar(frames=6, crop_size=96)),
    }


def direct_render(engine: Any, avatar: Any, samples: np.ndarray) -> int:
    from engines.lipsync.stream import AudioWindow, FrameJob

    window = AudioWindow(samples, 0)
    state = engine.stream_state(avatar)
    count = 0
    for first in range(0, window.num_frames, engine.batch_size):
        jobs = [
            FrameJob(i, avatar, state, window) for i in range(first, min(window.num_frames, first + engine.batch_size))
        ]
        count += len(engine.render_frames(jobs))
    return count


def seam_render(engine: Any, avatar: Any, samples: np.ndarray) -> int:
    from engines.lipsync import DrivingAudio

    return sum(1 for _ in engine.render(avatar, DrivingAudio(samples)))


def median_seconds(fn: Any, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def scheduled_fps(
    engine: Any, avatar: Any, samples: np.ndarray, sessions: int, target_pass_s: float | None = None
) -> float:
    """Frames/s per session of ``sessions`` streams in one scheduler (``target_pass_s``: a live worker's passes)."""
    from engines.lipsync.scheduler import StreamScheduler
    from engines.lipsync.stream import LipSyncStream

    scheduler = StreamScheduler(target_pass_s)
    for _ in range(sessions):
        stream = LipSyncStream(engine, avatar)
        stream.push(samples)
        stream.flush()
        scheduler.add(stream, lambda frames: None)
    started = time.perf_counter()
    delivered = 0
    while got := scheduler.run_round():
        delivered += got
    return delivered / (time.perf_counter() - started) / sessions


def bench_seam(runs: int, max_sessions: int) -> None:
    from engines.lipsync.scheduler import TARGET_PASS_S
    from tests.engines.wav2lip_fixtures import speech_like

    samples = speech_like(SPEECH_SECONDS)
    print(f"\nlip-sync seam, in this process ({SPEECH_SECONDS:g} s of speech, median of {runs})")
    with tempfile.TemporaryDirectory(prefix="bench-seam-") as tmp:
        for name, (engine, avatar) in engines(Path(tmp)).items():
            info = getattr(engine, "info", {})
            seam = median_seconds(lambda e=engine, a=avatar: seam_render(e, a, samples), runs)
            direct = median_seconds(lambda e=engine, a=avatar: direct_render(e, a, samples), runs)
            frames = int(SPEECH_SECONDS * 25)
            print(
                f"{name} {info}: offline seam {frames / seam:.1f} fps vs direct {frames / direct:.1f} fps,"
                f" seam / direct time {seam / direct:.3f}"
            )
            live = scheduled_fps(engine, avatar, samples, 1, TARGET_PASS_S)
            print(f"{name}: live fps per session (live passes) {live:.1f}")
            held = 0
            for sessions in range(1, max_sessions + 1):
                fps = scheduled_fps(engine, avatar, samples, sessions)
                print(f"{name}: {sessions} session(s) in one scheduler: {fps:.1f} fps each")
                if fps < MIN_SESSION_FPS:
                    break
                held = sessions
            print(f"{name}: sessions at >= {MIN_SESSION_FPS:g} fps on this CPU (render only): {held}")
