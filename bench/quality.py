"""Quality figures: the lip-sync score per engine on one clip, what the score costs, seams, silence, jitter.

Clip: the tests' avatar (40 frames of the moving astronaut, 256x256 crops of the 768-px photo) and eSpeak
speaking ``TEXT`` (about 9 s) followed by ``SILENCE_S`` of silence. Each engine in ``ENGINES`` renders it
and the result's ``quality`` is measured as ``generate_video`` measures it (``engines.quality.QualityMeter``
fed each frame as it is made, with the engine's seconds for it: within 5 % of the render time, at least
24 frames). Rows:

- ``viseme_warp``: the CPU engine driven by the phoneme timeline (a text request), and by the audio alone;
- ``real-weights-like``: viseme_warp's mouth brought to 96 px with a colour cast and pasted by the Wav2Lip
  engine's paste-back (what a trained 96-px model gives);
- ``still``: the avatar's own frames, a mouth that never moves (must score 0);
- ``wav2lip96 (random weights)``: the neural engine's code on random weights, a garbage mouth (must score
  low). Another engine is one more entry in ``ENGINES``.

Columns: the score in production (sampled) and on every frame, its lag, frames measured, the meter's cost
(ms/frame and share of the engine's render time), silent frames held still, frames with the face lost, and
jitter (upper-face landmark motion frame to frame over the avatar's own, 1.00 = none added).

Seams: each engine's paste-back (``tests.engines.test_paste``'s cases on the 512-px astronaut): the identity
round trip's PSNR inside the mask and pixels changed outside it, and a +30/-12/-25 BGR colour cast's residual
in the core of the mask after colour matching (a plain blend keeps it all: 100 %), and the paste's ms.

CPU engines: viseme_warp's PSNR above the nose line (worst frame); landmark_warp on the frontal and the
synthetic three-quarter astronaut (``tests.media.three_quarter_astronaut``): the landmark judge's verdict
per emotion at intensities 0.7 and 1.0 (``tests.engines.expression_judge``), and the smear checks (eyes,
below the chin) at 0.25/0.5/0.75/1.0.

    python bench/quality.py [--runs 3] [--skip-wav2lip] [--skip-expression]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.face import FaceAnalyzer, load_face_analyzer  # noqa: E402
from engines.lipsync import AvatarFrames, DrivingAudio, pingpong_index  # noqa: E402
from engines.quality import QualityMeter, QualityReport, audio_energy  # noqa: E402
from engines.quality.jitter import upper_face_motion  # noqa: E402

TEXT = (
    "Peter Piper picked a peck of pickled peppers. Good morning, my friend! "
    "The quick brown fox jumps over the lazy dog, and she sells sea shells by the sea shore."
)
SILENCE_S = 1.5
AVATAR_FRAMES = 40
EMOTION_INTENSITIES = (0.7, 1.0)
SMEAR_INTENSITIES = (0.25, 0.5, 0.75, 1.0)

Render = Callable[[AvatarFrames, DrivingAudio], Iterator[np.ndarray]]


def viseme_warp(analyzer: FaceAnalyzer, work: Path) -> Render:
    from engines.lipsync.viseme_warp import VisemeWarpEngine

    return VisemeWarpEngine(analyzer).render


def viseme_warp_audio_only(analyzer: FaceAnalyzer, work: Path) -> Render:
    render = viseme_warp(analyzer, work)
    return lambda avatar, audio: render(avatar, DrivingAudio(audio.samples))


def real_weights_like(analyzer: FaceAnalyzer, work: Path) -> Render:
    from tests.engines.wav2lip_fixtures import real_weights_like as like

    render = viseme_warp(analyzer, work)
    return lambda avatar, audio: (like(avatar, [f], start=i)[0] for i, f in enumerate(render(avatar, audio)))


def still(analyzer: FaceAnalyzer, work: Path) -> Render:
    return lambda avatar, audio: (avatar.frames[pingpong_index(i, len(avatar))] for i in range(audio.num_frames))


def wav2lip96_random(analyzer: FaceAnalyzer, work: Path) -> Render:
    from bench.wav2lip import random_checkpoint
    from engines.context import EngineContext
    from engines.lipsync.wav2lip.engine import Wav2Lip96Engine

    return Wav2Lip96Engine.load(random_checkpoint("wav2lip96", work), EngineContext("cpu", "fp32")).render


ENGINES: dict[str, Callable[[FaceAnalyzer, Path], Render]] = {
    "viseme_warp (text)": viseme_warp,
    "viseme_warp (audio only)": viseme_warp_audio_only,
    "real-weights-like (96 px)": real_weights_like,
    "still (avatar frames)": still,
    "wav2lip96 (random weights)": wav2lip96_random,
}


def clip(analyzer: FaceAnalyzer) -> tuple[AvatarFrames, DrivingAudio]:
    from engines.tts import VoiceParams, load_synthesizer, resample
    from tests.media import moving_astronaut_avatar

    speech = load_synthesizer("espeak").synthesize(TEXT, VoiceParams())
    samples = resample(speech.samples, speech.sample_rate, 16000)
    samples = np.concatenate([samples, np.zeros(int(SILENCE_S * 16000), np.float32)])
    return moving_astronaut_avatar(analyzer, AVATAR_FRAMES), DrivingAudio(samples, speech.phonemes)


def measured_render(
    analyzer: FaceAnalyzer, render: Render, avatar: AvatarFrames, audio: DrivingAudio
) -> tuple[list[np.ndarray], QualityReport, float]:
    """The frames, the production report (each frame measured as it is made, with its render time), render ms/frame."""
    energy = audio_energy(audio.samples, audio.num_frames)
    meter = QualityMeter(analyzer, avatar, expected_frames=audio.num_frames)
    frames, frames_in, render_s = [], render(avatar, audio), 0.0
    for i in range(audio.num_frames):
        started = time.perf_counter()
        frame = next(frames_in)
        frame_s = time.perf_counter() - started
        render_s += frame_s
        meter.add(frame, energy[i], pingpong_index(i, len(avatar)), frame_s)
        frames.append(frame)
    return frames, meter.report(), 1000.0 * render_s / audio.num_frames


def every_frame_score(
    analyzer: FaceAnalyzer, avatar: AvatarFrames, frames: list[np.ndarray], audio: DrivingAudio
) -> float:
    energy = audio_energy(audio.samples, len(frames))
    meter = QualityMeter(analyzer, avatar, budget=None)
    for i, frame in enumerate(frames):
        meter.add(frame, energy[i], pingpong_index(i, len(avatar)))
    return meter.report().lip_sync


def lip_sync_rows(
    analyzer: FaceAnalyzer, avatar: AvatarFrames, audio: DrivingAudio, names: list[str], runs: int
) -> dict[str, tuple[list[np.ndarray], float]]:
    seconds = len(audio.samples) / 16000
    print(
        f"clip: {audio.num_frames} frames ({seconds:.1f} s, the last {SILENCE_S} s silent), avatar {len(avatar)} frames"
    )
    own = [avatar.frames[pingpong_index(i, len(avatar))] for i in range(audio.num_frames)]
    baseline = float(upper_face_motion(own, analyzer).mean())
    header = ("engine", "score", "all", "lag", "meas", "cost ms/f", "cost %", "render ms/f", "still", "lost", "jitter")
    print("{:28} {:>6} {:>6} {:>4} {:>5} {:>9} {:>7} {:>11} {:>6} {:>5} {:>7}".format(*header))
    rendered = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            render = ENGINES[name](analyzer, Path(tmp))
            tries = [measured_render(analyzer, render, avatar, audio) for _ in range(runs)]
            frames, report, render_ms = sorted(tries, key=lambda t: t[1].cost_share or 0.0)[len(tries) // 2]
            rendered[name] = (frames, render_ms)
            jitter = float(upper_face_motion(frames, analyzer).mean()) / baseline
            held = "-" if report.silent_held_still is None else f"{report.silent_held_still:.2f}"
            share = f"{100 * report.cost_share:6.1f}%" if render_ms >= 0.05 and report.cost_share else "      -"
            print(
                f"{name:28} {report.lip_sync:6.3f} {every_frame_score(analyzer, avatar, frames, audio):6.3f} "
                f"{report.lag_frames:4d} {report.frames_measured:5d} {report.cost_ms / report.frames:9.2f} "
                f"{share} {render_ms:11.2f} {held:>6} {report.frames_face_lost:5d} "
                f"{jitter:7.2f}"
            )
    return rendered


def seam_rows(analyzer: FaceAnalyzer, runs: int) -> None:
    from engines.face import find_face
    from tests.engines.test_paste import CAST
    from tests.engines.test_paste import ENGINES as PASTES
    from tests.media import astronaut_bgr, psnr

    image = astronaut_bgr(512)
    landmarks = find_face(image, analyzer).landmarks
    print(f"{'paste-back':14} {'identity dB':>12} {'changed outside':>16} {'cast left':>10} {'ms':>6}")
    for name, case in PASTES.items():
        crop, paste = case(image, landmarks)
        same, weights = paste(crop)
        inside = weights > 0
        tinted = np.clip(crop.astype(int) + CAST, 0, 255).astype(np.uint8)
        cast, _ = paste(tinted)
        core = weights >= 0.98
        left = np.abs((cast[core].astype(float) - image[core]).mean(axis=0)).max() / np.abs(CAST).max()
        times = []
        for _ in range(runs * 5):
            started = time.perf_counter()
            paste(tinted)
            times.append(1000.0 * (time.perf_counter() - started))
        changed = int(np.count_nonzero(np.any(same[~inside] != image[~inside], axis=-1)))
        print(
            f"{name:14} {psnr(same[inside], image[inside]):12.1f} {changed:16d} {100 * left:9.1f}% "
            f"{statistics.median(times):6.2f}"
        )


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
    parser.add_argument("--skip-expression", action="store_true", help="leave out landmark_warp's figures")
    args = parser.parse_args()
    analyzer = load_face_analyzer()
    avatar, audio = clip(analyzer)
    names = [n for n in ENGINES if not (args.skip_wav2lip and n.startswith("wav2lip"))]
    rendered = lip_sync_rows(analyzer, avatar, audio, names, args.runs)
    frames, _ = rendered["viseme_warp (text)"]
    print(f"viseme_warp: worst PSNR above the nose line {upper_face_psnr(avatar, frames):.1f} dB")
    seam_rows(analyzer, args.runs)
    if not args.skip_expression:
        expression_figures(analyzer)


if __name__ == "__main__":
    main()
