"""A live session's media: the renderer of frame ``n``, the session clock, and the two WebRTC tracks.

The video track (25 fps, encoded by aiortc as VP8 or H.264, whichever the peer's offer prefers) and the
audio track (16 kHz mono frames of 20 ms; aiortc encodes Opus) both read one ``SpeechTimeline`` on one
``SessionClock``, so the mouth and the sound stay together. Frames are rendered on the session's own
worker thread (``LiveSession.run``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import numpy as np

from engines.lipsync import FPS, SAMPLE_RATE, AvatarFrames, pingpong_index
from engines.lipsync.viseme_warp import VisemeWarpEngine, avatar_key
from realtime.timeline import SAMPLES_PER_FRAME, SpeechTimeline

VIDEO_CLOCK_RATE = 90000
AUDIO_FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms
# A late frame is sent at once and the next ones catch up (a short CPU stall costs no frames); only this far
# behind are frames skipped, so the picture never lags the sound by more than about half a second.
MAX_BEHIND_FRAMES = 12


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


def session_tracks() -> tuple[type, type]:
    """The two track classes (aiortc is imported only when a session is made)."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class SessionTrack(MediaStreamTrack):
        """A track of one session; ``_next`` is the index of the next frame it sends."""

        def __init__(self, session: Any) -> None:  # a realtime.session.LiveSession
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


__all__ = ["AUDIO_FRAME_SAMPLES", "LiveRenderer", "SessionClock", "session_tracks"]
