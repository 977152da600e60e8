"""A Python peer for live sessions (aiortc): opens a session on an avatarctl API and receives its tracks.

What the tests and ``bench/realtime.py`` drive the server with; also a starting point for a backend
that wants the avatar's frames itself. ``mic`` (an aiortc audio track) is sent as the microphone.
"""

from __future__ import annotations

import asyncio
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

    @property
    def frames(self) -> list[tuple[float, int, np.ndarray]]:
        """(arrival time, pts, BGR image) per video frame, converted when asked (not while receiving)."""
        return [(arrival, pts, frame.to_ndarray(format="bgr24")) for arrival, pts, frame in self.raw]


class LiveClient:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        mic: Any = None,
        keep_frames: bool = True,
        on_frame: FrameCallback | None = None,
        on_audio: AudioCallback | None = None,
    ) -> None:
        from aiortc import RTCPeerConnection

        self.http = client
        self.received = Received()
        self.session_id: str | None = None
        self._keep, self._on_frame, self._on_audio = keep_frames, on_frame, on_audio
        self._tasks: list[asyncio.Task] = []
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        if mic is not None:
            self.pc.addTrack(mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._collect(track))))

    async def start(self, user_id: str, *, image: str | None = None, avatar_id: str | None = None) -> dict:
        """Offer, POST /v1/sessions, apply the answer; returns the API's answer (``session_id`` ...)."""
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        source = {"image": image} if image is not None else {"avatar_id": avatar_id}
        response = await self.http.post("/v1/sessions", json={"user_id": user_id, **source, "offer": offer})
        response.raise_for_status()
        body = response.json()
        self.session_id = body["session_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(**body["answer"]))
        return body

    async def say(self, text: str) -> httpx.Response:
        return await self.http.post(f"/v1/sessions/{self.session_id}/say", json={"text": text})

    async def close(self, delete: bool = True) -> None:
        """End the session (DELETE unless ``delete`` is False: the peer just goes away) and the connection."""
        if delete and self.session_id is not None:
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
                if self._keep:
                    self.received.raw.append((arrival, frame.pts, frame))
                if self._on_frame is not None:
                    self._on_frame(arrival, frame.pts, frame.to_ndarray(format="bgr24"))
        except MediaStreamError:
            return


def steady_fps(arrivals: list[float], skip_s: float = 1.0) -> float:
    """Frames per second received after the first ``skip_s`` (connection set-up, first keyframe)."""
    times = np.asarray(arrivals)
    steady = times[times > times[0] + skip_s]
    return (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
