"""What a live avatar says, on the session's frame clock: speech blocks (16 kHz audio + a mouth shape per frame).

Frame ``n`` of the session is shown at ``n / 25`` s after it started, and audio sample ``s`` (16 kHz) is
played at ``s / 16000`` s; a block starting at frame ``f`` covers samples from ``f * 640`` on. The
video track asks :meth:`SpeechTimeline.shape` for each frame and the audio track
:meth:`SpeechTimeline.audio` for each 20 ms, so sound and mouth come from one schedule and stay
in sync. Nothing scheduled means idle: a closed mouth and silence.

Two ways in, as in seed 003: a whole utterance (text to speech) replaces whatever is still to come
(an interruption cuts the current speech at the next frame, with a 5 ms fade so it does not click),
and live audio arrives in 80 ms chunks (two frames each) appended after what is already queued.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from engines.lipsync import FPS, SAMPLE_RATE
from engines.lipsync.visemes import mouth_track_from_audio

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
CHUNK_FRAMES = 2
CHUNK_SAMPLES = CHUNK_FRAMES * SAMPLES_PER_FRAME  # 1280 = 80 ms, seed 003's chunk
MIC_CONTEXT_S = 2.0  # loudness of a live chunk is judged against this much recent audio
CUT_FADE_SAMPLES = SAMPLE_RATE // 200  # 5 ms
CLOSED = np.zeros(3, dtype=np.float32)


@dataclass
class SpeechBlock:
    start_frame: int
    samples: np.ndarray  # float32 at 16 kHz, exactly len(shapes) * 640 samples
    shapes: np.ndarray  # (frames, 3) open / spread / round

    @property
    def end_frame(self) -> int:
        return self.start_frame + len(self.shapes)

    def cut(self, frame: int) -> SpeechBlock:
        """This block ending before ``frame``, its last 5 ms faded out."""
        frames = max(0, frame - self.start_frame)
        samples = self.samples[: frames * SAMPLES_PER_FRAME].copy()
        fade = min(CUT_FADE_SAMPLES, len(samples))
        if fade:
            samples[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        return SpeechBlock(self.start_frame, samples, self.shapes[:frames])


def speech_block(start_frame: int, samples: np.ndarray, shapes: np.ndarray) -> SpeechBlock:
    """A block whose audio is padded (or cut) to whole frames."""
    audio = np.zeros(len(shapes) * SAMPLES_PER_FRAME, dtype=np.float32)
    n = min(len(audio), len(samples))
    audio[:n] = samples[:n]
    return SpeechBlock(start_frame, audio, np.asarray(shapes, dtype=np.float32))


class SpeechTimeline:
    """Thread-safe schedule of speech blocks; the session's tracks read it, its inputs write it."""

    def __init__(self) -> None:
        self._blocks: list[SpeechBlock] = []
        self._lock = threading.Lock()
        self._cut_at: int | None = None  # the earliest frame changed by a cut since ``take_cut``

    def interrupt_with(self, block: SpeechBlock) -> None:
        """Play ``block`` from its start frame: what was scheduled from then on is dropped (or cut)."""
        with self._lock:
            self._cut(block.start_frame)
            self._blocks.append(block)

    def cut_from(self, frame: int) -> None:
        """Silence from ``frame`` on: what was scheduled from then is dropped (a block playing is cut, faded)."""
        with self._lock:
            self._cut(frame)

    def _cut(self, frame: int) -> None:
        self._cut_at = frame if self._cut_at is None else min(self._cut_at, frame)
        kept = [b if b.end_frame <= frame else b.cut(frame) for b in self._blocks]
        self._blocks = [b for b in kept if b.start_frame < frame and len(b.shapes)]

    def append(self, samples: np.ndarray, shapes: np.ndarray, earliest_frame: int) -> SpeechBlock:
        """Queue speech after what is scheduled, and not before ``earliest_frame``."""
        with self._lock:
            start = max([earliest_frame, *(b.end_frame for b in self._blocks)])
            block = speech_block(start, samples, shapes)
            self._blocks.append(block)
            return block

    def shape(self, frame: int) -> np.ndarray:
        """The mouth at ``frame``: the scheduled shape, else closed."""
        with self._lock:
            for block in self._blocks:
                if block.start_frame <= frame < block.end_frame:
                    return block.shapes[frame - block.start_frame]
        return CLOSED

    def audio(self, start_sample: int, count: int) -> np.ndarray:
        """16 kHz samples ``[start_sample, start_sample + count)``: the scheduled speech, silence elsewhere."""
        out = np.zeros(count, dtype=np.float32)
        end = start_sample + count
        with self._lock:
            for block in self._blocks:
                first = block.start_frame * SAMPLES_PER_FRAME
                lo, hi = max(start_sample, first), min(end, first + len(block.samples))
                if lo < hi:
                    out[lo - start_sample : hi - start_sample] = block.samples[lo - first : hi - first]
        return out

    def shapes(self, start: int, count: int) -> np.ndarray:
        """(count, 3) mouth shapes of frames ``[start, start + count)``: the scheduled ones, closed elsewhere."""
        out = np.zeros((count, 3), dtype=np.float32)
        with self._lock:
            for block in self._blocks:
                lo, hi = max(start, block.start_frame), min(start + count, block.end_frame)
                if lo < hi:
                    out[lo - start : hi - start] = block.shapes[lo - block.start_frame : hi - block.start_frame]
        return out

    def first_scheduled(self, frame: int) -> int | None:
        """The first frame at or after ``frame`` with speech scheduled (None: nothing is)."""
        with self._lock:
            starts = [max(frame, b.start_frame) for b in self._blocks if b.end_frame > frame]
        return min(starts, default=None)

    def take_cut(self) -> int | None:
        """The earliest frame whose speech changed by a cut (an interruption, a new utterance) since the last
        call; None when nothing was cut."""
        with self._lock:
            frame, self._cut_at = self._cut_at, None
            return frame

    def forget_before(self, frame: int) -> None:
        """Drop blocks that ended before ``frame`` (both tracks are past them)."""
        with self._lock:
            self._blocks = [b for b in self._blocks if b.end_frame > frame]

    def speaking_until(self) -> int:
        """The frame after the last scheduled speech (0 when nothing is scheduled)."""
        with self._lock:
            return max((b.end_frame for b in self._blocks), default=0)


class LiveLipSync:
    """Live audio (16 kHz) -> speech blocks of 80 ms (two frames), each scheduled as soon as it is complete."""

    def __init__(self, timeline: SpeechTimeline) -> None:
        self._timeline = timeline
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(0, dtype=np.float32)
        self._context_samples = int(MIC_CONTEXT_S * SAMPLE_RATE)

    def feed(self, samples: np.ndarray, earliest_frame: int) -> int:
        """Add audio; returns how many 80 ms chunks were scheduled."""
        self._pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        chunks = 0
        while len(self._pending) >= CHUNK_SAMPLES:
            chunk, self._pending = self._pending[:CHUNK_SAMPLES], self._pending[CHUNK_SAMPLES:]
            self._context = np.concatenate([self._context, chunk])[-self._context_samples :]
            frames = len(self._context) // SAMPLES_PER_FRAME
            shapes = mouth_track_from_audio(self._context[-frames * SAMPLES_PER_FRAME :], frames)[-CHUNK_FRAMES:]
            self._timeline.append(chunk, shapes, earliest_frame)
            chunks += 1
        return chunks
