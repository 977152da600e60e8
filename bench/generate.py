"""generate_video on the CPU engine (viseme_warp): real-time factor cold and warm, and peak memory.

Setup, in a temp dir: a 512x512, 5 s (125-frame) avatar of the astronaut with head motion (a crop
of the 1024-px render, so the face is ~180 px wide) with landmarks, packed as a TAR in a file://
store; English text that eSpeak speaks in about ``--seconds`` seconds.

- cold: the first request of a fresh process (imports, engine loading, the avatar downloaded from
  the store and unpacked, PNGs decoded); one process per run, median of ``--runs``.
- warm: the same request repeated in each of those processes (avatar frames and warps cached).
- RTF = seconds of video / seconds of wall time for ``handlers.dispatch`` (cold: also the imports).
- stages: the result's timings_ms (median); ``encode`` runs in a thread alongside ``render``.
- peak RSS: a fresh process making a ``--long-seconds`` clip, read with getrusage(RUSAGE_CHILDREN) in
  a small launcher process (setup runs in its own child so no parent is big when a worker forks).

    python bench/generate.py [--runs 3] [--seconds 10] [--long-seconds 60] [--side 512] [--engine auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.options import add_clip_options  # noqa: E402  (after the path insert)
from engines.constants import FPS  # noqa: E402

AVATAR_SECONDS = 5.0
TARGET_WARM_RTF = 5.0
TARGET_PEAK_RSS_MB = 1536
STAGES = ("fetch", "tts", "features", "render", "encode", "upload")
SENTENCES = (
    "Welcome to this short demonstration of talking head video made on an ordinary processor.",
    "The mouth follows the sounds of the text, and the jaw follows the loudness of the voice.",
    "No neural network is involved, so it runs anywhere, even without a graphics card.",
    "Each frame of the avatar is warped below the nose, and everything above it stays untouched.",
    "The video is encoded while the frames are made, and uploaded as soon as it is complete.",
)


def speech_text(seconds: float) -> str:
    """The sentences, repeated and cut to the word, that eSpeak speaks in just over ``seconds``."""
    from engines.tts import VoiceParams, load_synthesizer

    synth = load_synthesizer("espeak")
    pool = " ".join(SENTENCES).split()
    words: list[str] = []
    while True:
        words.extend(pool[len(words) % len(pool) : len(words) % len(pool) + 5])
        text = " ".join(words)
        if synth.synthesize(text, VoiceParams()).duration_s >= seconds:
            return text


def make_avatar(work: Path, side: int) -> Path:
    """The avatar TAR in a file:// store under ``work/store``; returns the store root."""
    import cv2
    import numpy as np

    from engines.face import load_face_analyzer
    from storage.avatar.archive import pack_avatar
    from storage.avatar.layout import AvatarWriter
    from tests.media import head_motion

    analyzer = load_face_analyzer()
    moving, _ = head_motion(round(AVATAR_SECONDS * FPS), FPS, 2 * side)
    x0 = int(0.375 * side)  # the face sits left of centre in the astronaut photo
    avatar = AvatarWriter(work / "avatar-src" / "bench-avatar")
    coords, landmarks = [], []
    for i, full in enumerate(moving):
        frame = np.ascontiguousarray(full[:side, x0 : x0 + side])
        box = analyzer.detect(frame)[0]
        landmarks.append(analyzer.landmarks(frame, box))
        coords.append((box.y1, min(side, box.y2 + 10), box.x1, box.x2))
        crop = frame[coords[-1][0] : coords[-1][1], box.x1 : box.x2]
        avatar.write_frame(i, frame, cv2.resize(crop, (256, 256)))
    avatar.write_tables(coords, np.array(landmarks))
    store = work / "store"
    (store / "avatars" / "bench").mkdir(parents=True)
    pack_avatar(avatar.path, store / "avatars" / "bench" / "bench-avatar.tar")
    return store


CHILD = """
import json, resource, sys, time
started = time.perf_counter()
sys.path.insert(0, {root!r})
import handlers
args = json.loads(sys.argv[1])
runs = []
for i in range(args["requests"]):
    t0 = time.perf_counter()
    result = handlers.dispatch(args["payload"])
    t1 = time.perf_counter()
    if "error" in result:
        raise SystemExit("generate_video failed: " + json.dumps(result))
    runs.append({{"wall": t1 - t0, "since_start": t1 - started, "timings": result["timings_ms"],
                  "video_s": result["duration_s"], "frames": result["num_frames"]}})
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"runs": runs, "rss_mb": rss_mb}}))
"""

