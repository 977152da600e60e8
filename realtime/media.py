"""A live session's media: the renderer of frame ``n``, the session clock, and the two WebRTC tracks.

The video track (25 fps, encoded by aiortc as VP8 or H.264, whichever the peer's offer prefers) and the
audio track (16 kHz mono frames of 20 ms; aiortc encodes Opus) both read one ``SpeechTimeline`` on one
``SessionClock``, so the mouth and the sound stay together. Frames are rendered on the session's own
worker thread (``LiveSession.run``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import threading
import time
from typing import Any

import numpy as np

from engines.lipsync import FPS, SAMPLE_RATE, AvatarFrames, pingpong_index
from engines.lipsync.scheduler import TARGET_PASS_S, StreamScheduler
from engines.lipsync.stream import LipSyncStream, StreamingEngine
from engines.quality.report import QualityMeter
from realtime.timeline import SAMPLES_PER_FRAME, SpeechTimeline

VIDEO_CLOCK_RATE = 90000
AUDIO_FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms
# A late frame is sent at once and the next ones catch up (a short CPU stall costs no frames); only this far
# behind are frames skipped, so the picture never lags the sound by more than about half a second.
MAX_BEHIND_FRAMES = 12
SPEECH_LEAD_FRAMES = 3  # new speech starts this many frames after "now" (a 3-frame fade-in before it), plus a pass
MAX_PASS_S = 0.5  # at most this much of the pass time is waited for (a slower engine drops frames instead)
RENDER_AHEAD_FRAMES = 50  # frames rendered ahead of "now" at most (memory: 2 s of frames)
FLUSH_LEAD_FRAMES = 3  # an utterance with nothing after it is flushed this long before its last frames fall due
REPEAT_FRAMES = 12  # a speaking frame not rendered (in time) repeats the previous one this long, then idles


class LiveRenderer:
    """Frame ``n`` of a session: the lip-sync stream's frame ``n`` when it was rendered in time, else the avatar's
    own frame ``pingpong(n)`` (idle). An engine slower than real time renders the frames it can finish in
    time (the stream skips ahead by the scheduler's pass time) and, inside speech, the frames between repeat
    the last rendered one for up to ``REPEAT_FRAMES``: frames are dropped or repeated, never late. The stream
    is fed from the session's timeline by the worker's scheduler (``refill``, on its thread): scheduled speech
    is pushed as soon as it is known, a cut (interruption, new utterance) resets the stream, and the utterance
    is flushed when its last frames fall due."""

    def __init__(
        self,
        avatar: AvatarFrames,
        engine: StreamingEngine,
        timeline: SpeechTimeline,
        clock: SessionClock,
        scheduler: StreamScheduler,
        meter: QualityMeter | None = None,
    ) -> None:
        self.avatar, self.timeline, self.clock = avatar, timeline, clock
        self.meter = meter  # the session's quality report, fed each frame shown (its budget: 5% of the frame clock)
        self._meter_lock = threading.Lock()  # frames feed it on the render thread, stats read it on the event loop
        self.stream = LipSyncStream(engine, avatar)
        height, width = avatar.frames[0].shape[:2]
        self.size = (width - width % 2, height - height % 2)  # the video encoders want even sizes
        self.frames_late = self.frames_repeated = 0
        self.error: BaseException | None = None
        self._rendered: dict[int, np.ndarray] = {}
        self._last: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._pushed = 0  # the timeline's frames given to the stream
        self._scheduler = scheduler
        self._entry = scheduler.add(self.stream, self._deliver, self._refill, self._failed)

    def close(self) -> None:
        self._scheduler.remove(self._entry)

    @property
    def lead_frames(self) -> int:
        """How far after "now" new speech starts so its first frames are rendered in time: one pass (where another
        session's pass is under way, the first frames are late: skipped, not waited for)."""
        return SPEECH_LEAD_FRAMES + math.ceil(self._pass_s * FPS)

    @property
    def _pass_s(self) -> float:
        return min(MAX_PASS_S, self._scheduler.pass_seconds(self.stream.engine))

    @property
    def mic_lead_frames(self) -> int:
        """The same for live audio, which also waits for the engine's audio look-ahead."""
        return self.lead_frames + self.stream.lookahead

    def frame(self, n: int) -> np.ndarray:
        with self._lock:
            image = self._rendered.pop(n, None)
            for old in [k for k in self._rendered if k < n]:
                del self._rendered[old]
            if image is not None:
                self._last = (n, image)
            elif self._last is not None and n - self._last[0] <= REPEAT_FRAMES and self._speaking(n):
                image = self._last[1]
                self.frames_repeated += 1
        source = pingpong_index(n, len(self.avatar))
        if image is None:
            image = self.avatar.frames[source]
        if self.meter is not None:
            self._measure(n, image, source)
        return image[: self.size[1], : self.size[0]]

    def _measure(self, n: int, image: np.ndarray, source: int) -> None:
        samples = self.timeline.audio(n * SAMPLES_PER_FRAME, SAMPLES_PER_FRAME)
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        with self._meter_lock:
            self.meter.add(image, rms, source, render_s=1.0 / FPS)  # live: the frame clock is the render time

    def quality(self) -> dict[str, Any] | None:
        """The quality report of the frames shown so far (None without a meter)."""
        if self.meter is None:
            return None
        with self._meter_lock:
            return self.meter.report().as_dict()

    def rendered_frames(self) -> list[int]:
        """The frames rendered and not shown yet."""
        with self._lock:
            return sorted(self._rendered)

    def _speaking(self, n: int) -> bool:
        return self.timeline.first_scheduled(n) == n

    # ---- on the scheduler's thread -------------------------------------------------------------

    def _refill(self) -> None:
        now = self.clock.frame_now()
        cut = self.timeline.take_cut()
        if cut is not None and cut < max(self._pushed, self.stream.end):
            self.stream.reset(at_frame=max(cut, now))
            with self._lock:
                for late in [k for k in self._rendered if k >= cut]:
                    del self._rendered[late]
            self._pushed = max(cut, now)
        self.stream.skip_to(now + math.ceil(self._pass_s * FPS))  # frames the next pass cannot finish in time
        self.stream.horizon = now + RENDER_AHEAD_FRAMES
        until = self.timeline.speaking_until()
        start = self.timeline.first_scheduled(max(self._pushed, now))
        if start is not None and until > start:
            count = until - start
            self.stream.push(
                self.timeline.audio(start * SAMPLES_PER_FRAME, count * SAMPLES_PER_FRAME),
                self.timeline.shapes(start, count),
                at_frame=start,
            )
            self._pushed = until
        elif self.stream.open and self.stream.end - self.stream.lookahead <= now + FLUSH_LEAD_FRAMES:
            self.stream.flush()  # nothing more came: the utterance's last frames render with silence after

    def _deliver(self, frames: list[tuple[int, np.ndarray]]) -> None:
        now = self.clock.frame_now()
        with self._lock:
            for n, image in frames:
                if n < now:
                    self.frames_late += 1
                else:
                    self._rendered[n] = image

    def _failed(self, exc: BaseException) -> None:
        self.error = exc  # the session ends itself when it sees this (its next frame)


def render_scheduler() -> StreamScheduler:
    """The worker process's scheduler (started on first use): every live session's engine steps go through it."""
    with _scheduler_lock:
        if not _scheduler:
            _scheduler.append(StreamScheduler(TARGET_PASS_S))
            _scheduler[0].start()
        return _scheduler[0]


_scheduler: list[StreamScheduler] = []
_scheduler_lock = threading.Lock()


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


__all__ = ["AUDIO_FRAME_SAMPLES", "LiveRenderer", "SessionClock", "render_scheduler", "session_tracks"]
