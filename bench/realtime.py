"""Streaming and real time on the CPU engine: time to the first segment, render rate while streaming.

Setup (in a temp dir, as bench/generate.py): a 512x512 avatar TAR of the astronaut in a file:// store
and English text eSpeak speaks in about ``--seconds`` seconds. One process, engines loaded and one
warm-up request first, then ``--runs`` requests of each kind (median):

- first segment: ``handlers.dispatch_stream`` with ``stream: true``, from the call to the first item
  (the first, 0.24 s segment stored in the store and listed in its playlist); target <= 300 ms for 10 s.
- streaming rate: seconds of video / wall time of the whole streamed request (segments, playlist
  rewrites, the final mp4); target >= 2x real time. The same request without ``stream`` is the
  baseline measured alongside, so the ratio shows what streaming costs.

Live sessions (WebRTC), against ``avatarctl serve``'s app under uvicorn in this process (the local backend: each
session in a worker process of its own), a 256 px portrait of the astronaut, and aiortc peers in this process
(their decoding shares the CPU):

- say -> mouth: from ``POST /v1/sessions/{id}/say`` to the first received frame whose mouth region
  differs from the idle avatar by more than idle motion does (median of ``--says``).
- concurrent sessions: 1, 2, ... sessions at once, all speaking; the most for which every peer
  still receives >= 22.5 fps (25 fps - 10%).

Live sessions through the worker path: the RunPod worker (``runpod_handler.py --rp_serve_api``, a process of
its own) runs the ``live_session`` task and dials out to a control peer in this process (the contract's
routes); say -> mouth is timed from queuing the `say` command (which the worker's long-poll takes) to the
first received frame whose mouth moved (median of ``--says``); target <= 300 ms.

The lip-sync seam in this process (``bench/seam.py``): offline seam vs direct render (ratio), wav2lip96 / viseme_warp
live fps per session, sessions one scheduler holds at >= 24 fps (render only).

Through the orchestrator and ONE RunPod worker process (``bench/realtime_worker.py``): say -> mouth and fps,
direct vs TURN; the A/V offset at the receiver over 60 s; sessions one worker process holds at >= 24 fps, per
engine (viseme_warp, wav2lip96 on random weights).

    python bench/realtime.py [--runs 3] [--seconds 10] [--side 512] [--says 5] [--max-sessions 12]
                             [--engines viseme_warp,wav2lip96] [--av-seconds 60] [--worker-sessions 6]
                             [--skip-streaming] [--worker-only] [--worker-path-only] [--seam-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.options import add_clip_options  # noqa: E402  (after the path insert)
from bench.realtime_worker import bench_worker_path  # noqa: E402
from bench.seam import bench_seam  # noqa: E402

TARGET_FIRST_SEGMENT_MS = 300.0
TARGET_SAY_TO_MOUTH_MS = 300.0
TARGET_STREAM_RTF = 2.0
MIN_LIVE_FPS = 22.5
LONG_TEXT = "Several sessions speak at the same time, so every one of them renders its mouth in each frame. " * 2


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


class MouthWatch:
    """Per received frame: how far the mouth region is from the first frame's (mean grey-level difference)."""

    def __init__(self) -> None:
        self.box: tuple[int, int, int, int] | None = None
        self.reference = None
        self.history: list[tuple[float, float]] = []  # (arrival, difference)

    def frame(self, arrival: float, pts: int, image) -> None:
        import cv2

        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype("float32")
        if self.box is None:
            from engines.face import load_face_analyzer

            analyzer = load_face_analyzer()
            points = analyzer.landmarks(image, analyzer.detect(image)[0])[48:68]
            (x1, y1), (x2, y2) = points.min(axis=0).astype(int) - 4, points.max(axis=0).astype(int) + 4
            self.box, self.reference = (y1, y2, x1, x2), grey[y1:y2, x1:x2]
        y1, y2, x1, x2 = self.box
        self.history.append((arrival, float(abs(grey[y1:y2, x1:x2] - self.reference).mean())))

    def first_move_after(self, start: float, idle_from: float) -> float | None:
        idle = [d for at, d in self.history if idle_from <= at < start]
        threshold = 1.5 * max(idle, default=0.0) + 4.0
        return next((at for at, d in self.history if at >= start and d > threshold), None)


