"""Live sessions through the API under uvicorn on the local backend (each session in a worker process that dials
out to the API), driven by an aiortc client: the video's frame rate, idle motion, the mouth following the
client's microphone and `/say`, the session's end when the peer goes away or its worker process is killed, the
caps, the idle timeout, tenancy and the input rule."""

from __future__ import annotations

import asyncio
import fractions
import os
import signal
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("aiortc", reason="live sessions need the `realtime` extra (aiortc)")

from aiortc.mediastreams import MediaStreamTrack  # noqa: E402

from engines.face import load_face_analyzer  # noqa: E402
from realtime.client import LiveClient, steady_fps  # noqa: E402
from tests.orchestrator.conftest import eventually  # noqa: E402
from tests.realtime.conftest import AUTH, LiveApi, mouth_openings  # noqa: E402

MIC_RATE = 48000


@pytest.fixture(autouse=True)
def loopback_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sessions' workers accept the peer's loopback candidates (it runs on this machine)."""
    monkeypatch.setenv("REALTIME_ALLOW_PRIVATE_CANDIDATES", "1")


BURST = (2.0, 3.2)  # seconds after the client's microphone starts: a loud voiced burst; silence around it


class MicTrack(MediaStreamTrack):
    """The client's microphone: silence, a voiced burst (a 150 Hz buzz, amplitude-modulated at 4 Hz), silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._sent = 0
        self.started: float | None = None

    async def recv(self):
        import av

        samples = MIC_RATE // 50
        if self.started is None:
            self.started = time.time()
        delay = self.started + self._sent / MIC_RATE - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (self._sent + np.arange(samples)) / MIC_RATE
        voiced = (t >= BURST[0]) & (t < BURST[1])
        wave = 0.5 * np.sign(np.sin(2 * np.pi * 150 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) * voiced
        frame = av.AudioFrame.from_ndarray((wave * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = MIC_RATE, self._sent, fractions.Fraction(1, MIC_RATE)
        self._sent += samples
        return frame


def test_a_live_session_streams_25_fps_idles_and_lip_syncs_the_microphone(live_server: LiveApi) -> None:
    live_api = live_server
    mic = MicTrack()

    async def scenario() -> tuple[LiveClient, float]:
        async with httpx.AsyncClient(base_url=live_api.url, headers=AUTH, timeout=30) as client:
            peer = LiveClient(client, mic=mic)
            await peer.start("live-user", image=live_api.portrait_uri)
            await asyncio.sleep(BURST[1] + 2.0)
            await peer.close()
            return peer, mic.started or 0.0

    peer, mic_started = asyncio.run(scenario())
    fps = steady_fps([at for at, _, _ in peer.received.raw])  # after the first second (ICE, first keyframe)
    assert 22.5 <= fps <= 27.5, fps
    assert peer.received.audio_frames > 100

    received = peer.received.frames
    images = [image for _, _, image in received]
    assert min(float(image.mean()) for image in images) > 30  # never black
    idle = [image for at, _, image in received if mic_started + 0.3 < at < mic_started + BURST[0] - 0.2]
    motion = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(idle, idle[12:], strict=False)]
    assert max(motion) > 0.3, max(motion)  # the idle avatar moves (sway, blinks): not a frozen frame

    analyzer = load_face_analyzer()
    times = np.array([at - mic_started for at, _, _ in received])
    before = (times > 0.3) & (times < BURST[0] - 0.2)
    during = (times > BURST[0] + 0.1) & (times < BURST[1] + 0.5)
    after = times > BURST[1] + 1.2
    sample = np.nonzero(before | during | after)[0][::2]
    openings = np.full(len(images), np.nan)
    openings[sample] = mouth_openings([images[i] for i in sample], analyzer)
    rest = np.nanmedian(openings[before])  # the portrait's own lips (slightly parted)
    assert np.nanmax(openings[during]) > rest + 0.04, (rest, openings[during])  # opens with the sent voice
    assert abs(np.nanmedian(openings[after]) - rest) < 0.015  # and closes again after it


def session_of(api: LiveApi, session_id: str) -> dict:
    return httpx.get(f"{api.url}/v1/sessions/{session_id}", headers=AUTH, timeout=30).json()


def test_say_interrupts_the_peer_going_away_ends_the_session_and_a_killed_worker_ends_its_own(
    live_api: LiveApi,
) -> None:
    """On the local backend: each session in a worker process of its own, dialing out to the API."""
    pool = live_api.app.state.context.service.backend_for_task("live_session").session_pool

    async def scenario() -> dict:
        async with httpx.AsyncClient(base_url=live_api.url, headers=AUTH, timeout=60) as client:
            peer = LiveClient(client, keep_frames=False)
            await peer.start("live-user", image=live_api.portrait_uri)
            await peer.wait_frames(25, 30.0)
            first = await peer.say("This sentence is long enough to be cut off by the next one before it ends.")
            await asyncio.sleep(0.8)
            second = await peer.say("Hello there.")
            await asyncio.sleep(1.0)
            refused = await client.post(f"/v1/sessions/{peer.session_id}/say", json={"text": "  "})
            await peer.close(delete=False)  # the peer goes away without a DELETE: the worker ends the session
            gone = await asyncio.to_thread(
                eventually, lambda: (s := session_of(live_api, peer.session_id))["status"] == "ended" and s, 30
            )
            after = await client.post(f"/v1/sessions/{peer.session_id}/say", json={"text": "Anyone?"})

            victim = LiveClient(client, keep_frames=False)
            await victim.start("live-user", image=live_api.portrait_uri)
            await victim.wait_frames(10, 30.0)
            busy = set(pool.pids())
            for pid in busy:  # the session processes: the first session's is idle again, the victim's runs
                os.kill(pid, signal.SIGKILL)
            killed = await asyncio.to_thread(
                eventually, lambda: (s := session_of(live_api, victim.session_id))["status"] == "ended" and s, 30
            )
            await victim.close(delete=False)
            again = LiveClient(client, keep_frames=False)  # fresh processes take the next session
            await again.start("live-user", image=live_api.portrait_uri)
            fresh = await again.wait_frames(10, 30.0)
            await again.close()
            return {
                "first": first,
                "second": second,
                "refused": refused,
                "gone": gone,
                "after": after,
                "killed": killed,
                "fresh": fresh,
                "new_pids": set(pool.pids()) - busy,
            }

    seen = asyncio.run(scenario())
    assert seen["first"].status_code == 200 and seen["first"].json()["duration_s"] > 3.0
    assert seen["second"].status_code == 200 and 0.3 < seen["second"].json()["duration_s"] < 2.0
    assert seen["refused"].status_code == 422
    assert seen["gone"]["end_reason"] in ("closed", "peer_failed") and seen["gone"]["stats"]["utterances"] == 2
    assert seen["after"].status_code == 409 and seen["after"].json()["error_code"] == "session_ended"
    assert (seen["killed"]["end_reason"], seen["killed"]["error_code"]) == ("error", "worker_crashed")
    assert seen["fresh"] and seen["new_pids"]


@pytest.fixture
def tight_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_MAX_SESSIONS", "1")
    monkeypatch.setenv("REALTIME_IDLE_TIMEOUT_S", "1.5")
    monkeypatch.setenv("TENANT_TOKENS", '{"tenant-token": ["tenant-user"]}')


def test_session_limit_idle_timeout_and_foreign_files(tight_limits: None, live_api: LiveApi) -> None:
    async def scenario() -> tuple[int, dict, dict, int, dict]:
        tenant = {"Authorization": "Bearer tenant-token"}
        async with httpx.AsyncClient(base_url=live_api.url, headers=tenant, timeout=30) as client:
            offer = {"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"}
            body = {"user_id": "live-user", "image": live_api.portrait_uri, "offer": offer}
            other = await client.post("/v1/sessions", json=body)
            assert other.status_code == 403 and other.json()["error_code"] == "forbidden"  # another tenant's user
        async with httpx.AsyncClient(base_url=live_api.url, headers=AUTH, timeout=60) as client:
            first, second, third = (LiveClient(client, keep_frames=False) for _ in range(3))
            await first.start("live-user", image=live_api.portrait_uri)
            try:
                await second.start("live-user", image=live_api.portrait_uri)
                refused = (0, {})
            except httpx.HTTPStatusError as exc:
                refused = (exc.response.status_code, exc.response.json())
            idle = await asyncio.to_thread(  # no input: the idle timeout ends the first session
                eventually, lambda: (s := session_of(live_api, first.session_id))["status"] == "ended" and s, 20
            )
            await third.start("live-user", image=live_api.portrait_uri)  # room again
            foreign = await client.post(
                "/v1/sessions", json={"user_id": "u", "image": "file:///etc/hosts", "offer": offer}
            )
            for peer in (first, second, third):
                await peer.close()
            return *refused, idle, foreign.status_code, foreign.json()

    status, body, idle, foreign_status, foreign = asyncio.run(scenario())
    assert status == 503 and body["error_code"] == "too_many_sessions"
    assert idle["end_reason"] == "idle"
    assert foreign_status == 422 and foreign["error_code"] == "url_refused"
