"""A Python peer for live sessions (aiortc): opens a session and receives its tracks.

What the tests and ``bench/realtime.py`` drive sessions with; also a starting point for a backend that
wants the avatar's frames itself. Two ways to open a session: ``start`` (``POST /v1/sessions`` on an
avatarctl API), or ``offer`` / ``accept`` around whatever carries the SDP (a worker's control channel in
the tests). ``mic`` (an aiortc audio track) is sent as the microphone; ``ice_servers`` with
``relay_only`` forces TURN-relayed candidates (as a client behind a strict firewall has); ``channel``
opens the data channel (``send`` text, replies in ``replies``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

FrameCallback = Callable[[float, int, np.ndarray], None]
AudioCallback = Callable[[float, np.ndarray], None]  # (arrival time, int16 samples of one received audio frame)


@dataclass
class Received:
    raw: list[tuple[float, int, Any]] = field(default_factory=list)  # (arrival time, pts, decoded av.VideoFrame)
    audio_frames: int = 0
    video_frames: int = 0
    first_frame_at: float | None = None

    @property
    def frames(self) -> list[tuple[float, int, np.ndarray]]:
        """(arrival time, pts, BGR image) per video frame, converted when asked (not while receiving)."""
        return [(arrival, pts, frame.to_ndarray(format="bgr24")) for arrival, pts, frame in self.raw]


class LiveClient:
    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        mic: Any = None,
        keep_frames: bool = True,
        on_frame: FrameCallback | None = None,
        on_audio: AudioCallback | None = None,
        ice_servers: list[dict[str, Any]] | None = None,
        relay_only: bool = False,
        channel: bool = False,
    ) -> None:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
        from aiortc.rtcconfiguration import RTCIceTransportPolicy

        self.http = client
        self.received = Received()
        self.session_id: str | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._keep, self._on_frame, self._on_audio = keep_frames, on_frame, on_audio
        self._tasks: list[asyncio.Task] = []
        policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
        servers = [RTCIceServer(**server) for server in ice_servers or []]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))
        self.pc.addTransceiver("video", direction="recvonly")
        if mic is not None:
            self.pc.addTrack(mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.channel = self.pc.createDataChannel("say") if channel else None
        if self.channel is not None:
            self.channel.on("message", lambda message: self.replies.put_nowait(json.loads(message)))
        self.pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._collect(track))))

    async def offer(self) -> dict[str, str]:
        """The offer, its ICE candidates gathered (``{"sdp", "type"}``)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    async def accept(self, answer: dict[str, str]) -> None:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    async def start(self, user_id: str, *, image: str | None = None, avatar_id: str | None = None) -> dict:
        """Offer, POST /v1/sessions, apply the answer; returns the API's answer (``session_id`` ...)."""
        assert self.http is not None, "start() needs the API's HTTP client"
        source = {"image": image} if image is not None else {"avatar_id": avatar_id}
        offer = await self.offer()
        response = await self.http.post("/v1/sessions", json={"user_id": user_id, **source, "offer": offer})
        response.raise_for_status()
        body = response.json()
        self.session_id = body["session_id"]
        await self.accept(body["answer"])
        return body

    async def say(self, text: str) -> httpx.Response:
        assert self.http is not None, "say() needs the API's HTTP client"
        return await self.http.post(f"/v1/sessions/{self.session_id}/say", json={"text": text})

    async def send(self, message: str | bytes, timeout_s: float = 10.0) -> dict[str, Any]:
        """Send a data-channel message and wait for its reply (the channel opens with the connection)."""
        assert self.channel is not None, "open the client with channel=True"
        deadline = time.monotonic() + timeout_s
        while self.channel.readyState != "open" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.channel.send(message)
        return await asyncio.wait_for(self.replies.get(), max(0.1, deadline - time.monotonic()))

    def relayed(self) -> bool:
        """Whether the connection's selected candidate pair goes through a TURN relay (on either side)."""
        for transceiver in self.pc.getTransceivers():
            ice = transceiver.receiver.transport.transport
            pair = ice._connection._nominated.get(1) if ice._connection is not None else None
            if pair is not None:
                return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)
        return False

    async def wait_frames(self, count: int, timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.received.video_frames < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.received.video_frames >= count

    async def close(self, delete: bool = True) -> None:
        """End the session (DELETE unless ``delete`` is False: the peer just goes away) and the connection."""
        if delete and self.session_id is not None and self.http is not None:
            await self.http.delete(f"/v1/sessions/{self.session_id}")
        await self.pc.close()
        for task in self._tasks:
            task.cancel()

    async def _collect(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                if track.kind != "video":
                    self.received.audio_frames += 1
                    if self._on_audio is not None:
                        self._on_audio(time.time(), frame.to_ndarray())
                    continue
                arrival = time.time()
                self.received.video_frames += 1
                self.received.first_frame_at = self.received.first_frame_at or arrival
                if self._keep:
                    self.received.raw.append((arrival, frame.pts, frame))
                if self._on_frame is not None:
                    self._on_frame(arrival, frame.pts, frame.to_ndarray(format="bgr24"))
        except MediaStreamError:
            return


def steady_fps(arrivals: list[float], skip_s: float = 1.0) -> float:
    """Frames per second received after the first ``skip_s`` (connection set-up, first keyframe)."""
    if not arrivals:
        return 0.0
    times = np.asarray(arrivals)
    steady = times[times > times[0] + skip_s]
    return (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
