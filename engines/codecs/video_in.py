"""Video decoding with PyAV: probe, then stream upright BGR frames resampled to a fixed frame rate.

Frame-rate conversion is by timestamp: output frame ``i`` is the source frame on screen at time
``i / fps`` (measured from the first decoded frame), so 30 fps input drops frames, 20 fps input
duplicates them and variable-frame-rate phone video keeps its real timing. The output ends where the
last source frame stops being shown (its pts plus its duration).

Rotation: phones store portrait video as landscape pixels plus a display matrix. PyAV exposes its
angle as ``VideoFrame.rotation`` (degrees counter-clockwise, FFmpeg's ``av_display_rotation_get``);
older files may instead carry a stream ``rotate`` tag (degrees clockwise). Frames are rotated so they
come out as a player would show them; mirroring in the matrix is not applied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.stream import VideoStream

from engines.constants import FPS
from engines.errors import EngineError

log = logging.getLogger(__name__)

# Source timestamps are often rounded (1 ms time bases, 29.97 fps): a frame due up to this much after an
# output instant still counts as shown at that instant, so exact-rate input maps 1:1.
TIMESTAMP_TOLERANCE = Fraction(1, 1000)
# cv2.rotate code that turns the stored pixels upright, by display-matrix angle (counter-clockwise).
_UPRIGHT = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, -90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180}


@dataclass(frozen=True)
class VideoInfo:
    """What a video is, read before decoding it all. ``width``/``height`` are as displayed (after rotation)."""

    width: int
    height: int
    fps: float
    duration_s: float | None
    rotation: int
    codec: str
    container: str
    num_frames: int | None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def normalize_rotation(degrees: float) -> int:
    """Any angle -> the nearest of 0, 90, 180, -90 (counter-clockwise)."""
    quarter = round(degrees / 90.0) % 4
    return (0, 90, 180, -90)[quarter]


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate stored pixels by the display matrix angle (counter-clockwise degrees) so they show upright."""
    code = _UPRIGHT.get(normalize_rotation(rotation))
    return image if code is None else cv2.rotate(image, code)


def probe_video(path: Path) -> VideoInfo:
    """Dimensions, rate, duration, rotation and codec; decodes only the first frame (to read its rotation)."""
    with _open(path) as container:
        stream = _video_stream(container)
        first = _first_frame(container, stream)
        rotation = _rotation(first, stream)
        width, height = stream.codec_context.width or first.width, stream.codec_context.height or first.height
        if abs(rotation) == 90:
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return VideoInfo(
            width=int(width),
            height=int(height),
            fps=float(rate) if rate else 0.0,
            duration_s=_duration_s(container, stream),
            rotation=rotation,
            codec=stream.codec_context.name,
            container=container.format.name,
            num_frames=int(stream.frames) or None,
        )


