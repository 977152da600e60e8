"""preprocess_avatar throughput: frames per second end to end on a generated talking-head video.

A 10 s, 512x512, 25 fps H.264 video of the astronaut with small head motion is generated in a temp
dir and run through ``handlers.dispatch`` (file:// store and avatar cache in the temp dir) several
times; the table shows the median of each stage. ``frames`` is the wall time of the streamed
decode -> track -> crop+PNG stage; decode, track (= detect + landmarks + bookkeeping) and write_wait
run on the main thread inside it, crop_write is the summed busy time of the PNG writer threads, which
run alongside, so those rows overlap and do not add up to the total; crop_write_cpu is the writers' CPU
time, which stays meaningful when other processes compete for the cores.

Baseline, same process and frames: running dlib's HOG detector on every full-resolution frame plus
the landmarks (what a tracker-less pipeline does), timed on the decoded frames.

    python bench/preprocess.py [--runs 3] [--seconds 10] [--side 512]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.options import add_clip_options  # noqa: E402  (after the path insert)
from engines.constants import FPS  # noqa: E402
from handlers.runtime import WorkerRuntime  # noqa: E402

TARGET_FPS = 50.0
STAGES = (
    "fetch", "probe", "frames", "decode", "track", "detect", "landmarks", "crop_write", "crop_write_cpu", "write_wait",
)  # fmt: skip
STAGES_AFTER = ("tables", "tar", "upload", "install", "total")


def make_video(work: Path, seconds: float, side: int) -> Path:
    from tests.media import head_motion, write_video

    frames, _ = head_motion(round(seconds * FPS), FPS, side)
    return write_video(work / "training.mp4", frames, FPS)


def run_once(video: Path, work: Path, run: int, runtime: WorkerRuntime) -> dict:
    import handlers
    from handlers.settings import Settings

    store = work / f"store{run}"
    store.mkdir()
    os.environ["AVATAR_STORE_URI"] = store.as_uri()
    os.environ["AVATAR_LOCAL_PATH"] = str(work / f"avatars{run}")
    payload = {"task": "preprocess_avatar", "user_id": "bench", "avatar_id": f"a{run}", "video": video.as_uri()}
    result = handlers.dispatch(payload, runtime.with_settings(Settings()))
    if "error" in result:
        raise SystemExit(f"preprocess_avatar failed: {result}")
    return result


def baseline_fps(video: Path, limit: int) -> float:
    """Detector on every full frame + landmarks: the per-frame cost a tracker-less pipeline pays."""
    from engines.codecs.video_in import read_frames
    from engines.face import load_face_analyzer

    analyzer = load_face_analyzer()
    frames = [f for _, f in zip(range(limit), read_frames(video), strict=False)]
    started = time.perf_counter()
    for frame in frames:
        faces = analyzer.detect(frame, 0)
        if faces:
            analyzer.landmarks(frame, faces[0])
    return len(frames) / (time.perf_counter() - started)


def print_table(results: list[dict], baseline: float) -> None:
    frames = results[0]["num_frames"]
    median = {k: statistics.median(r["timings_ms"].get(k, 0.0) for r in results) for k in (*STAGES, *STAGES_AFTER)}
    print(f"\npreprocess_avatar: {frames} frames, median of {len(results)} runs")
    print(f"{'stage':<16}{'ms':>10}{'ms/frame':>10}")
    for stage in (*STAGES, *STAGES_AFTER):
        print(f"{stage:<16}{median[stage]:>10.1f}{median[stage] / frames:>10.2f}")
    runs_fps = [r["num_frames"] / (r["timings_ms"]["total"] / 1000) for r in results]
    track_fps = frames / (median["track"] / 1000)
    end_to_end = statistics.median(runs_fps)
    print(
        f"\nend to end: {end_to_end:.1f} fps (runs: {', '.join(f'{f:.1f}' for f in runs_fps)}), target >= {TARGET_FPS}"
    )
    print(f"tracking:   {track_fps:.1f} fps vs baseline full-frame detection every frame: {baseline:.1f} fps")
    print(f"tracking stats (last run): {results[-1]['engine']['tracking']}")
    print("PASS" if end_to_end >= TARGET_FPS else "BELOW TARGET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_options(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import handlers

    runtime = handlers.worker_runtime()
    runtime.engines.face_analyzer()  # model loading is a worker start-up cost, not a per-request one
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        work = Path(tmp)
        video = make_video(work, args.seconds, args.side)
        results = [run_once(video, work, run, runtime) for run in range(args.runs)]
        baseline = baseline_fps(video, limit=50)
    print_table(results, baseline)


if __name__ == "__main__":
    main()
