"""Live sessions over WebRTC (aiortc): an avatar that talks as text or audio arrives, and idles in between.

One ``LiveSession`` per peer: its media (``realtime.media``: a 25 fps video track and an Opus audio
track reading one ``SpeechTimeline`` on one clock) and its inputs. Input: ``say`` (text -> eSpeak, a
piece at a time, with the text's mouth shapes; from the control channel or a data-channel message), ``play``
(a speech file from the store, mouth shapes from its sound; from the control channel) and the peer's own audio
track (80 ms at a time). The timeline's speech goes into the session's lip-sync stream of the engine the request
named (``engines.lipsync.stream``), rendered by the worker's scheduler ahead of playback. Between utterances,
and in silence, the avatar's own frames keep playing (a portrait's built-in blinks and sway, a recorded
avatar's own motion): never a frozen or black frame.

Frames are picked up on the session's own worker thread and speech is made on a second one, so a slow
session never blocks the event loop or another session, and speech never delays a frame. A session ends (``end``,
once, with a reason) when asked (``stopped``), when the peer's connection closes (``closed``) or fails
(``peer_failed``), after ``idle_timeout_s`` without input (``idle``), or on an error; ending stops its
tracks and tasks, shuts its threads down and releases its avatar.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import numpy as np

from engines.errors import EngineError
from engines.lipsync import FPS, SAMPLE_RATE, AvatarFrames
from engines.lipsync.scheduler import StreamScheduler
from engines.lipsync.stream import StreamingEngine
from engines.lipsync.viseme_warp import mouth_track
from engines.quality.report import QualityMeter
from handlers.errors import TaskError
from handlers.schemas import IceServer, LiveSessionStats, Voice
from realtime.inputs import MessageRate, error_reply, say_message, speech_pieces
from realtime.limits import RealtimeSettings
from realtime.media import LiveRenderer, SessionClock, render_scheduler, session_tracks
from realtime.sdp import InvalidSdp
from realtime.timeline import LiveLipSync, SpeechTimeline, speech_block

log = logging.getLogger(__name__)

IDLE_CHECK_S = 1.0
NOTHING_TO_SAY = frozenset({"empty_text", "empty_speech"})  # a piece of punctuation only: skipped


class SpeechInterrupted(TaskError):
    def __init__(self) -> None:
        super().__init__("interrupted", "The speech was interrupted before it was all scheduled.")


class LiveSession:
    """One peer connection and its avatar."""

    def __init__(
        self,
        session_id: str,
        avatar: AvatarFrames,
        holds: ExitStack,
        engine: StreamingEngine,
        executor: ThreadPoolExecutor,
        speak: Any,
        limits: RealtimeSettings,
        idle_timeout_s: float,
        engine_name: str = "viseme_warp",
        read_audio: Any = None,
        scheduler: StreamScheduler | None = None,
        meter: QualityMeter | None = None,
    ) -> None:
        self.id = session_id
        self.user_id: str | None = None  # whose session it is (the API checks a token may act for them)
        self.limits, self.idle_timeout_s, self.engine_name = limits, idle_timeout_s, engine_name
        self.timeline = SpeechTimeline()
        self.clock = SessionClock()
        self.renderer = LiveRenderer(avatar, engine, self.timeline, self.clock, scheduler or render_scheduler(), meter)
        self.frames_sent = 0
        self.utterances = 0
        self.started = self.last_input = time.monotonic()
        self.end_reason: str | None = None
        self.end_error: TaskError | None = None
        self._holds, self._executor, self._speak, self._read_audio = holds, executor, speak, read_audio
        self._speech = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"live-{session_id[:8]}-speech")
        self._lipsync = LiveLipSync(self.timeline)
        self._messages = MessageRate(limits.messages_per_s, limits.message_burst)
        self._generation = 0  # bumped by each say / interrupt: older speech still being made is dropped
        self._scheduling = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._closed = asyncio.Event()
        self._closing: asyncio.Future | None = None
        self._tracks: list[Any] = []
        self.pc: Any = None

    async def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the session's own (render) thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def answer(self, offer_sdp: str, ice_servers: list[IceServer] | None = None) -> dict[str, str]:
        """Accept the peer's (checked) SDP offer: add the avatar's tracks to its first video and audio
        sections, wire its inputs; returns the SDP answer. InvalidSdp when aiortc cannot use the offer."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
        from aiortc.rtcconfiguration import RTCIceTransportPolicy

        servers = [RTCIceServer(**server.model_dump(exclude_none=True)) for server in ice_servers or []]
        policy = RTCIceTransportPolicy(self.limits.ice_transport_policy)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            video_track, audio_track = session_tracks()
            for kind, track in (("video", video_track), ("audio", audio_track)):
                if any(t.kind == kind for t in self.pc.getTransceivers()):
                    self._tracks.append(track(self))
                    self.pc.addTrack(self._tracks[-1])  # aiortc puts it on the first transceiver of its kind
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except offer_refusals() as exc:  # what aiortc raises for an offer it cannot answer (no common codec ...)
            raise InvalidSdp(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        self._spawn(self._watch_idle())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    # ---- speech ----------------------------------------------------------------------------

    async def say(self, text: str, voice: Voice, queued: bool = False) -> float:
        """Speak ``text`` now, cutting off what was being said (``queued``: after what is scheduled); returns its
        duration in seconds. SpeechInterrupted when a newer say (not queued) or an interrupt came before all of
        it was scheduled."""
        generation, seconds, spoken = self._claim(queued), 0.0, 0
        async with self._scheduling:  # one utterance scheduled at a time: a queued one after the whole of the last
            for piece in speech_pieces(text, self.limits.speech_piece_chars):
                self._check(generation)
                made = await asyncio.get_running_loop().run_in_executor(
                    self._speech, self._speech_piece, generation, piece, voice
                )
                self._check(generation)
                if made is None:
                    continue  # a piece with nothing to pronounce (punctuation only)
                self._schedule(*made, cut=spoken == 0 and not queued)
                seconds += len(made[1]) / FPS
                spoken += 1
        if spoken == 0:
            raise TaskError("empty_speech", "`text` has nothing the speech synthesizer can pronounce.")
        self.utterances += 1
        return seconds

    def _claim(self, queued: bool) -> int:
        """The generation a new utterance belongs to: a new one (superseding what plays) unless it is queued."""
        self.last_input = time.monotonic()
        if not queued:
            self._generation += 1
        return self._generation

    def _check(self, generation: int) -> None:
        if generation != self._generation or self.closed:
            raise SpeechInterrupted()

    def _schedule(self, samples: Any, shapes: Any, cut: bool) -> None:
        start = self.clock.frame_now() + self.renderer.lead_frames
        if cut:
            self.timeline.interrupt_with(speech_block(start, samples, shapes))
        else:
            self.timeline.append(samples, shapes, start)

    def _speech_piece(self, generation: int, text: str, voice: Voice) -> tuple[Any, Any] | None:
        """One piece's audio and mouth shapes, on the speech thread (skipped when already superseded)."""
        if generation != self._generation:
            return None
        try:
            audio = self._speak(text, voice)
        except (EngineError, TaskError) as exc:
            if exc.code in NOTHING_TO_SAY:
                return None
            raise
        return audio.samples, mouth_track(audio)

    async def play(self, uri: str, queued: bool = False) -> float:
        """Play the speech file at ``uri`` now (lip-sync from its sound), cutting off what was being said
        (``queued``: after what is scheduled); returns its duration in seconds. SpeechInterrupted when a newer
        say (not queued) or an interrupt came meanwhile."""
        if self._read_audio is None:
            raise TaskError("audio_unsupported", "This worker does not play audio files in live sessions.")
        generation = self._claim(queued)
        async with self._scheduling:
            self._check(generation)
            samples, shapes = await asyncio.get_running_loop().run_in_executor(self._speech, self._audio_piece, uri)
            self._check(generation)
            self._schedule(samples, shapes, cut=not queued)
        self.utterances += 1
        return len(shapes) / FPS

    def _audio_piece(self, uri: str) -> tuple[Any, Any]:
        """A speech file's samples (16 kHz) and mouth shapes from its sound, on the speech thread."""
        audio = self._read_audio(uri)
        return audio.samples, mouth_track(audio)

    def interrupt(self) -> None:
        """Stop speaking at the next frame (speech still being made is dropped)."""
        self.last_input = time.monotonic()
        self._generation += 1
        self.timeline.cut_from(self.clock.frame_now() + 1)

    # ---- end -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def stats(self) -> LiveSessionStats:
        seconds = time.monotonic() - self.started
        due = self.clock.frame_now() if self.frames_sent else 0
        return LiveSessionStats(
            seconds=round(seconds, 3),
            frames_sent=self.frames_sent,
            frames_dropped=max(0, due - self.frames_sent),
            frames_repeated=self.renderer.frames_repeated,
            utterances=self.utterances,
            engine=self.engine_name,
            quality=self.renderer.quality(),
        )

    async def wait_closed(self) -> str:
        """The end reason, once the session has ended and everything it started is stopped."""
        await self._closed.wait()
        if self._closing is not None:
            await asyncio.shield(self._closing)
        return self.end_reason or "closed"

    async def end(self, reason: str, error: TaskError | None = None) -> None:
        """End the session (the first reason given is kept) and stop everything it started."""
        if self.end_reason is None:
            self.end_reason, self.end_error = reason, error
        await self.close()

    async def close(self) -> None:
        """Stop everything the session started (idempotent). The shutdown runs as a task of its own: cancelling
        the caller (a control loop the end came from) does not leave it half done."""
        if self._closing is None:
            self._closed.set()
            self.end_reason = self.end_reason or "closed"
            self._generation += 1
            self._closing = asyncio.ensure_future(self._shutdown(asyncio.current_task()))
        await asyncio.shield(self._closing)

    async def _shutdown(self, caller: asyncio.Task | None) -> None:
        self.renderer.close()
        for task in [t for t in self._tasks if t is not caller]:
            task.cancel()
        for track in self._tracks:
            track.stop()  # its next recv ends the sender's loop instead of asking a stopped thread for a frame
        try:
            if self.pc is not None:
                await self.pc.close()
        finally:
            for executor in (self._executor, self._speech):
                executor.shutdown(wait=False, cancel_futures=True)
            await asyncio.get_running_loop().run_in_executor(None, self._release)
        log.info("session %s ended (%s) after %d frames", self.id, self.end_reason, self.frames_sent)

    def _release(self) -> None:
        """Wait for the session's threads to finish their current step, then release the avatar."""
        for executor in (self._executor, self._speech):
            executor.shutdown(wait=True)
        self._holds.close()

    # ---- inputs ----------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._spawn(self._listen(track))

    async def _listen(self, track: Any) -> None:
        """The peer's audio -> 16 kHz mono -> 80 ms chunks of lip-sync, played back in sync with the mouth;
        audio arriving faster than it plays is dropped beyond ``max_mic_lead_s`` ahead."""
        import av
        from aiortc.mediastreams import MediaStreamError

        max_lead = int(self.limits.max_mic_lead_s * FPS)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = self.clock.frame_now()
            if self.timeline.speaking_until() - now > max_lead:
                continue
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1)
                if np.abs(samples).max(initial=0.0) > 0.01:
                    self.last_input = time.monotonic()
                self._lipsync.feed(samples, now + self.renderer.mic_lead_frames)

    def _on_datachannel(self, channel: Any) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            if self.closed:
                return
            if not self._messages.take():
                self._reply(channel, error_reply(TaskError("rate_limited", "Too many messages: wait a moment.")))
                return
            try:
                request = say_message(message, self.limits)
            except TaskError as exc:
                self._reply(channel, error_reply(exc))
                return
            self._spawn(self._say_on(channel, request.text, request.voice))

    async def _say_on(self, channel: Any, text: str, voice: Voice) -> None:
        """A data-channel say, answered on the channel with ``{"said_s"}`` or ``{"error", "error_code"}``."""
        import json

        try:
            seconds = await self.say(text, voice)
            self._reply(channel, json.dumps({"said_s": round(seconds, 3)}))
        except (TaskError, EngineError) as exc:  # a bad message must not end the session
            log.info("session %s: data-channel message refused (%s)", self.id, exc.code)
            self._reply(channel, error_reply(TaskError(exc.code, exc.message)))

    def _reply(self, channel: Any, text: str) -> None:
        """Answer on the channel, unless the peer is not reading its answers (bounded unsent bytes)."""
        if channel.readyState == "open" and channel.bufferedAmount < self.limits.max_reply_buffer_bytes:
            channel.send(text)

    async def _on_state(self) -> None:
        if self.pc is None:
            return
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            log.info("session %s: peer connection %s", self.id, state)
            await self.end("peer_failed" if state == "failed" else "closed")

    async def _watch_idle(self) -> None:
        while not self.closed:
            await asyncio.sleep(IDLE_CHECK_S)
            if self.renderer.error is not None and not self.closed:
                error = self.renderer.error
                code = getattr(error, "code", "render_failed")
                message = getattr(error, "message", f"Rendering failed ({type(error).__name__}); see the worker logs.")
                await self.end("error", TaskError(code, message))
                return
            if time.monotonic() - self.last_input > self.idle_timeout_s and not self.closed:
                log.info("session %s: no input for %.0f s, ending", self.id, self.idle_timeout_s)
                await self.end("idle")


def offer_refusals() -> tuple[type[Exception], ...]:
    """What aiortc raises on an offer it cannot use (its parser's errors and its own exception types)."""
    from aiortc import exceptions

    aiortc_errors = (exceptions.InvalidAccessError, exceptions.InvalidStateError, exceptions.OperationError)
    return (ValueError, KeyError, IndexError, TypeError, AttributeError, *aiortc_errors)


def new_session_id() -> str:
    return uuid.uuid4().hex


__all__ = ["LiveRenderer", "LiveSession", "SessionClock", "SpeechInterrupted", "new_session_id"]