# A small process between this one and the worker: a child's ru_maxrss starts at its parent's size
# when it forks, and RUSAGE_CHILDREN is the peak of every child, so each worker gets a fresh parent.
LAUNCHER = """
import json, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(out.stderr)
if out.returncode:
    sys.exit(out.returncode)
result = json.loads(out.stdout.strip().splitlines()[-1])
result["children_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(result))
"""


def run_child(store: Path, cache: Path, text: str, requests: int, engine: str) -> dict:
    env = {
        **os.environ,
        "AVATAR_STORE_URI": store.as_uri(),
        "AVATAR_LOCAL_PATH": str(cache),
        "WORKER_TASKS": "generate_video",
    }
    payload = {
        "task": "generate_video",
        "user_id": "bench",
        "avatar_id": "bench-avatar",
        "text": text,
        "engine": engine,
    }
    request = json.dumps({"payload": payload, "requests": requests})
    worker = [sys.executable, "-c", CHILD.format(root=str(REPO_ROOT)), request]
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *worker],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_stages(runs: list[dict]) -> dict[str, float]:
    return {s: statistics.median(r["timings"].get(s, 0.0) for r in runs) for s in STAGES}


def print_table(cold: list[dict], warm: list[dict], video_s: float, side: int) -> None:
    cold_wall = statistics.median(r["since_start"] for r in cold)
    cold_request = statistics.median(r["wall"] for r in cold)
    warm_wall = statistics.median(r["wall"] for r in warm)
    print(f"\ngenerate_video, viseme_warp, {side}x{side}, {video_s:.2f} s of video ({round(video_s * FPS)} frames)")
    print(f"{'':28}{'cold':>10}{'warm':>10}")
    print(f"{'wall incl. imports (s)':28}{cold_wall:>10.2f}{'':>10}")
    print(f"{'request wall (s)':28}{cold_request:>10.2f}{warm_wall:>10.2f}")
    print(f"{'real-time factor (x)':28}{video_s / cold_wall:>10.2f}{video_s / warm_wall:>10.2f}")
    print(f"{'frames per second':28}{video_s * FPS / cold_request:>10.1f}{video_s * FPS / warm_wall:>10.1f}")
    cold_stages, warm_stages = median_stages(cold), median_stages(warm)
    for stage in STAGES:
        print(f"{'  ' + stage + ' (ms)':28}{cold_stages[stage]:>10.1f}{warm_stages[stage]:>10.1f}")
    verdict = "meets" if video_s / warm_wall >= TARGET_WARM_RTF else "MISSES"
    print(f"warm target >= {TARGET_WARM_RTF:g}x real time: {verdict}")


def setup(work: Path, side: int, seconds: float, long_seconds: float) -> None:
    """Avatar TAR and texts, made in a child process so this one stays small (see LAUNCHER)."""
    make_avatar(work, side)
    texts = {"short": speech_text(seconds), "long": speech_text(long_seconds)}
    (work / "texts.json").write_text(json.dumps(texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_options(parser)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--engine", default="auto", help="the request's `engine` (auto picks viseme_warp on CPU)")
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)  # internal: the setup child
    args = parser.parse_args()
    if args.setup is not None:
        setup(args.setup, args.side, args.seconds, args.long_seconds)
        return

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        options = ["--side", str(args.side), "--seconds", str(args.seconds), "--long-seconds", str(args.long_seconds)]
        subprocess.run([sys.executable, __file__, "--setup", str(work), *options], check=True, cwd=REPO_ROOT)
        texts = json.loads((work / "texts.json").read_text())
        store = work / "store"
        print(f"setup: avatar and texts in {time.perf_counter() - started:.1f} s")

        long_run = run_child(store, work / "cache-long", texts["long"], requests=1, engine=args.engine)
        cold, warm, short_rss = [], [], []
        for i in range(args.runs):
            child = run_child(store, work / f"cache-{i}", texts["short"], requests=1 + args.runs, engine=args.engine)
            cold.append(child["runs"][0])
            warm.extend(child["runs"][1:])
            short_rss.append(child["children_rss_mb"])

    video_s = cold[0]["video_s"]
    print_table(cold, warm, video_s, args.side)
    long_s = long_run["runs"][0]["video_s"]
    peak_mb = long_run["children_rss_mb"]
    print(f"\npeak RSS, {long_s:.1f} s clip (fresh process): {peak_mb:.0f} MB (RUSAGE_CHILDREN)")
    print(f"peak RSS, {video_s:.1f} s clip, {1 + args.runs} requests: {statistics.median(short_rss):.0f} MB (median)")
    verdict = "meets" if peak_mb <= TARGET_PEAK_RSS_MB else "MISSES"
    print(f"peak RSS target <= {TARGET_PEAK_RSS_MB} MB: {verdict}")
    print(f"long clip: {long_s / long_run['runs'][0]['since_start']:.2f}x real time cold")


if __name__ == "__main__":
    main()
