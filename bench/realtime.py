"""Streaming and real time on the CPU engine: time to the first segment, render rate while streaming.

Setup (in a temp dir, as bench/generate.py): a 512x512 avatar TAR of the astronaut in a file:// store
and English text eSpeak speaks in about ``--seconds`` seconds. One process, engines loaded and one
warm-up request first, then ``--runs`` requests of each kind (median):

- first segment: ``handlers.dispatch_stream`` with ``stream: true``, from the call to the first item
  (the first, 0.24 s segment stored in the store and listed in its playlist); target <= 300 ms for 10 s.
- streaming rate: seconds of video / wall time of the whole streamed request (segments, playlist
  rewrites, the final mp4); target >= 2x real time. The same request without ``stream`` is the
  baseline measured alongside, so the ratio shows what streaming costs.

    python bench/realtime.py [--runs 3] [--seconds 10] [--side 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGET_FIRST_SEGMENT_MS = 300.0
TARGET_STREAM_RTF = 2.0


def streamed_request(payload: dict) -> tuple[float, float, float, int]:
    """(ms to the first segment, total seconds, seconds of video, segments) of one streamed request."""
    import handlers

    started = time.perf_counter()
    first_ms, segments, result = None, 0, None
    for item in handlers.dispatch_stream({**payload, "stream": True}):
        if "error" in item:
            raise SystemExit(f"generate_video failed: {item}")
        if "index" in item:
            segments += 1
            first_ms = first_ms if first_ms is not None else (time.perf_counter() - started) * 1000
        result = item
    assert result is not None and first_ms is not None
    return first_ms, time.perf_counter() - started, result["duration_s"], segments


def plain_request(payload: dict) -> float:
    import handlers

    started = time.perf_counter()
    result = handlers.dispatch(payload)
    if "error" in result:
        raise SystemExit(f"generate_video failed: {result}")
    return time.perf_counter() - started


def bench_streaming(work: Path, runs: int, seconds: float, side: int) -> None:
    from bench.generate import make_avatar, speech_text

    store = make_avatar(work, side)
    os.environ.update(
        AVATAR_STORE_URI=store.as_uri(), AVATAR_LOCAL_PATH=str(work / "cache"), WORKER_TASKS="generate_video"
    )
    import handlers

    handlers.load_engines(handlers.default_runtime())
    payload = {"task": "generate_video", "user_id": "bench", "avatar_id": "bench-avatar", "text": speech_text(seconds)}
    streamed_request(payload)  # warm-up: avatar unpacked and cached, warps prepared
    streamed, plain = [], []
    for _ in range(runs):
        streamed.append(streamed_request(payload))
        plain.append(plain_request(payload))
    first_ms = statistics.median(r[0] for r in streamed)
    stream_s = statistics.median(r[1] for r in streamed)
    video_s, segments = streamed[0][2], streamed[0][3]
    plain_s = statistics.median(plain)
    print(f"\nstreamed generate_video, viseme_warp, {side}x{side}, {video_s:.2f} s of video in {segments} segments")
    print(f"{'first segment stored (ms)':34}{first_ms:>10.1f}   target <= {TARGET_FIRST_SEGMENT_MS:g}")
    print(f"{'streamed request wall (s)':34}{stream_s:>10.2f}")
    print(f"{'render rate while streaming (x)':34}{video_s / stream_s:>10.2f}   target >= {TARGET_STREAM_RTF:g}")
    cost = f"(streaming takes {stream_s / plain_s:.2f}x its time)"
    print(f"{'same request, not streamed (x)':34}{video_s / plain_s:>10.2f}   {cost}")
    ok = first_ms <= TARGET_FIRST_SEGMENT_MS and video_s / stream_s >= TARGET_STREAM_RTF
    print(f"streaming targets: {'met' if ok else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-realtime-") as tmp:
        bench_streaming(Path(tmp), args.runs, args.seconds, args.side)


if __name__ == "__main__":
    main()
