"""Live sessions through the API under uvicorn, driven by an aiortc client: the video's frame rate, idle motion,
the mouth following the client's microphone and `/say`, and teardown when the peer goes away."""

from __future__ import annotations

import asyncio
import fractions
import threading
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

pytest.importorskip("aiortc", reason="live sessions need the `realtime` extra (aiortc)")

from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402

from engines.face import load_face_analyzer  # noqa: E402
from tests.realtime.conftest import AUTH, LiveApi, mouth_openings  # noqa: E402

MIC_RATE = 48000
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


@dataclass
class Received:
    frames: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (arrival, pts, BGR)
    audio_frames: int = 0


async def collect(track, received: Received) -> None:
    try:
        while True:
            frame = await track.recv()
            if track.kind == "video":
                received.frames.append((time.time(), frame.pts, frame.to_ndarray(format="bgr24")))
            else:
                received.audio_frames += 1
    except MediaStreamError:
        return


async def open_session(client: httpx.AsyncClient, api: LiveApi, pc: RTCPeerConnection, received: Received) -> dict:
    tasks = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(collect(track, received))))
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
    answer = await client.post("/v1/sessions", json={"user_id": "live-user", "image": api.portrait_uri, "offer": offer})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    await pc.setRemoteDescription(RTCSessionDescription(**body["answer"]))
    return body


def test_a_live_session_streams_25_fps_idles_and_lip_syncs_the_microphone(live_api: LiveApi) -> None:
    received = Received()
    mic = MicTrack()

    async def scenario() -> tuple[dict, float]:
        async with httpx.AsyncClient(base_url=live_api.url, headers=AUTH, timeout=30) as client:
            pc = RTCPeerConnection()
            pc.addTransceiver("video", direction="recvonly")
            pc.addTrack(mic)
            body = await open_session(client, live_api, pc, received)
            await asyncio.sleep(BURST[1] + 2.0)
            mic_started = mic.started or 0.0
            assert (await client.delete(f"/v1/sessions/{body['session_id']}")).status_code == 204
            await pc.close()
            return body, mic_started

    body, mic_started = asyncio.run(scenario())
    arrivals = np.array([at for at, _, _ in received.frames])
    steady = arrivals[arrivals > arrivals[0] + 1.0]  # after the first second (ICE, first keyframe)
    fps = (len(steady) - 1) / (steady[-1] - steady[0])
    assert 22.5 <= fps <= 27.5, fps
    assert received.audio_frames > 100

    images = [image for _, _, image in received.frames]
    assert min(float(image.mean()) for image in images) > 30  # never black
    idle = [image for at, _, image in received.frames if mic_started + 0.3 < at < mic_started + BURST[0] - 0.2]
    motion = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(idle, idle[12:], strict=False)]
    assert max(motion) > 0.3, max(motion)  # the idle avatar moves (sway, blinks): not a frozen frame

    analyzer = load_face_analyzer()
    times = np.array([at - mic_started for at, _, _ in received.frames])
    before = (times > 0.3) & (times < BURST[0] - 0.2)
    during = (times > BURST[0] + 0.1) & (times < BURST[1] + 0.5)
    after = times > BURST[1] + 1.2
    sample = np.nonzero(before | during | after)[0][::2]
    openings = np.full(len(images), np.nan)
    openings[sample] = mouth_openings([images[i] for i in sample], analyzer)
    rest = np.nanmedian(openings[before])  # the portrait's own lips (slightly parted)
    assert np.nanmax(openings[during]) > rest + 0.04, (rest, openings[during])  # opens with the sent voice
    assert abs(np.nanmedian(openings[after]) - rest) < 0.015  # and closes again after it


def test_say_interrupts_and_the_session_ends_cleanly(live_api: LiveApi) -> None:
    received = Received()
    sessions = live_api.app.state.sessions

    async def scenario() -> list:
        async with httpx.AsyncClient(base_url=live_api.url, headers=AUTH, timeout=30) as client:
            pc = RTCPeerConnection()
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            body = await open_session(client, live_api, pc, received)
            session = f"/v1/sessions/{body['session_id']}"
            await asyncio.sleep(1.5)
            long_text = "This sentence is long enough to be cut off by the next one before it ends."
            first = await client.post(f"{session}/say", json={"text": long_text})
            await asyncio.sleep(0.8)
            second = await client.post(f"{session}/say", json={"text": "Hello there."})
            await asyncio.sleep(2.5)
            refused = await client.post(f"{session}/say", json={"text": ""})
            await pc.close()  # the peer goes away without a DELETE
            for _ in range(100):
                await asyncio.sleep(0.1)
                if all(live.closed for live in sessions.sessions.values()):
                    break
            gone = await client.post(f"{session}/say", json={"text": "Anyone?"})
            return [first, second, refused, gone]

    first, second, refused, gone = asyncio.run(scenario())
    assert first.status_code == 200 and first.json()["duration_s"] > 3.0
    assert second.status_code == 200 and 0.3 < second.json()["duration_s"] < 2.0
    assert refused.status_code == 422
    assert gone.status_code == 404 and gone.json()["error_code"] == "session_not_found"
    assert [t.name for t in threading.enumerate() if t.name.startswith("live-")] == []  # its render thread ended