async def say_to_mouth(url: str, image: str, says: int) -> list[float]:
    import httpx

    from realtime.client import LiveClient

    watch = MouthWatch()
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        peer = LiveClient(http, keep_frames=False, on_frame=watch.frame)
        await peer.start("bench", image=image)
        await asyncio.sleep(2.0)
        for _ in range(says):
            idle_from = time.time()
            await asyncio.sleep(2.0)
            start = time.time()
            (await peer.say("Hello, how are you today?")).raise_for_status()
            await asyncio.sleep(3.0)
            moved = watch.first_move_after(start, idle_from)
            if moved is not None:
                latencies.append((moved - start) * 1000)
        await peer.close()
    return latencies


async def concurrent_fps(url: str, image: str, sessions: int) -> list[float]:
    """Received fps of each of ``sessions`` peers, all speaking."""
    import httpx

    from realtime.client import LiveClient, steady_fps

    arrivals: list[list[float]] = [[] for _ in range(sessions)]
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        peers = [
            LiveClient(http, keep_frames=False, on_frame=lambda at, pts, image, k=k: arrivals[k].append(at))
            for k in range(sessions)
        ]
        for peer in peers:
            await peer.start("bench", image=image)
        await asyncio.sleep(1.5)
        for peer in peers:
            (await peer.say(LONG_TEXT)).raise_for_status()
        await asyncio.sleep(5.0)
        for peer in peers:
            await peer.close()
    return [steady_fps(times, skip_s=2.0) for times in arrivals]


def bench_live(work: Path, says: int, max_sessions: int) -> None:
    import cv2

    from orchestrator.api import create_app
    from orchestrator.core.config import OrchestratorSettings
    from orchestrator.core.service import JobService
    from orchestrator.devtools.emulator import BackgroundServer
    from tests.media import astronaut_bgr

    store = work / "live-store"
    store.mkdir()
    cv2.imwrite(str(store / "portrait.png"), astronaut_bgr(512)[0:256, 96:352])
    os.environ.update(AVATAR_STORE_URI=store.as_uri(), REALTIME_MAX_SESSIONS=str(max_sessions), API_TOKEN="")
    os.environ.update(REALTIME_MAX_SESSIONS_PER_USER=str(max_sessions), REALTIME_ALLOW_PRIVATE_CANDIDATES="1")
    service = JobService(OrchestratorSettings(database_url=f"sqlite:///{work / 'jobs.db'}"))
    image = (store / "portrait.png").as_uri()
    with BackgroundServer(create_app(service)) as server:
        latencies = asyncio.run(say_to_mouth(server.url, image, says))
        print("\nlive sessions (WebRTC), 256x256 portrait, viseme_warp, aiortc peers in this process")
        if latencies:
            median_ms = statistics.median(latencies)
            print(f"{'say -> first mouth movement (ms)':34}{median_ms:>10.1f}   ({len(latencies)} says)")
        held = 0
        for sessions in range(1, max_sessions + 1):
            fps = asyncio.run(concurrent_fps(server.url, image, sessions))
            print(f"{f'{sessions} speaking session(s): min fps':34}{min(fps):>10.1f}")
            if min(fps) < MIN_LIVE_FPS:
                break
            held = sessions
        print(f"concurrent live sessions at 25 fps (-10%): {held}")
    service.stop()


