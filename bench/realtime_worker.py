"""Live sessions the production way, for ``bench/realtime.py``: the orchestrator's API (this process) starts each
session as a RunPod job; ONE worker process (`runpod_handler:concurrent_handler` under `avatarctl emulate-runpod`,
several sessions at once) runs them and only dials out to the sessions' control routes; media goes browser <->
worker directly or through coturn on loopback. The browser is an aiortc peer in this process (its decoding
shares the CPU with the worker: figures are a floor on this 2-core machine).

- say -> first mouth movement and received fps, direct vs TURN (the client relay-only): median of ``--says``;
- A/V offset at the receiver over ``--av-seconds`` (a sentence every 3 s): for each utterance, the arrival of
  its first mouth movement minus the arrival of its first audible audio frame, plus the 80 ms aiortc's audio
  jitter buffer adds (a browser's player aligns the two by their RTCP timestamps instead); median, worst, and
  drift (the last third's mean minus the first third's);
- sessions one worker process holds at >= 24 fps, per engine (``--engines``; wav2lip96 on random weights in the
  official layout): 1, 2, ... sessions at once, all speaking, until one peer receives under 24 fps or one
  session's engine renders under 24 fps (the worker repeats the frames it could not render in time).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

TARGET_AV_OFFSET_MS = 40.0
# aiortc's receiver holds 4 audio packets (20 ms each) before it decodes the first (JitterBuffer prefetch=4) and
# keeps that lead while packets flow (the worker sends silence between utterances): its audio arrives 80 ms late.
AIORTC_AUDIO_PREFETCH_MS = 80.0
MIN_WORKER_FPS = 24.0
ENDPOINT = "bench-live"
SENTENCE = "Hello, how are you today?"
LONG_TEXT = "Several sessions speak at the same time on one worker, each rendering its mouth in every frame. " * 3


class EngineNotLive(Exception):
    """The worker does not render this engine in live sessions."""


class AudioWatch:
    """Per received audio frame: arrival time and loudness (RMS of the 16-bit samples, 0..1)."""

    def __init__(self) -> None:
        self.history: list[tuple[float, float]] = []

    def frame(self, arrival: float, samples: np.ndarray) -> None:
        self.history.append((arrival, float(np.sqrt(np.mean((samples.astype(np.float32) / 32768.0) ** 2)))))

    def first_sound_after(self, start: float) -> float | None:
        return next((at for at, rms in self.history if at >= start and rms > 0.005), None)  # silence is all zeros


@contextmanager
def worker_process(work: Path, env: dict[str, str], concurrency: int) -> Iterator[str]:
    """`avatarctl emulate-runpod` running the RunPod worker's concurrent handler; yields its /v2 base URL."""
    import httpx

    from tests.conftest import free_port

    port = free_port()
    command = [sys.executable, "-c", "from orchestrator.cli.main import app; app()", "emulate-runpod", "--endpoint-id"]
    command += [ENDPOINT, "--port", str(port), "--handler", "runpod_handler:concurrent_handler"]
    command += ["--concurrency", str(concurrency), "--log-level", "warning"]
    with (work / "worker.log").open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(f"{url}/v2/{ENDPOINT}/health", timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    raise SystemExit((work / "worker.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        yield f"{url}/v2"
    finally:
        process.kill()
        process.wait(10)


@contextmanager
def deployment(work: Path, portrait_store: Path, max_sessions: int, engine: str) -> Iterator[tuple[str, bool]]:
    """coturn (when installed), one worker process, the API; yields (API URL, whether TURN is there)."""
    from orchestrator.api import create_app
    from orchestrator.core.config import OrchestratorSettings
    from orchestrator.core.service import JobService
    from orchestrator.devtools.emulator import BackgroundServer
    from tests.turn import TURNSERVER, turn_server

    os.environ["AVATAR_STORE_URI"] = portrait_store.as_uri()  # the API's and the worker's store
    env = {**os.environ, "WORKER_TASKS": "live_session", "REALTIME_ALLOW_PRIVATE_CANDIDATES": "1"}
    env["REALTIME_HEARTBEAT_S"] = "1"  # the sessions' statistics once a second
    env["REALTIME_MAX_SESSIONS"] = str(max_sessions)
    if engine == "wav2lip96":
        from bench.wav2lip import random_checkpoint

        env["WAV2LIP96_CHECKPOINT"] = str(random_checkpoint("wav2lip96", work))
    with ExitStack() as stack:
        turn = stack.enter_context(turn_server(work)) if TURNSERVER else None
        base_url = stack.enter_context(worker_process(work, env, max_sessions))
        values: dict[str, Any] = {"database_url": f"sqlite:///{work / f'jobs-{engine}.db'}"}
        values.update(backend_live_session=f"runpod:{ENDPOINT}", runpod_base_url=base_url, api_token=None)
        values.update(realtime_max_sessions=max_sessions, realtime_max_sessions_per_user=max_sessions)
        values.update(realtime_answer_timeout_s=120.0, tenant_tokens={})
        if turn is not None:
            values.update(ice_servers=turn.ice_servers, turn_secret=turn.secret)
        settings = OrchestratorSettings(**values)
        service = JobService(settings)
        stack.callback(service.stop)
        server = BackgroundServer(create_app(service))
        settings.public_base_url = server.url
        stack.enter_context(server)
        yield server.url, turn is not None


async def open_peer(http: Any, portrait: str, engine: str, relay: bool, **options: Any) -> Any:
    from realtime.client import LiveClient

    ice_servers = (await http.get("/v1/sessions/ice-servers")).json()["ice_servers"]
    peer = LiveClient(http, keep_frames=False, ice_servers=ice_servers, relay_only=relay, **options)
    offer = await peer.offer()
    body = {"user_id": "bench", "image": portrait, "engine": engine, "offer": offer}
    answer = await http.post("/v1/sessions", json=body)
    if answer.status_code == 422 and answer.json()["error_code"] == "engine_unavailable":
        await peer.close(delete=False)
        raise EngineNotLive(answer.json()["error"])
    answer.raise_for_status()
    peer.session_id = answer.json()["session_id"]
    await peer.accept(answer.json()["answer"])
    await peer.wait_frames(25, 60.0)
    return peer


async def say_to_mouth(url: str, portrait: str, engine: str, relay: bool, says: int) -> tuple[list[float], float]:
    import httpx

    from bench.realtime import MouthWatch
    from realtime.client import steady_fps

    watch, arrivals = MouthWatch(), []

    def on_frame(at: float, pts: int, image: Any) -> None:
        arrivals.append(at)
        watch.frame(at, pts, image)

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        peer = await open_peer(http, portrait, engine, relay, on_frame=on_frame)
        latencies = []
        for _ in range(says):
            idle_from = time.time()
            await asyncio.sleep(2.0)
            start = time.time()
            (await peer.say(SENTENCE)).raise_for_status()
            await asyncio.sleep(2.5)
            moved = watch.first_move_after(start, idle_from)
            if moved is not None:
                latencies.append((moved - start) * 1000)
        await peer.close()
    return latencies, steady_fps(arrivals, skip_s=2.0)


async def av_offsets(url: str, portrait: str, engine: str, relay: bool, seconds: float) -> list[float]:
    """Mouth onset minus sound onset (ms, at the receiver) of each utterance over ``seconds``."""
    import httpx

    from bench.realtime import MouthWatch

    mouth, sound, offsets = MouthWatch(), AudioWatch(), []
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        peer = await open_peer(http, portrait, engine, relay, on_frame=mouth.frame, on_audio=sound.frame)
        end = time.time() + seconds
        while time.time() + 3.0 <= end:
            idle_from = time.time()
            await asyncio.sleep(1.0)
            start = time.time()
            (await peer.say(SENTENCE)).raise_for_status()
            await asyncio.sleep(2.0)
            moved, heard = mouth.first_move_after(start, idle_from), sound.first_sound_after(start)
            if moved is not None and heard is not None:
                offsets.append((moved - heard) * 1000 + AIORTC_AUDIO_PREFETCH_MS)
        await peer.close()
    return offsets


async def speaking_fps(url: str, portrait: str, engine: str, sessions: int) -> tuple[list[float], list[float]]:
    """Per session, all speaking: frames received per second, and frames the engine rendered per second (25 less
    the frames the worker repeated because the engine had not rendered them in time, from its heartbeats)."""
    import httpx

    from realtime.client import steady_fps

    arrivals: list[list[float]] = [[] for _ in range(sessions)]
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        peers = [
            await open_peer(http, portrait, engine, False, on_frame=lambda at, pts, image, k=k: arrivals[k].append(at))
            for k in range(sessions)
        ]
        for peer in peers:
            (await peer.say(LONG_TEXT)).raise_for_status()
        marks = [len(times) for times in arrivals]
        await asyncio.sleep(1.5)  # speaking, and a heartbeat since
        before = [(await http.get(f"/v1/sessions/{peer.session_id}")).json()["stats"] for peer in peers]
        await asyncio.sleep(4.5)
        after = [(await http.get(f"/v1/sessions/{peer.session_id}")).json()["stats"] for peer in peers]
        for peer in peers:
            await peer.close()
    received = [steady_fps(times[mark:], skip_s=0.5) for times, mark in zip(arrivals, marks, strict=True)]
    rendered = [
        25.0 - (a["frames_repeated"] - b["frames_repeated"]) / max(a["seconds"] - b["seconds"], 1e-3)
        for b, a in zip(before, after, strict=True)
    ]
    return received, rendered


def bench_worker_path(work: Path, engines: list[str], says: int, av_seconds: float, max_sessions: int) -> None:
    import cv2

    from tests.media import astronaut_bgr

    store = work / "worker-path-store"
    store.mkdir(exist_ok=True)
    cv2.imwrite(str(store / "portrait.png"), astronaut_bgr(512)[0:256, 96:352])
    portrait = (store / "portrait.png").as_uri()
    for engine in engines:
        print(f"\nlive sessions through the orchestrator and ONE RunPod worker process, {engine}, 256 px portrait")
        try:
            with deployment(work, store, max_sessions, engine) as (url, has_turn):
                worker_figures(url, portrait, engine, has_turn, says, av_seconds, max_sessions)
        except EngineNotLive as exc:
            print(f"{engine}: not live on this worker ({exc})")


def worker_figures(
    url: str, portrait: str, engine: str, has_turn: bool, says: int, av_seconds: float, max_sessions: int
) -> None:
    for relay in (False, True) if has_turn else (False,):
        latencies, fps = asyncio.run(say_to_mouth(url, portrait, engine, relay, says))
        label = "TURN (relay only)" if relay else "direct"
        median = statistics.median(latencies) if latencies else float("nan")
        print(f"{f'{label}: say -> mouth (ms) / fps':34}{median:>10.1f} {fps:>6.1f}   ({len(latencies)} says)")
    offsets = asyncio.run(av_offsets(url, portrait, engine, has_turn, av_seconds))
    if offsets:
        third = max(1, len(offsets) // 3)
        drift = statistics.mean(offsets[-third:]) - statistics.mean(offsets[:third])
        worst = max(offsets, key=abs)
        print(
            f"{'A/V offset at the receiver (ms)':34}{statistics.median(offsets):>10.1f}   worst {worst:+.0f},"
            f" drift {drift:+.0f} over {av_seconds:g} s ({len(offsets)} utterances"
            f"{', through TURN' if has_turn else ''}); target |offset| <= {TARGET_AV_OFFSET_MS:g}"
        )
    held = 0
    for sessions in range(1, max_sessions + 1):
        received, rendered = asyncio.run(speaking_fps(url, portrait, engine, sessions))
        print(f"{f'{sessions} speaking session(s): min fps':34}{min(received):>10.1f}   rendered {min(rendered):.1f}")
        if min(received) < MIN_WORKER_FPS or min(rendered) < MIN_WORKER_FPS:
            break
        held = sessions
    print(f"sessions one worker process holds at >= {MIN_WORKER_FPS:g} fps ({engine}): {held}")
