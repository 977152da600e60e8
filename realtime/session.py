"""Live sessions over WebRTC (aiortc): an avatar that talks as text or audio arrives, and idles in between.

One ``LiveSession`` per peer: its media (``realtime.media``: a 25 fps video track and an Opus audio
track reading one ``SpeechTimeline`` on one clock) and its inputs. Input:
``say`` (text -> eSpeak -> viseme mouth shapes; also sent as a data-channel message) and the peer's
own audio track (lip-sync from the audio alone, 80 ms at a time). Between utterances the avatar's
frames keep playing (a portrait's built-in blinks and sway, a recorded avatar's own motion) with the
mouth closed: never a frozen or black frame.

Rendering runs on the session's own single worker thread (the CPU engine, ``viseme_warp``, one frame
at a time), so a slow session never blocks the event loop or another session. A session ends on
``close`` (DELETE), when the peer's connection fails or closes, or after ``idle_timeout_s`` without
input; closing stops its tracks and tasks, shuts its thread down and releases its avatar.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import numpy as np

from engines.lipsync import FPS, SAMPLE_RATE, AvatarFrames
from engines.lipsync.viseme_warp import VisemeWarpEngine, mouth_track
from realtime.media import LiveRenderer, SessionClock, session_tracks
from realtime.timeline import LiveLipSync, SpeechTimeline, speech_block

log = logging.getLogger(__name__)

SPEECH_LEAD_FRAMES = 2  # new speech starts this many frames after "now", so its first frame is rendered in time
IDLE_CHECK_S = 1.0


class LiveSession:
    """One peer connection and its avatar. Made by ``SessionManager.create``."""

    def __init__(
        self,
        session_id: str,
        avatar: AvatarFrames,
        holds: ExitStack,
        engine: VisemeWarpEngine,
        executor: ThreadPoolExecutor,
        speak: Any,
        idle_timeout_s: float,
    ) -> None:
        self.id = session_id
        self.user_id: str | None = None  # whose session it is (the API checks a token may act for them)
        self.idle_timeout_s = idle_timeout_s
        self.timeline = SpeechTimeline()
        self.renderer = LiveRenderer(avatar, engine, self.timeline)
        self.clock = SessionClock()
        self.frames_sent = 0
        self.last_input = time.monotonic()
        self._holds, self._executor, self._speak = holds, executor, speak
        self._lipsync = LiveLipSync(self.timeline)
        self._tasks: set[asyncio.Task] = set()
        self._closed = asyncio.Event()
        self.pc: Any = None

    async def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the session's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def answer(self, offer: dict[str, str]) -> dict[str, str]:
        """Accept the peer's SDP offer: add the avatar's tracks, wire its inputs; returns the SDP answer."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        video_track, audio_track = session_tracks()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                self.pc.addTrack(video_track(self))
            elif transceiver.kind == "audio":
                self.pc.addTrack(audio_track(self))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._spawn(self._watch_idle())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    async def say(self, text: str, voice: Any) -> float:
        """Speak ``text`` now, cutting off whatever was being said; returns its duration in seconds."""
        self.last_input = time.monotonic()
        audio = await self.run(self._speak, text, voice)
        shapes = await self.run(mouth_track, audio)
        start = self.clock.frame_now() + SPEECH_LEAD_FRAMES
        self.timeline.interrupt_with(speech_block(start, audio.samples, shapes))
        return len(shapes) / FPS

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self) -> None:
        """Stop everything the session started (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        current = asyncio.current_task()
        for task in [t for t in self._tasks if t is not current]:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._holds.close()
        log.info("session %s closed after %d frames", self.id, self.frames_sent)

    # ---- inputs ----------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._spawn(self._listen(track))

    async def _listen(self, track: Any) -> None:
        """The peer's audio -> 16 kHz mono -> 80 ms chunks of lip-sync, played back in sync with the mouth."""
        import av
        from aiortc.mediastreams import MediaStreamError

        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1)
                if np.abs(samples).max(initial=0.0) > 0.01:
                    self.last_input = time.monotonic()
                self._lipsync.feed(samples, self.clock.frame_now() + SPEECH_LEAD_FRAMES)

    def _on_datachannel(self, channel: Any) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            self._spawn(self._said_on(channel, message))

    async def _said_on(self, channel: Any, message: Any) -> None:
        """A data-channel message: plain text, or JSON ``{"text", "voice"?}``; answered with ``{"said_s"}``."""
        from handlers.schemas import Voice

        try:
            body = json.loads(message) if isinstance(message, str) and message.lstrip().startswith("{") else {}
            text = body.get("text", message if isinstance(message, str) else "")
            seconds = await self.say(str(text), Voice.model_validate(body.get("voice") or {}))
            channel.send(json.dumps({"said_s": round(seconds, 3)}))
        except Exception as exc:  # a bad message must not end the session
            log.info("session %s: data-channel message refused: %s", self.id, exc)
            channel.send(json.dumps({"error": str(exc)[:200], "error_code": getattr(exc, "code", "invalid_input")}))

    async def _on_state(self) -> None:
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            log.info("session %s: peer connection %s", self.id, self.pc.connectionState)
            await self.close()

    async def _watch_idle(self) -> None:
        while not self.closed:
            await asyncio.sleep(IDLE_CHECK_S)
            if time.monotonic() - self.last_input > self.idle_timeout_s and not self.closed:
                log.info("session %s: no input for %.0f s, closing", self.id, self.idle_timeout_s)
                await self.close()


def new_session_id() -> str:
    return uuid.uuid4().hex


__all__ = ["LiveRenderer", "LiveSession", "SessionClock", "new_session_id"]