async def worker_say_to_mouth(worker, control, says: int) -> tuple[list[float], list[float]]:
    """(say -> first mouth movement, say -> `said` event) in ms, through a worker session's control channel."""
    from realtime.client import LiveClient
    from tests.realtime.hostile_sessions import payload

    watch = MouthWatch()
    peer = LiveClient(keep_frames=False, on_frame=watch.frame)
    task = payload(control, worker.portrait, await peer.offer())
    runner = asyncio.ensure_future(asyncio.to_thread(worker.run, task, 600))
    answer = await asyncio.to_thread(control.answer, task["session_id"], 90.0)
    await peer.accept(answer["answer"])
    await peer.wait_frames(25)
    to_mouth, to_said = [], []
    for _ in range(says):
        idle_from = time.time()
        await asyncio.sleep(2.0)
        start = time.time()
        seq = control.command(task["session_id"], "say", "Hello, how are you today?")
        said = await asyncio.to_thread(control.said, task["session_id"], seq)
        said_at = time.time()
        await asyncio.sleep(3.0)
        moved = watch.first_move_after(start, idle_from)
        if moved is not None and said is not None:
            to_mouth.append((moved - start) * 1000)
            to_said.append((said_at - start) * 1000)
    control.command(task["session_id"], "stop")
    await runner
    await peer.close()
    return to_mouth, to_said


def bench_worker_live(work: Path, says: int) -> None:
    import cv2

    from tests.media import astronaut_bgr
    from tests.realtime.control_peer import ControlPeer
    from tests.realtime.hostile_sessions import Worker

    store = work / "worker-store"
    store.mkdir()
    cv2.imwrite(str(store / "portrait.png"), astronaut_bgr(512)[0:256, 96:352])
    os.environ.update(AVATAR_STORE_URI=store.as_uri(), AVATAR_LOCAL_PATH=str(work / "worker-cache"))
    worker = Worker(work, (store / "portrait.png").as_uri())
    try:
        worker.wait_ready()
        with ControlPeer() as control:
            to_mouth, to_said = asyncio.run(worker_say_to_mouth(worker, control, says))
    finally:
        worker.stop()
    print("\nlive session on a worker (RunPod entry point, control long-poll), 256x256 portrait, viseme_warp")
    if to_mouth:
        mouth_ms = statistics.median(to_mouth)
        print(f"{'say -> `said` reported (ms)':34}{statistics.median(to_said):>10.1f}")
        print(
            f"{'say -> first mouth movement (ms)':34}{mouth_ms:>10.1f}   target <= {TARGET_SAY_TO_MOUTH_MS:g} "
            f"({len(to_mouth)} says; {'met' if mouth_ms <= TARGET_SAY_TO_MOUTH_MS else 'MISSED'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_options(parser)
    parser.add_argument("--says", type=int, default=5)
    parser.add_argument("--max-sessions", type=int, default=12)
    parser.add_argument("--skip-streaming", action="store_true", help="only the live-session figures")
    parser.add_argument("--worker-only", action="store_true", help="only the live session on a worker")
    parser.add_argument("--engines", default="viseme_warp,wav2lip96", help="engines of the worker-process figures")
    parser.add_argument("--av-seconds", type=float, default=60.0, help="length of the A/V offset run")
    parser.add_argument("--worker-sessions", type=int, default=6, help="most sessions tried on one worker process")
    parser.add_argument("--worker-path-only", action="store_true", help="only the sessions through a RunPod worker")
    parser.add_argument("--seam-only", action="store_true", help="only the lip-sync seam's figures (bench/seam.py)")
    args = parser.parse_args()
    if args.seam_only:
        bench_seam(args.runs, args.max_sessions)
        return
    with tempfile.TemporaryDirectory(prefix="bench-realtime-") as tmp:
        quick = args.worker_only or args.worker_path_only
        if not quick:
            bench_seam(args.runs, args.max_sessions)
        if not args.skip_streaming and not quick:
            bench_streaming(Path(tmp), args.runs, args.seconds, args.side)
        if not quick:
            bench_live(Path(tmp), args.says, args.max_sessions)
        if not args.worker_path_only:
            bench_worker_live(Path(tmp), args.says)
        if not args.worker_only:
            engines = [name.strip() for name in args.engines.split(",") if name.strip()]
            bench_worker_path(Path(tmp), engines, args.says, args.av_seconds, args.worker_sessions)


if __name__ == "__main__":
    main()
