"""Quality figures: the lip-sync score per engine on one clip, what the score costs, the CPU engines' checks.

Clip: the tests' avatar (40 frames of the moving astronaut, 256x256 crops of the 768-px photo) and eSpeak
speaking ``TEXT`` (about 11 s). Each engine in ``ENGINES`` renders it, and ``engines.quality`` scores the
frames it made (landmarks found again on them; mouth opening vs 25-fps audio RMS; Pearson at the best
lag within +-2 frames). Rows:

- ``viseme_warp``: the CPU engine driven by the phoneme timeline (a text request), and by the audio alone;
- ``still``: the avatar's own frames, a mouth that never moves (must score low);
- ``wav2lip96 (random weights)``: the neural engine's code on random weights, a garbage mouth (must score
  low). Another engine is one more entry in ``ENGINES`` (its builder gets the analyzer and a temp folder
  for random weights).

Score cost: ms per frame of ``LipSyncMeter`` (every frame, and every 2nd frame), median of ``--runs``,
against viseme_warp's render ms per frame in the same process.

CPU engines: viseme_warp's PSNR above the nose line (worst frame); landmark_warp on the frontal and the
synthetic three-quarter astronaut (``tests.media.three_quarter_astronaut``): the landmark judge's verdict
per emotion at intensities 0.7 and 1.0 (``tests.engines.expression_judge``), and the smear checks (eyes,
below the chin) at 0.25/0.5/0.75/1.0.

    python bench/quality.py [--runs 3] [--skip-wav2lip]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.face import FaceAnalyzer, load_face_analyzer  # noqa: E402
from engines.lipsync import AvatarFrames, DrivingAudio, pingpong_index  # noqa: E402
from engines.quality import LipSyncMeter, score_lip_sync  # noqa: E402

TEXT = (
    "Peter Piper picked a peck of pickled peppers. Good morning, my friend! "
    "The quick brown fox jumps over the lazy dog, and she sells sea shells by the sea shore."
)
AVATAR_FRAMES = 40
EMOTION_INTENSITIES = (0.7, 1.0)
SMEAR_INTENSITIES = (0.25, 0.5, 0.75, 1.0)

Frames = Callable[[AvatarFrames, DrivingAudio], list[np.ndarray]]


def viseme_warp(analyzer: FaceAnalyzer, work: Path) -> Frames:
    from engines.lipsync.viseme_warp import VisemeWarpEngine

    engine = VisemeWarpEngine(analyzer)
    return lambda avatar, audio: list(engine.render(avatar, audio))


def viseme_warp_audio_only(analyzer: FaceAnalyzer, work: Path) -> Frames:
    render = viseme_warp(analyzer, work)
    return lambda avatar, audio: render(avatar, DrivingAudio(audio.samples))


def still(analyzer: FaceAnalyzer, work: Path) -> Frames:
    return lambda avatar, audio: [avatar.frames[pingpong_index(i, len(avatar))] for i in range(audio.num_frames)]


def wav2lip96_random(analyzer: FaceAnalyzer, work: Path) -> Frames:
    from bench.wav2lip import random_checkpoint
    from engines.context import EngineContext
    from engines.lipsync.wav2lip.engine import Wav2Lip96Engine

    engine = Wav2Lip96Engine.load(random_checkpoint("wav2lip96", work), EngineContext("cpu", "fp32"))
    return lambda avatar, audio: list(engine.render(avatar, audio))


ENGINES: dict[str, Callable[[FaceAnalyzer, Path], Frames]] = {
    "viseme_warp (text)": viseme_warp,
    "viseme_warp (audio only)": viseme_warp_audio_only,
    "still (avatar frames)": still,
    "wav2lip96 (random weights)": wav2lip96_random,
}


def clip(analyzer: FaceAnalyzer) -> tuple[AvatarFrames, DrivingAudio]:
    from engines.tts import VoiceParams, load_synthesizer, resample
    from tests.media import moving_astronaut_avatar

    speech = load_synthesizer("espeak").synthesize(TEXT, VoiceParams())
    audio = DrivingAudio(resample(speech.samples, speech.sample_rate, 16000), speech.phonemes)
    return moving_astronaut_avatar(analyzer, AVATAR_FRAMES), audio


def lip_sync_rows(analyzer: FaceAnalyzer, avatar: AvatarFrames, audio: DrivingAudio, names: list[str]) -> dict:
    print(f"clip: {audio.num_frames} frames ({len(audio.samples) / 16000:.1f} s), avatar {len(avatar)} frames 256x256")
    print(f"{'engine':30} {'corr':>6} {'lag':>4} {'corr@0':>7} {'no face':>8} {'render ms/frame':>16}")
    rendered = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            render = ENGINES[name](analyzer, Path(tmp))
            started = time.perf_counter()
            frames = render(avatar, audio)
            render_ms = 1000.0 * (time.perf_counter() - started) / len(frames)
            score = score_lip_sync(frames, audio.samples, analyzer)
            rendered[name] = (frames, render_ms)
            print(
                f"{name:30} {score.correlation:6.3f} {score.lag:4d} {score.correlation_at_zero:7.3f} "
                f"{score.frames_without_face:8d} {render_ms:16.1f}"
            )
    return rendered


def score_cost(analyzer: FaceAnalyzer, frames: list[np.ndarray], audio: DrivingAudio, runs: int) -> dict[int, float]:
    costs = {}
    for stride in (1, 2):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            meter = LipSyncMeter(analyzer, stride)
            for frame in frames:
                meter.add(frame)
            meter.score(audio.samples)
            times.append(1000.0 * (time.perf_counter() - started) / len(frames))
        costs[stride] = statistics.median(times)
    return costs


def upper_face_psnr(avatar: AvatarFrames, frames: list[np.ndarray]) -> float:
    from tests.media import psnr

    worst = float("inf")
    for i, frame in enumerate(frames):
        k = pingpong_index(i, len(avatar))
        nose_line = int(avatar.landmarks[k][27:31, 1].min())
        worst = min(worst, psnr(frame[:nose_line], avatar.frames[k][:nose_line]))
    return worst


def expression_figures(analyzer: FaceAnalyzer) -> None:
    from engines.expression import EMOTIONS, load_expression_engine
    from tests.engines.expression_judge import below_chin, eye_structure_kept, find_landmarks, judge
    from tests.media import astronaut_bgr, three_quarter_astronaut

    engine = load_expression_engine("landmark_warp", analyzer)
    for face, image in (("frontal", astronaut_bgr(768)), ("three-quarter (synthetic)", three_quarter_astronaut(768))):
        analysis = engine.analyze(image)
        source_lm = find_landmarks(analyzer, image)
        chin = below_chin(source_lm)
        smears = []
        for emotion in EMOTIONS:
            for intensity in SMEAR_INTENSITIES:
                out = engine.render(analysis, emotion, intensity)
                moved_below_chin = int(np.abs(out[chin:].astype(int) - image[chin:]).max())
                problems = eye_structure_kept(out, image, source_lm) + (
                    [f"below the chin moved {moved_below_chin}"] if moved_below_chin > 2 else []
                )
                smears += [f"{emotion} {intensity}: {p}" for p in problems]
        print(f"landmark_warp, {face}: smear checks {smears if smears else 'all clean'}")
        for intensity in EMOTION_INTENSITIES:
            neutral_lm = find_landmarks(analyzer, engine.render(analysis, "neutral", intensity))
            for emotion in EMOTIONS:
                render_lm = find_landmarks(analyzer, engine.render(analysis, emotion, intensity))
                verdict = judge(emotion, render_lm, source_lm if emotion == "neutral" else neutral_lm)
                print(f"  {intensity:.1f} {verdict.line()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-wav2lip", action="store_true", help="leave out the random-weights neural engine")
    args = parser.parse_args()
    analyzer = load_face_analyzer()
    avatar, audio = clip(analyzer)
    names = [n for n in ENGINES if not (args.skip_wav2lip and n.startswith("wav2lip"))]
    rendered = lip_sync_rows(analyzer, avatar, audio, names)
    frames, render_ms = rendered["viseme_warp (text)"]
    costs = score_cost(analyzer, frames, audio, args.runs)
    print(
        f"score cost: {costs[1]:.2f} ms/frame every frame, {costs[2]:.2f} ms/frame every 2nd frame; "
        f"viseme_warp renders in {render_ms:.2f} ms/frame ({100 * costs[1] / render_ms:.0f}% / "
        f"{100 * costs[2] / render_ms:.0f}% of it)"
    )
    print(f"viseme_warp: worst PSNR above the nose line {upper_face_psnr(avatar, frames):.1f} dB")
    expression_figures(analyzer)


if __name__ == "__main__":
    main()
