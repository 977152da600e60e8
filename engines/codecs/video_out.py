"""MP4 output: H.264 (yuv420p) video plus AAC mono audio, encoded in a background thread.

Frames are converted to yuv420p on the caller's thread (OpenCV) and go through a bounded queue to
an encoder thread (PyAV releases the GIL while x264 works), so the caller's rendering and the
encoding overlap and memory stays flat however long the video is.
Audio is encoded alongside the video, a frame's worth at a time, with explicit pts in samples
(time base 1/sample_rate): without them the AAC encoder's priming delays the sound (media.md).

yuv420p needs even dimensions: an odd width or height is cropped by one pixel (the last column or
row), never padded, so no invented pixels appear. The file is written under a temporary name in
the destination folder and renamed when complete; on error nothing is left behind.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from engines.constants import SAMPLE_RATE
from engines.errors import EngineError

logger = logging.getLogger(__name__)

QUEUE_FRAMES = 32  # frames buffered between the renderer and the encoder thread
AUDIO_BIT_RATE = 64000
AUDIO_FRAME_SAMPLES = 1024  # AAC frame size
PUT_POLL_S = 0.5  # how often a blocked producer checks that the encoder is still alive
_END = object()


@dataclass(frozen=True)
class EncodeStats:
    path: Path
    num_frames: int
    width: int
    height: int
    fps: float
    encode_s: float  # time the encoder thread spent encoding and muxing (overlaps rendering)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def even_size(width: int, height: int) -> tuple[int, int]:
    """The yuv420p frame size: odd dimensions lose their last column / row."""
    return width - width % 2, height - height % 2


class Mp4Writer:
    """Context manager: ``with Mp4Writer(path, w, h, audio=samples) as out: out.write(frame)``.

    Frames are BGR uint8 arrays of the size given (cropped to even size). ``audio`` is float32 mono
    at ``sample_rate``; the whole track is muxed, however many frames are written.
    """

    audio_lead_samples = 0  # audio encoded ahead of the video (lets the muxer write a fragment at once)

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: int = 25,
        crf: int = 18,
        preset: str = "veryfast",
        audio: np.ndarray | None = None,
        sample_rate: int = SAMPLE_RATE,
        threads: int = 0,
    ) -> None:
        if width < 2 or height < 2:
            raise EngineError("invalid_video_size", f"video size {width}x{height} is too small")
        self.path = Path(path)
        self.source_size = (width, height)
        self.width, self.height = even_size(width, height)
        self.fps = fps
        self._crf, self._preset, self._threads = crf, preset, threads
        self._audio = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
        self._sample_rate = sample_rate
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.{threading.get_ident()}.part.mp4")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_FRAMES)
        self._thread: threading.Thread | None = None
        self._container: Any = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._frames_written = 0
        self._frames_encoded = 0
        self._audio_sent = 0
        self._encode_s = 0.0
        self.stats: EncodeStats | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Mp4Writer:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        self._container = self._open_container()
        try:
            self._video = self._add_video_stream()
            self._audio_stream = self._add_audio_stream() if self._audio is not None else None
        except Exception:
            self._discard()
            raise
        self._thread = threading.Thread(target=self._encode_loop, name="mp4-encoder", daemon=True)
        self._thread.start()

    def _open_container(self) -> Any:
        import av

        return av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})

    def _video_options(self) -> dict[str, str]:
        return {"crf": str(self._crf), "preset": self._preset}

    def _add_video_stream(self) -> Any:
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.time_base = Fraction(1, self.fps)
        stream.options = self._video_options()
        stream.codec_context.thread_count = self._threads
        return stream

    def _add_audio_stream(self) -> Any:
        stream = self._container.add_stream("aac", rate=self._sample_rate, layout="mono")
        stream.bit_rate = AUDIO_BIT_RATE
        stream.time_base = Fraction(1, self._sample_rate)
        return stream

    def write(self, frame: np.ndarray) -> None:
        """Queue one BGR frame; blocks while the encoder is QUEUE_FRAMES behind."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[:2] != (self.source_size[1], self.source_size[0]):
            raise EngineError(
                "invalid_frame", f"frame of shape {frame.shape} does not match the video's {self.source_size} BGR size"
            )
        planes = to_i420(frame, self.width, self.height)
        while True:
            self._raise_encoder_error()
            try:
                self._queue.put(planes, timeout=PUT_POLL_S)
                break
            except queue.Full:
                continue
        self._frames_written += 1

    def close(self) -> EncodeStats:
        """Finish encoding (flush, remaining audio), close the file and move it into place (idempotent)."""
        if self.stats is not None:
            return self.stats
        self._finish_thread()
        try:
            self._raise_encoder_error()
            if self._frames_encoded == 0:
                raise EngineError("empty_video", "no frames were written")
            self._container.close()
            self._container = None
            self._finish_file()
        except BaseException:
            self._discard()
            raise
        self.stats = EncodeStats(self.path, self._frames_encoded, self.width, self.height, self.fps, self._encode_s)
        logger.debug("wrote %s: %d frames, encode %.2f s", self.path.name, self._frames_encoded, self._encode_s)
        return self.stats

    def _finish_file(self) -> None:
        """Move the complete temporary file into place."""
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Stop the encoder and remove the partial file."""
        self._stop.set()
        self._finish_thread()
        self._discard()

    def _finish_thread(self) -> None:
        if self._thread is None:
            return
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=PUT_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._thread = None

    def _discard(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; its trailer does not matter
                logger.debug("closing a discarded mp4 failed", exc_info=True)
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def _raise_encoder_error(self) -> None:
        if self._error is not None:
            raise EngineError("encode_failed", f"video encoding failed: {self._error}") from self._error

    # ---- encoder thread ----------------------------------------------------------------------

    def _encode_loop(self) -> None:
        try:
            while True:
                frame = self._queue.get()
                if frame is _END or self._stop.is_set():
                    break
                started = time.perf_counter()
                self._encode_video(frame)
                audio_end = (self._frames_encoded * self._sample_rate) // self.fps + self.audio_lead_samples
                self._encode_audio(until=audio_end)
                self._encode_s += time.perf_counter() - started
            if not self._stop.is_set():
                started = time.perf_counter()
                self._flush()
                self._encode_s += time.perf_counter() - started
        except BaseException as exc:  # handed to the producer thread, which raises it
            self._error = exc
            self._drain()

    def _drain(self) -> None:
        """Empty the queue so a producer blocked on put() wakes up and sees the error."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _encode_video(self, planes: np.ndarray) -> None:
        import av

        video_frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        video_frame.pts = self._frames_encoded
        if self._starts_segment(self._frames_encoded):
            video_frame.pict_type = av.video.frame.PictureType.I
        self._container.mux(self._video.encode(video_frame))
        self._frames_encoded += 1

    def _starts_segment(self, index: int) -> bool:
        """Whether frame ``index`` must be a keyframe (segmented output); the encoder chooses otherwise."""
        return False

    def _encode_audio(self, until: int | None) -> None:
        """Encode audio frames that start before sample ``until`` (None: all that is left, then flush)."""
        import av

        if self._audio_stream is None or self._audio is None:
            return
        end = len(self._audio) if until is None else min(until, len(self._audio))
        while self._audio_sent < end and (until is None or self._audio_sent + AUDIO_FRAME_SAMPLES <= end):
            chunk = self._audio[self._audio_sent : self._audio_sent + AUDIO_FRAME_SAMPLES]
            audio_frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            audio_frame.sample_rate = self._sample_rate
            audio_frame.pts = self._audio_sent
            audio_frame.time_base = Fraction(1, self._sample_rate)
            self._container.mux(self._audio_stream.encode(audio_frame))
            self._audio_sent += len(chunk)
        if until is None:
            self._container.mux(self._audio_stream.encode(None))

    def _flush(self) -> None:
        self._container.mux(self._video.encode(None))
        self._encode_audio(until=None)


def to_i420(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """BGR -> yuv420p planes (BT.601, limited range: what swscale would make), cropped to ``width`` x ``height``.

    OpenCV's SIMD conversion is several times faster than swscale's bgr24 path and runs on the
    caller's thread, leaving the encoder thread to x264.
    """
    if frame.shape[1] != width or frame.shape[0] != height:
        frame = frame[:height, :width]
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2YUV_I420)


def encode_mp4(
    path: Path,
    frames: Iterable[np.ndarray],
    audio: np.ndarray | None = None,
    *,
    sample_rate: int = SAMPLE_RATE,
    fps: int = 25,
    crf: int = 18,
    preset: str = "veryfast",
) -> EncodeStats:
    """Encode BGR frames (streamed; the first one sets the size) and optional mono audio into ``path``."""
    stream = iter(frames)
    first = next(stream, None)
    if first is None:
        raise EngineError("empty_video", "no frames were given")
    height, width = first.shape[:2]
    with Mp4Writer(path, width, height, fps=fps, crf=crf, preset=preset, audio=audio, sample_rate=sample_rate) as out:
        out.write(first)
        for frame in stream:
            out.write(frame)
    return out.close()


__all__ = ["EncodeStats", "Mp4Writer", "encode_mp4", "even_size"]
