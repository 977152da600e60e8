"""Live sessions over WebRTC (aiortc): an avatar that talks as text or audio arrives, and idles in between.

One ``LiveSession`` per peer: a video track (25 fps, encoded by aiortc as VP8 or H.264, whichever the
peer's offer prefers) and an audio track (16 kHz mono frames of 20 ms; aiortc encodes Opus), both
reading one ``SpeechTimeline`` on one clock, so the mouth and the sound stay together. Input:
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
import fractions
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import numpy as np

from engines.lipsync import FPS, SAMPLE_RATE, AvatarFrames, pingpong_index
from engines.lipsync.viseme_warp import VisemeWarpEngine, avatar_key, mouth_track
from realtime.timeline import SAMPLES_PER_FRAME, LiveLipSync, SpeechTimeline, speech_block

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90000
AUDIO_FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms
SPEECH_LEAD_FRAMES = 2  # new speech starts this many frames after "now", so its first frame is rendered in time
# A late frame is sent at once and the next ones catch up (a short CPU stall costs no frames); only this far
# behind are frames skipped, so the picture never lags the sound by more than about half a second.
MAX_BEHIND_FRAMES = 12
IDLE_CHECK_S = 1.0


class LiveRenderer:
    """Frame ``n`` of a session: avatar frame ``pingpong(n)`` with the timeline's mouth shape at ``n``."""

    def __init__(self, avatar: AvatarFrames, engine: VisemeWarpEngine, timeline: SpeechTimeline) -> None:
        self.avatar, self.engine, self.timeline = avatar, engine, timeline
        self._key = avatar_key(avatar, avatar.landmarks)
        height, width = avatar.frames[0].shape[:2]
        self.size = (width - width % 2, height - height % 2)  # the video encoders want even sizes

    def frame(self, n: int) -> np.ndarray:
        index = pingpong_index(n, len(self.avatar))
        image = self.engine.render_frame(self.avatar, index, self.timeline.shape(n), self._key)
        return image[: self.size[1], : self.size[0]]


class SessionClock:
    """Session time zero: set by whichever track asks first, so both count from the same instant."""

    def __init__(self) -> None:
        self._start: float | None = None

    @property
    def start(self) -> float:
        if self._start is None:
            self._start = time.time()
        return self._start

    def frame_now(self) -> int:
        return int((time.time() - self.start) * FPS) if self._start is not None else 0


async def _sleep_until(at: float) -> None:
    delay = at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _tracks() -> tuple[type, type]:
    """The two track classes (aiortc is imported only when a session is made)."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class SessionTrack(MediaStreamTrack):
        """A track of one session; ``_next`` is the index of the next frame it sends."""

        def __init__(self, session: LiveSession) -> None:
            super().__init__()
            self._session = session
            self._next = 0

        def _live_clock(self) -> SessionClock:
            if self.readyState != "live":
                raise MediaStreamError
            return self._session.clock

    class AvatarVideoTrack(SessionTrack):
        kind = "video"

        async def recv(self) -> av.VideoFrame:
            clock = self._live_clock()
            n = self._next
            if clock.frame_now() - n > MAX_BEHIND_FRAMES:  # far behind (a stall): skip ahead rather than drift
                n = clock.frame_now() - 1
            await _sleep_until(clock.start + n / FPS)
            image = await self._session.run(self._session.renderer.frame, n)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            frame.pts, frame.time_base = n * (VIDEO_CLOCK_RATE // FPS), fractions.Fraction(1, VIDEO_CLOCK_RATE)
            self._next = n + 1
            self._session.frames_sent += 1
            return frame

    class AvatarAudioTrack(SessionTrack):
        kind = "audio"

        async def recv(self) -> av.AudioFrame:
            clock = self._live_clock()
            start = self._next * AUDIO_FRAME_SAMPLES
            await _sleep_until(clock.start + start / SAMPLE_RATE)
            samples = self._session.timeline.audio(start, AUDIO_FRAME_SAMPLES)
            pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
            self._next += 1
            self._session.timeline.forget_before(min(clock.frame_now(), start // SAMPLES_PER_FRAME) - 1)
            return frame

    return AvatarVideoTrack, AvatarAudioTrack


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

        video_track, audio_track = _tracks()
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
