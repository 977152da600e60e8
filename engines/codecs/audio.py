"""Audio in and out: decode common formats to mono float32 at a chosen rate; write 16-bit PCM WAV.

Decoding streams through PyAV (demux, decode, resample frame by frame into one growing buffer),
so memory is the decoded result plus one frame, and an over-long file is refused as soon as the
decoded length passes the limit instead of after decoding all of it.
"""

from __future__ import annotations

import io
import logging
import math
import os
import wave
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from engines.constants import SAMPLE_RATE
from engines.errors import EngineError

if TYPE_CHECKING:
    import av

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = "wav, mp3, m4a/aac, ogg (vorbis or opus), flac"
# mp3/aac pad their last frame; an exactly-at-the-limit file may decode a few ms longer.
LENGTH_SLACK_S = 0.05
INITIAL_BUFFER_S = 10.0  # first allocation when the container does not say how long it is


class _SampleBuffer:
    """A float32 array that grows by doubling, so appends cost amortised O(1) and no chunk lists pile up."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(1, capacity), dtype=np.float32)
        self.size = 0

    def append(self, chunk: np.ndarray) -> None:
        needed = self.size + len(chunk)
        if needed > len(self._data):
            grown = np.empty(max(needed, 2 * len(self._data)), dtype=np.float32)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : needed] = chunk
        self.size = needed

    def result(self) -> np.ndarray:
        self._data.resize(self.size, refcheck=False)  # shrink in place: no second copy of the audio
        return self._data


def _frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """Mono samples of a frame: planar arrays are (channels, samples), packed ones (1, samples * channels)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if data.ndim == 2 and frame.format.is_planar:
        data = data.mean(axis=0) if channels > 1 else data[0]
    elif channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data.reshape(-1).astype(np.float32, copy=False)


def _estimated_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The container's idea of the duration (exact for wav/flac, an estimate for some mp3s), if it has one."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _too_long(estimate: float | None, max_seconds: float) -> EngineError:
    if estimate is not None and estimate > max_seconds:
        return EngineError("audio_too_long", f"audio lasts {estimate:.1f} s; the limit is {max_seconds:g} s")
    return EngineError("audio_too_long", f"audio lasts more than the {max_seconds:g} s limit")


def _unsupported(detail: str) -> EngineError:
    return EngineError("unsupported_audio", f"cannot decode the audio ({detail}); supported: {SUPPORTED_FORMATS}")


def _open(source: Path | BinaryIO) -> av.container.InputContainer:
    import av

    try:
        return av.open(source if not isinstance(source, Path) else str(source), mode="r")
    except FileNotFoundError:
        raise
    except (av.FFmpegError, ValueError) as exc:
        raise _unsupported(f"not a media file: {exc}") from exc


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, sample_rate: int, max_seconds: float | None
) -> np.ndarray:
    import av

    estimate = _estimated_seconds(container, stream)
    limit = None if max_seconds is None else math.ceil((max_seconds + LENGTH_SLACK_S) * sample_rate)
    capacity = math.ceil((estimate or INITIAL_BUFFER_S) * sample_rate) + sample_rate // 10
    buffer = _SampleBuffer(capacity if limit is None else min(capacity, limit + 1))
    # Mono and stereo are averaged here (never louder than the input); FFmpeg's own stereo fold-down adds
    # both channels at -3 dB and can exceed 1.0. Wider layouts use FFmpeg's matrix (centre and surrounds).
    layout = "mono" if stream.codec_context.channels > 2 else None
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
    try:
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                buffer.append(_frame_samples(out))
            if limit is not None and buffer.size > limit:
                raise _too_long(estimate, max_seconds)
        for out in resampler.resample(None):
            buffer.append(_frame_samples(out))
    except (av.FFmpegError, ValueError) as exc:
        raise _unsupported(f"{stream.codec_context.name} stream failed to decode: {exc}") from exc
    if limit is not None and buffer.size > limit:
        raise _too_long(estimate, max_seconds)
    return buffer.result()


def decode_audio(path: Path | BinaryIO, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """The first audio stream of ``path`` (a file, or a binary file object) as mono float32 at ``sample_rate``.

    Raises EngineError ``unsupported_audio`` (not media, no audio stream, undecodable) or ``audio_too_long``
    (longer than ``max_seconds``). Channels are averaged into mono.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    with _open(path) as container:
        if not container.streams.audio:
            raise _unsupported(f"the {container.format.name} file has no audio stream")
        stream = container.streams.audio[0]
        samples = _decode_stream(container, stream, sample_rate, max_seconds)
    logger.debug("decoded %s: %.2f s at %d Hz", stream.codec_context.name, len(samples) / sample_rate, sample_rate)
    return samples


def has_audio(path: Path) -> bool:
    """Whether a media file has an audio stream (a video may have none); ``unsupported_audio`` if not media."""
    with _open(path) as container:
        return bool(container.streams.audio)


def decode_audio_bytes(data: bytes, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """decode_audio for audio held in memory (an HTTP response body)."""
    if not data:
        raise _unsupported("the audio is empty (0 bytes)")
    return decode_audio(io.BytesIO(data), sample_rate=sample_rate, max_seconds=max_seconds)


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes of float samples in [-1, 1] (clipped), shaped (n,) or (n, channels)."""
    audio = np.asarray(samples, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"samples must be (n,) or (n, channels), got shape {audio.shape}")
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(int(sample_rate))
        wav.writeframes(pcm.tobytes())
    return out.getvalue()


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write ``samples`` as 16-bit PCM WAV; the file appears complete or not at all (temp name, then rename)."""
    data = encode_wav(samples, sample_rate)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
