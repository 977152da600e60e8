"""The one streaming interface of every lip-sync engine: audio in (16 kHz, any chunk size), frames out at 25 fps.

A ``LipSyncStream`` is opened on an avatar. ``push`` adds speech (with the mouth shapes of its text when they
are known), ``flush`` ends the utterance (what follows is silence), ``reset`` drops everything not yet
rendered (an interruption). Frames come out in order as soon as the engine has the audio it needs around
them (its ``lookahead_frames``) and the silence gate (``engines.lipsync.silence``) has decided them: silent
frames are the avatar's own frames, never sent to the engine; speaking frames are the engine's, cross-faded
with the avatar's at the edges of speech.

An engine supplies only what is its own (``StreamingEngine``): its context and batch size, a per-stream
state made from the avatar, and ``render_frames``: the frames of some output indices given their audio
windows, as one batch (Wav2Lip's mel windows, MuseTalk's whisper windows...; features are computed once per
window and kept in ``AudioWindow.cache``). ``render_frames`` may get frames of several streams at once (the
per-worker scheduler batches sessions of one engine together, ``engines.lipsync.scheduler``).

The offline ``render`` of every engine is ``render_offline``: the whole audio pushed, flushed, then drained
in batches of ``batch_size`` frames, so offline and live share one path. Output frame ``n`` shows avatar
frame ``pingpong_index(n)``; a live session numbers frames on its own clock, so idle and speaking frames
continue one another.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from engines.errors import EngineError
from engines.lipsync import SAMPLE_RATE, AvatarFrames, DrivingAudio, pingpong_index
from engines.lipsync.silence import FADE_FRAMES, SAMPLES_PER_FRAME, SilenceGate, frame_dbfs
from engines.lipsync.visemes import mouth_track_from_audio, mouth_track_from_phonemes

RETAIN_FRAMES = 500  # a live utterance keeps at most this much audio (20 s) ...
KEEP_FRAMES = 75  # ... cut back to this much before the next frame to render (3 s of context)
TRIM_STEP = 25  # cut on whole seconds: every engine's feature grid (mel columns, whisper steps) stays aligned


@dataclass(eq=False)
class AudioWindow:
    """The audio an engine renders from: one utterance's samples from output frame ``first`` on."""

    samples: np.ndarray  # float32 mono 16 kHz; samples[0] is at output frame ``first``
    first: int
    shapes: np.ndarray | None = None  # (num_frames, 3) mouth shapes from the text, when known
    cache: dict[str, Any] = field(default_factory=dict)  # engines' features of this window

    @property
    def num_frames(self) -> int:
        return max(1, -(-len(self.samples) // SAMPLES_PER_FRAME))


@dataclass(eq=False)
class FrameJob:
    """Render output frame ``index`` of a stream on ``avatar`` (engine state ``state``) from ``window``."""

    index: int
    avatar: AvatarFrames
    state: Any
    window: AudioWindow

    @property
    def audio_frame(self) -> int:
        """The frame's position in its window."""
        return self.index - self.window.first

    @property
    def source(self) -> int:
        """The avatar frame it is drawn on."""
        return pingpong_index(self.index, len(self.avatar))


class StreamingEngine(Protocol):
    name: str
    batch_size: int  # frames per model pass
    lookahead_frames: int  # audio frames after frame k that its render of k needs
    audio_span: tuple[int, int]  # audio frames before / after k that drive its mouth at k (the silence gate's)
    uses_mouth_shapes: bool  # renders from text mouth shapes when they are given

    def stream_state(self, avatar: AvatarFrames) -> Any:
        """What a stream on ``avatar`` keeps (checked avatar, prepared material); raises invalid_avatar."""
        ...

    def render_frames(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        """Full BGR frames of ``jobs``, in order: one batch of model work."""
        ...


@dataclass(eq=False)
class Pending:
    """A frame that is ready: its weight of the engine's frame (0: the avatar's own)."""

    index: int
    weight: float
    window: AudioWindow


class Utterance:
    """Speech starting at output frame ``start``: its retained audio, levels and silence decisions."""

    def __init__(self, start: int, span: tuple[int, int]) -> None:
        self.start = start
        self.gate = SilenceGate(span)
        self.levels: list[float] = []  # dBFS per complete audio frame (the last one too once final)
        self.length = 0  # samples pushed
        self.final = False
        self.kept_from = 0  # utterance frame of the first retained sample
        self._chunks: list[np.ndarray] = []
        self._shapes: list[np.ndarray] = []  # per retained frame, when the text's shapes were pushed
        self._tail = np.zeros(0, np.float32)  # samples of the frame not yet complete
        self._window: AudioWindow | None = None

    @property
    def frames(self) -> int:
        return -(-self.length // SAMPLES_PER_FRAME)

    def push(self, samples: np.ndarray, shapes: np.ndarray | None) -> None:
        if shapes is not None:
            self.pad_to_frame()
            frames = len(shapes)
            samples = np.pad(samples, (0, max(0, frames * SAMPLES_PER_FRAME - len(samples))))[
                : frames * SAMPLES_PER_FRAME
            ]
            missing = self.frames - self.kept_from - sum(len(s) for s in self._shapes)
            if missing > 0:
                self._shapes.append(np.zeros((missing, 3), np.float32))
            self._shapes.append(np.asarray(shapes, np.float32))
        self._chunks.append(samples)
        self.length += len(samples)
        self._window = None
        tail = np.concatenate([self._tail, samples])
        whole = len(tail) // SAMPLES_PER_FRAME
        for i in range(whole):
            self.levels.append(frame_dbfs(tail[i * SAMPLES_PER_FRAME : (i + 1) * SAMPLES_PER_FRAME]))
        self._tail = tail[whole * SAMPLES_PER_FRAME :]

    def pad_to_frame(self) -> None:
        if self.length % SAMPLES_PER_FRAME:
            self.push(np.zeros(SAMPLES_PER_FRAME - self.length % SAMPLES_PER_FRAME, np.float32), None)

    def finish(self) -> None:
        if self._tail.size:
            self.levels.append(frame_dbfs(self._tail))
            self._tail = np.zeros(0, np.float32)
        self.final = True

    def window(self) -> AudioWindow:
        if self._window is None:
            samples = np.concatenate(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
            self._chunks = [samples]
            shapes = None
            if self._shapes:
                shapes = np.concatenate(self._shapes)
                frames = -(-len(samples) // SAMPLES_PER_FRAME)
                shapes = np.pad(shapes, ((0, max(0, frames - len(shapes))), (0, 0)))[:frames]
                self._shapes = [shapes]
            self._window = AudioWindow(samples, self.start + self.kept_from, shapes)
        return self._window

    def trim(self, next_frame: int) -> None:
        """Forget audio long before the next frame to render (a long live utterance: the microphone)."""
        if self.length - self.kept_from * SAMPLES_PER_FRAME <= RETAIN_FRAMES * SAMPLES_PER_FRAME:
            return
        cut = (next_frame - self.start - KEEP_FRAMES) // TRIM_STEP * TRIM_STEP
        drop = cut - self.kept_from
        if drop <= 0:
            return
        window = self.window()
        self._chunks = [window.samples[drop * SAMPLES_PER_FRAME :]]
        if window.shapes is not None:
            self._shapes = [window.shapes[drop:]]
        self.kept_from = cut
        self._window = None


class LipSyncStream:
    """One avatar's frames from pushed speech (see the module docstring). Not thread-safe: one caller."""

    def __init__(self, engine: StreamingEngine, avatar: AvatarFrames, first_frame: int = 0) -> None:
        self.engine, self.avatar = engine, avatar
        self.state = engine.stream_state(avatar)
        self.next_frame = first_frame  # the next output frame to come out
        self.horizon: int | None = None  # frames from here on are not rendered yet (a live session's bound)
        self._utterance: Utterance | None = None
        self._closed: list[Utterance] = []  # flushed utterances with frames still to come out

    @property
    def lookahead(self) -> int:
        return max(self.engine.lookahead_frames, self.engine.audio_span[1] + SilenceGate().lookahead)

    @property
    def end(self) -> int:
        """The output frame after the last audio pushed (``next_frame`` when there is none)."""
        last = self._utterance or (self._closed[-1] if self._closed else None)
        return max(self.next_frame, last.start + last.frames) if last else self.next_frame

    @property
    def open(self) -> bool:
        """Whether an utterance takes more audio (not flushed)."""
        return self._utterance is not None

    def push(self, samples: np.ndarray, shapes: np.ndarray | None = None, at_frame: int | None = None) -> None:
        """Speech after what was pushed; ``at_frame`` later than that ends the current utterance and starts a new
        one there (from up to ``FADE_FRAMES`` earlier, silent, where those frames are still to come: a sound at
        its first frame is not met by a fade-in still under way). ``shapes``: (frames, 3) mouth shapes of the
        text, ``samples`` padded or cut to whole frames."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        if at_frame is not None and self._utterance is not None and at_frame > self.end:
            self.flush()
        shapes = shapes if self.engine.uses_mouth_shapes else None
        if self._utterance is None:
            start = self.end if at_frame is None else max(at_frame - FADE_FRAMES, self.end)
            self._utterance = Utterance(start, self.engine.audio_span)
            if at_frame is not None and at_frame > start:  # silence before: the fade-in can be over at the sound
                lead = at_frame - start
                silence = np.zeros((lead, 3), np.float32) if shapes is not None else None
                self._utterance.push(np.zeros(lead * SAMPLES_PER_FRAME, np.float32), silence)
        self._utterance.push(samples, shapes)

    def flush(self) -> None:
        """End the utterance: its last frames render with silence after them."""
        if self._utterance is not None:
            self._utterance.finish()
            self._closed.append(self._utterance)
            self._utterance = None

    def reset(self, at_frame: int | None = None) -> None:
        """Drop all speech not yet rendered (an interruption); frames come out from ``at_frame`` on."""
        self._utterance, self._closed = None, []
        if at_frame is not None:
            self.next_frame = max(self.next_frame, at_frame)

    def skip_to(self, frame: int) -> None:
        """Frames before ``frame`` are late: they will not be rendered (the live clock went past them)."""
        self.next_frame = max(self.next_frame, frame)

    def take(self, limit: int) -> list[Pending]:
        """Up to ``limit`` frames that are ready, in order, from ``next_frame`` on (frames of no utterance are
        not returned: they are idle, the caller shows the avatar)."""
        out: list[Pending] = []
        while len(out) < limit and (self.horizon is None or self.next_frame < self.horizon):
            utterance = self._current()
            if utterance is None:
                break
            k = self.next_frame - utterance.start
            weight = self._weight(utterance, k)
            if weight is None:
                break
            out.append(Pending(self.next_frame, weight, utterance.window()))
            self.next_frame += 1
        if self._utterance is not None:
            self._utterance.trim(self.next_frame)
        return out

    def _current(self) -> Utterance | None:
        """The utterance of ``next_frame`` (skipping to the next one's start across idle frames)."""
        for utterance in [*self._closed, *([self._utterance] if self._utterance else [])]:
            if self.next_frame < utterance.start + utterance.frames or not utterance.final:
                self.next_frame = max(self.next_frame, utterance.start)
                return utterance
            self._closed.remove(utterance)
        return None

    def _weight(self, utterance: Utterance, k: int) -> float | None:
        if k >= utterance.frames:
            return None  # an open utterance: its audio has not come yet
        complete = len(utterance.levels)
        utterance.gate.advance(utterance.levels, complete, utterance.final)
        if not utterance.final and (k + 1 + self.engine.lookahead_frames) * SAMPLES_PER_FRAME > utterance.length:
            return None
        return utterance.gate.weight(k, utterance.frames if utterance.final else None)

    def jobs(self, pending: Sequence[Pending]) -> list[FrameJob]:
        """The engine's work for ``pending``: its speaking frames."""
        return [FrameJob(p.index, self.avatar, self.state, p.window) for p in pending if p.weight > 0]

    def compose(self, pending: Sequence[Pending], rendered: Sequence[np.ndarray]) -> list[tuple[int, np.ndarray]]:
        """(frame, image) of ``pending``, given the engine's frames of its speaking ones (``jobs``' order)."""
        images = iter(rendered)
        out = []
        for p in pending:
            own = self.avatar.frames[pingpong_index(p.index, len(self.avatar))]
            if p.weight <= 0.0:
                out.append((p.index, own))
            elif p.weight >= 1.0:
                out.append((p.index, next(images)))
            else:
                out.append((p.index, cv2.addWeighted(own, 1.0 - p.weight, next(images), p.weight, 0.0)))
        return out

    def step(self, limit: int | None = None) -> list[tuple[int, np.ndarray]]:
        """Render the next ready frames (at most one batch) on this thread."""
        pending = self.take(limit or self.engine.batch_size)
        jobs = self.jobs(pending)
        return self.compose(pending, self.engine.render_frames(jobs) if jobs else [])

    def drain(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame that is ready now, batch by batch (all of them after ``flush``)."""
        while batch := self.step():
            yield from batch


def mouth_shapes(window: AudioWindow) -> np.ndarray:
    """(frames, 3) mouth shapes of a window: the text's when pushed, else from its audio (computed once)."""
    if window.shapes is not None:
        return window.shapes
    found = window.cache.get("mouth_shapes")
    if found is None:
        found = window.cache["mouth_shapes"] = mouth_track_from_audio(window.samples, window.num_frames)
    return found


def text_shapes(engine: StreamingEngine, audio: DrivingAudio) -> np.ndarray | None:
    """Mouth shapes of the speech's text for an engine that renders from them (None without phonemes)."""
    if not engine.uses_mouth_shapes or not audio.phonemes:
        return None
    return mouth_track_from_phonemes(audio.phonemes, audio.samples, audio.num_frames)


def render_offline(engine: StreamingEngine, avatar: AvatarFrames, audio: DrivingAudio) -> Iterator[np.ndarray]:
    """An engine's offline ``render``: ``audio.num_frames`` frames through the stream (push all, flush, drain)."""
    if audio.samples.ndim != 1 or audio.samples.size == 0:
        raise EngineError("invalid_audio", f"Driving audio must be non-empty mono {SAMPLE_RATE} Hz samples.")
    stream = LipSyncStream(engine, avatar)
    stream.push(audio.samples, text_shapes(engine, audio))
    stream.flush()
    for _, image in stream.drain():
        yield image


__all__ = [
    "AudioWindow",
    "FrameJob",
    "LipSyncStream",
    "Pending",
    "mouth_shapes",
    "StreamingEngine",
    "render_offline",
    "text_shapes",
]
