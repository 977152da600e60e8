"""A live session end to end, the way it runs in production: the orchestrator's API (this process) starts the
session as a RunPod job; the worker is `runpod_handler:concurrent_handler` under the RunPod emulator in a
process of its own, which only dials out to the session's control routes; the browser (an aiortc peer) and the
worker reach each other through coturn only (both sides relay-only, TURN credentials from TURN_SECRET). The
frames arrive at 25 fps, the mouth follows the speech, is interrupted, and stays still in silence; a killed
worker ends the session with a reason the client sees; limits and tenancy hold."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

pytest.importorskip("aiortc", reason="live sessions need the `realtime` extra (aiortc)")

from engines.face import load_face_analyzer  # noqa: E402
from realtime.client import LiveClient, steady_fps  # noqa: E402
from storage.local import path_from_file_uri  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.engines.wav2lip_fixtures import write_checkpoint  # noqa: E402
from tests.orchestrator.conftest import eventually  # noqa: E402
from tests.orchestrator.live_fixtures import ALICE, BOB, LiveStack, live_settings, live_stack  # noqa: E402
from tests.realtime.conftest import mouth_openings, write_portrait  # noqa: E402
from tests.turn import NO_TURNSERVER, TURNSERVER, turn_server  # noqa: E402

ENDPOINT = "ep-live"
SPEECH = "Hello there! Watch my mouth move while I speak to you through the relay, until you cut me off."


@dataclass
class Worker:
    url: str
    process: subprocess.Popen
    log: Path


@dataclass
class Deployment:
    stack: LiveStack
    worker: Worker
    portrait: str


def start_worker(tmp_path: Path, env: dict[str, str]) -> Worker:
    """`avatarctl emulate-runpod` running our RunPod worker's concurrent handler (two sessions at once)."""
    port = free_port()
    command = [sys.executable, "-c", "from orchestrator.cli.main import app; app()", "emulate-runpod"]
    command += ["--endpoint-id", ENDPOINT, "--port", str(port), "--handler", "runpod_handler:concurrent_handler"]
    command += ["--concurrency", "2", "--log-level", "warning"]
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    worker = Worker(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"{worker.url}/v2/{ENDPOINT}/health", timeout=2)
            return worker
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(log.read_text()[-3000:])


@pytest.fixture
def deployment(tmp_path: Path, local_settings) -> Iterator[Deployment]:
    if TURNSERVER is None:
        pytest.skip(NO_TURNSERVER)
    portrait = write_portrait(path_from_file_uri(local_settings.avatar_store_uri))
    with turn_server(tmp_path) as turn:
        env = {
            **os.environ,  # the store and caches of local_settings
            "WORKER_TASKS": "live_session",
            "REALTIME_ICE_TRANSPORT_POLICY": "relay",  # the worker offers relayed candidates only
            "REALTIME_ALLOW_PRIVATE_CANDIDATES": "1",  # coturn relays on loopback here
            "REALTIME_HEARTBEAT_S": "0.5",
            # wav2lip96 on random weights in the official layout (its checkpoint as published: "module." keys)
            "WAV2LIP96_CHECKPOINT": str(write_checkpoint(tmp_path / "wav2lip.pth", "wav2lip96")),
        }
        worker = start_worker(tmp_path, env)
        try:
            settings = live_settings(
                f"sqlite:///{tmp_path / 'jobs.db'}",
                backend_live_session=f"runpod:{ENDPOINT}",
                runpod_base_url=f"{worker.url}/v2",
                ice_servers=turn.ice_servers,
                turn_secret=turn.secret,
                realtime_answer_timeout_s=60.0,
                realtime_heartbeat_timeout_s=3.0,
                realtime_max_sessions_per_user=1,
            )
            with live_stack(settings, local_settings) as stack:
                yield Deployment(stack, worker, portrait)
        finally:
            worker.process.kill()
            worker.process.wait(10)