def read_frames(path: Path, fps: int = FPS, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Upright BGR uint8 frames at ``fps``, streamed (one decoded frame held at a time).

    Raises EngineError ``invalid_video`` when the file cannot be decoded and ``video_too_long`` as soon as
    more than ``max_frames`` output frames would be produced (a guard against durations that lie).
    A repeated frame is yielded as the same read-only array.
    """
    with _open(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        for count, frame in enumerate(_resampled(_timed_frames(container, stream), fps, _Converter(stream))):
            if max_frames is not None and count >= max_frames:
                raise EngineError(
                    "video_too_long", f"Video has more than {max_frames} frames at {fps} fps; it is over the limit"
                )
            yield frame


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), "r")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise EngineError("invalid_video", f"Not a readable video file ({_reason(exc)})") from None


def _video_stream(container: av.container.InputContainer) -> VideoStream:
    if not container.streams.video:
        raise EngineError("invalid_video", "The file has no video stream")
    return container.streams.video[0]


def _first_frame(container: av.container.InputContainer, stream: VideoStream) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as exc:
        raise EngineError("invalid_video", f"The video stream cannot be decoded ({_reason(exc)})") from None
    raise EngineError("invalid_video", "The video stream has no frames")


def _rotation(frame: av.VideoFrame, stream: VideoStream) -> int:
    return normalize_rotation(frame.rotation) if frame.rotation else _tag_rotation(stream)


def _tag_rotation(stream: VideoStream) -> int:
    tag = stream.metadata.get("rotate")
    try:
        return normalize_rotation(-float(tag)) if tag else 0  # the tag is clockwise
    except ValueError:
        log.warning("ignoring unreadable rotate tag %r", tag)
        return 0


def av_offset_ms(path: Path) -> float | None:
    """Audio start minus video start of a muxed file, in ms (0: in sync; > 0: the sound starts late); None
    without both streams. From the streams' start times (edit lists applied), read from the header only."""
    with _open(path) as container:
        starts = {}
        for stream in container.streams:
            if stream.type in ("audio", "video") and stream.type not in starts and stream.time_base:
                starts[stream.type] = float((stream.start_time or 0) * stream.time_base)
    if len(starts) < 2:
        return None
    return 1000.0 * (starts["audio"] - starts["video"])


def _duration_s(container: av.container.InputContainer, stream: VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    rate = stream.average_rate or stream.guessed_rate
    if stream.frames and rate:
        return float(stream.frames / rate)
    return None


def _timed_frames(
    container: av.container.InputContainer, stream: VideoStream
) -> Iterator[tuple[av.VideoFrame, Fraction, Fraction]]:
    """(frame, start time, duration) in seconds from the first frame, exact fractions.

    A frame without a timestamp (raw elementary streams such as ``.h264`` have none at all) comes one
    frame period of the stream's rate after the previous one: frame ``i`` of such a stream starts at ``i / rate``.
    """
    time_base = stream.time_base or Fraction(1, 90000)
    rate = stream.average_rate or stream.guessed_rate or Fraction(FPS)
    nominal = 1 / Fraction(rate)
    origin: int | None = None
    previous: Fraction | None = None
    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                start = Fraction(0) if previous is None else previous + nominal
            else:
                origin = frame.pts if origin is None else origin
                start = Fraction(frame.pts - origin) * time_base
            duration = Fraction(frame.duration) * time_base if frame.duration else nominal
            previous = start
            yield frame, start, duration
    except av.FFmpegError as exc:
        raise EngineError("invalid_video", f"The video stream cannot be decoded ({_reason(exc)})") from None


def _resampled(
    timed: Iterator[tuple[av.VideoFrame, Fraction, Fraction]], fps: int, converter: _Converter
) -> Iterator[np.ndarray]:
    out_index = 0
    held: av.VideoFrame | None = None
    end = Fraction(0)
    for frame, start, duration in timed:
        if held is not None:
            while Fraction(out_index, fps) + TIMESTAMP_TOLERANCE < start:
                yield converter.bgr(held)
                out_index += 1
        held, end = frame, max(end, start + duration)
    if held is not None:
        while Fraction(out_index, fps) + TIMESTAMP_TOLERANCE < end:
            yield converter.bgr(held)
            out_index += 1


class _Converter:
    """Frame -> upright BGR array, converted once per source frame and kept at the first frame's size."""

    def __init__(self, stream: VideoStream) -> None:
        self._stream = stream
        self._frame: av.VideoFrame | None = None
        self._array: np.ndarray | None = None
        self._size: tuple[int, int] | None = None

    def bgr(self, frame: av.VideoFrame) -> np.ndarray:
        if frame is not self._frame:
            image = upright(frame.to_ndarray(format="bgr24"), _rotation(frame, self._stream))
            h, w = image.shape[:2]
            if self._size is None:
                self._size = (w, h)
            elif self._size != (w, h):  # mid-stream resolution change (webm allows it)
                image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
            image = np.ascontiguousarray(image)
            image.flags.writeable = False
            self._frame, self._array = frame, image
        assert self._array is not None
        return self._array


def _reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__