def ended_session(deployment: Deployment, session_id: str) -> dict | None:
    session = httpx.get(f"{deployment.stack.url}/v1/sessions/{session_id}", headers=ALICE).json()
    return session if session["status"] == "ended" else None


def mouth_measures(images: list[np.ndarray], rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, of the mouth region (the idle face's lip landmarks, 6 px around) against a band of the forehead
    as tall above the eyebrows (the head's own sway and the encoder's noise; no engine touches it):

    - activity: how much the mouth region changed since the previous frame, beyond what the band changed (a
      mouth moving frame to frame);
    - deviation: how far the mouth region's mean level (less the band's) is from its median at rest (a mouth
      that is not the avatar's own, as a neural engine's on random weights: a still face of its own)."""
    analyzer = load_face_analyzer()
    first = images[int(np.nonzero(rest)[0][0])]
    landmarks = analyzer.landmarks(first, analyzer.detect(first)[0])
    lips = landmarks[48:68]
    (x1, y1), (x2, y2) = lips.min(axis=0).astype(int) - 6, lips.max(axis=0).astype(int) + 6
    brow = int(landmarks[17:27, 1].min()) - 4
    grey = np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) for image in images]).astype(np.float32)
    mouth, band = grey[:, y1:y2, x1:x2], grey[:, max(0, brow - (y2 - y1)) : brow, x1:x2]

    def steps(region: np.ndarray) -> np.ndarray:
        return np.abs(np.diff(region, axis=0, prepend=region[:1])).mean(axis=(1, 2))

    level = mouth.mean(axis=(1, 2)) - band.mean(axis=(1, 2))
    return steps(mouth) - steps(band), np.abs(level - np.median(level[rest]))


async def relayed_peer(client: httpx.AsyncClient, portrait: str, engine: str) -> tuple[LiveClient, dict]:
    ice_servers = (await client.get("/v1/sessions/ice-servers")).json()["ice_servers"]
    peer = LiveClient(client, ice_servers=ice_servers, relay_only=True)
    offer = await peer.offer()
    assert " typ relay" in offer["sdp"] and " typ host" not in offer["sdp"]
    body = {"user_id": "alice", "image": portrait, "engine": engine, "offer": offer}
    created = await client.post("/v1/sessions", json=body)
    if created.status_code == 422 and created.json()["error_code"] == "engine_unavailable":
        await peer.close(delete=False)
        pytest.skip(f"the worker does not render {engine} live: {created.json()['error']}")
    assert created.status_code == 201, created.text
    peer.session_id = created.json()["session_id"]
    await peer.accept(created.json()["answer"])
    return peer, created.json()


@pytest.mark.parametrize("engine", ["viseme_warp", "wav2lip96"])
def test_a_relayed_session_on_a_runpod_worker_follows_speech_interruption_and_silence(
    deployment: Deployment, engine: str
) -> None:
    marks: dict[str, float] = {}

    async def scenario() -> tuple[LiveClient, bool, dict, dict]:
        async with httpx.AsyncClient(base_url=deployment.stack.url, headers=ALICE, timeout=60) as client:
            peer, _ = await relayed_peer(client, deployment.portrait, engine)
            assert await peer.wait_frames(25, 30.0), deployment.worker.log.read_text()[-3000:]
            relayed = peer.relayed()
            await asyncio.sleep(1.5)  # idle: the mouth at rest
            marks["say"] = time.time()
            said = await peer.say(SPEECH)
            marks["said"] = time.time()  # the worker has the speech: it plays from the next frames on
            assert said.status_code == 200 and said.json()["duration_s"] > 3.0, said.text
            await asyncio.sleep(1.5)
            marks["interrupt"] = time.time()
            assert (await client.post(f"/v1/sessions/{peer.session_id}/interrupt")).status_code == 202
            await asyncio.sleep(2.5)  # silence after the interruption
            marks["stop"] = time.time()
            live = (await client.get(f"/v1/sessions/{peer.session_id}")).json()
            await peer.close()  # DELETE, then the peer connection
            ended = (await client.get(f"/v1/sessions/{peer.session_id}")).json()
            return peer, relayed, live, ended

    peer, relayed, live, ended = asyncio.run(scenario())
    assert relayed  # the media went through the TURN relay
    assert live["status"] == "live" and live["engine"]["name"] == engine and live["stats"]["frames_sent"] > 0
    assert (ended["status"], ended["end_reason"]) == ("ended", "stopped")
    job = eventually(lambda: (j := deployment.stack.service.get(ended["job_id"])).finished and j, 20)
    assert job.status == "completed" and job.output["reason"] == "stopped"

    arrivals = [at for at, _, _ in peer.received.raw]
    assert 22.5 <= steady_fps(arrivals) <= 27.5, steady_fps(arrivals)
    frames = peer.received.frames
    times = np.array([at for at, _, _ in frames])
    rest = (times > marks["say"] - 1.2) & (times < marks["say"])
    speaking = (times > marks["said"]) & (times < marks["interrupt"])
    silent = (times > marks["interrupt"] + 0.6) & (times < marks["stop"])
    images = [image for _, _, image in frames]
    activity, deviation = mouth_measures(images, rest)
    idle = float(np.percentile(activity[rest], 90))
    assert np.percentile(activity[silent], 90) < idle + 1, (idle, activity[silent])  # still in silence
    away = float(np.percentile(deviation[rest], 90))
    assert np.percentile(deviation[silent], 90) < away + 1, (away, deviation[silent])  # the avatar's own mouth
    if engine == "wav2lip96":  # random weights: a face of its own while speaking, the avatar's before and after
        assert np.percentile(deviation[speaking], 90) > away + 2, (away, deviation[speaking])
    if engine == "viseme_warp":  # the mouth moves frame to frame, and the landmarks see it open and shut
        assert np.percentile(activity[speaking], 90) > idle + 2, (idle, activity[speaking])
        sample = np.nonzero(rest | speaking | silent)[0][::2]
        openings = np.full(len(frames), np.nan)
        openings[sample] = mouth_openings([images[i] for i in sample], load_face_analyzer())
        at_rest = np.nanmedian(openings[rest])
        assert np.nanmax(openings[speaking]) > at_rest + 0.04, (at_rest, openings[speaking])
        assert np.nanmax(np.abs(openings[silent] - at_rest)) < 0.02, (at_rest, openings[silent])


def test_a_killed_worker_ends_its_session_and_limits_and_tenancy_hold(deployment: Deployment) -> None:
    async def scenario() -> tuple[httpx.Response, int, int, dict, int]:
        async with httpx.AsyncClient(base_url=deployment.stack.url, headers=ALICE, timeout=60) as client:
            peer, created = await relayed_peer(client, deployment.portrait, "auto")
            second = await client.post(
                "/v1/sessions", json={"user_id": "alice", "image": deployment.portrait, "offer": await peer.offer()}
            )
            async with httpx.AsyncClient(base_url=deployment.stack.url, headers=BOB, timeout=60) as bob:
                foreign = (await bob.get(f"/v1/sessions/{peer.session_id}")).status_code
            assert await peer.wait_frames(10, 30.0)
            deployment.worker.process.kill()  # the worker (and the emulated RunPod with it) dies
            before = peer.received.video_frames
            ended = await asyncio.to_thread(eventually, lambda: ended_session(deployment, peer.session_id), 15)
            await asyncio.sleep(1.0)
            after = peer.received.video_frames - before
            await peer.close(delete=False)
            return second, foreign, after, ended, before

    second, foreign, frames_after, ended, frames_before = asyncio.run(scenario())
    assert second.status_code == 429 and second.json()["error_code"] == "user_session_limit"
    assert foreign == 404
    assert (ended["end_reason"], ended["error_code"]) == ("error", "worker_lost")
    assert frames_before > 0 and frames_after < 30  # the media stopped with the worker
