"""decode_audio on real files encoded here with PyAV: timing, rate, pitch, limits and refusals."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engines.codecs.audio import decode_audio, decode_audio_bytes, encode_wav, write_wav
from engines.errors import EngineError

TONE_HZ = 1000.0
ONSET_S = 0.5  # the tone starts here, after silence: checks that encoder priming is not shifting audio
DURATION_S = 1.3
OUT_RATE = 16000


def tone_burst(rate: int, duration_s: float = DURATION_S, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * duration_s))) / rate
    return np.where(t >= ONSET_S, amplitude * np.sin(2 * np.pi * TONE_HZ * t), 0.0).astype(np.float32)


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def encode_audio(
    path: Path, codec: str, samples: np.ndarray, rate: int, layout: str = "mono", options: dict | None = None
) -> Path:
    """Encode float mono samples with PyAV, each frame with explicit pts (time base 1/rate), per media.md."""
    channels = 2 if layout == "stereo" else 1
    formats = {f.name for f in av.codec.Codec(codec, "w").audio_formats}
    sample_format = "fltp" if "fltp" in formats else "s16p"  # flac takes integers only
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout, options=options or {})
        stream.format = sample_format
        stream.time_base = Fraction(1, rate)
        frame_size = stream.codec_context.frame_size or 1024
        for pos in range(0, len(samples), frame_size):
            chunk = np.repeat(samples[None, pos : pos + frame_size], channels, axis=0)
            if sample_format == "s16p":
                chunk = np.round(chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=sample_format, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, pos, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def onset_s(samples: np.ndarray, rate: int, threshold: float = 0.1) -> float:
    return float(np.argmax(np.abs(samples) > threshold) / rate)


# (file name, encoder, source rate, layout, options); the native vorbis encoder is experimental and stereo-only.
FORMATS = [
    ("tone.mp3", "libmp3lame", 44100, "mono", None),
    ("tone.m4a", "aac", 44100, "mono", None),
    ("tone.ogg", "vorbis", 44100, "stereo", {"strict": "experimental"}),
    ("tone.opus", "libopus", 48000, "mono", None),
    ("tone.flac", "flac", 44100, "mono", None),
]


@pytest.mark.parametrize("name, codec, rate, layout, options", FORMATS, ids=[f[0] for f in FORMATS])
def test_decodes_compressed_formats_in_time_and_in_tune(
    tmp_path: Path, name: str, codec: str, rate: int, layout: str, options: dict | None
) -> None:
    if not has_encoder(codec):
        pytest.skip(f"PyAV's FFmpeg has no {codec} encoder")
    path = encode_audio(tmp_path / name, codec, tone_burst(rate), rate, layout, options)
    decoded = decode_audio(path, sample_rate=OUT_RATE)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) / OUT_RATE - DURATION_S) < 0.005
    assert abs(onset_s(decoded, OUT_RATE) - ONSET_S) < 0.003
    assert abs(peak_hz(decoded, OUT_RATE) - TONE_HZ) < 2.0
    assert 0.4 < float(np.abs(decoded).max()) < 1.0


def test_wav_round_trip_and_rate(tmp_path: Path) -> None:
    source = tone_burst(22050)
    path = write_wav(tmp_path / "tone.wav", source, 22050)
    assert not list(tmp_path.glob(".*tmp"))
    same = decode_audio(path, sample_rate=22050)
    assert len(same) == len(source)
    assert np.max(np.abs(same - source)) < 2.0 / 32767
    for rate in (8000, 16000, 48000):
        decoded = decode_audio(path, sample_rate=rate)
        assert abs(len(decoded) - DURATION_S * rate) <= 2
        assert abs(peak_hz(decoded, rate) - TONE_HZ) < 2.0
        assert abs(onset_s(decoded, rate) - ONSET_S) < 0.002


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left = tone_burst(16000, amplitude=0.4)
    stereo = np.stack([left, 0.5 * left], axis=1)  # (samples, 2)
    decoded = decode_audio(write_wav(tmp_path / "stereo.wav", stereo, 16000), sample_rate=16000)
    assert len(decoded) == len(left)
    np.testing.assert_allclose(decoded, 0.75 * left, atol=2e-4)


def test_bytes_in_memory_decode_like_files() -> None:
    source = tone_burst(24000)
    decoded = decode_audio_bytes(encode_wav(source, 24000), sample_rate=24000)
    np.testing.assert_allclose(decoded, source, atol=2.0 / 32767)


def test_too_long_is_refused_with_durations(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "three.wav", tone_burst(16000, duration_s=3.0), 16000)
    with pytest.raises(EngineError) as err:
        decode_audio(path, max_seconds=2.0)
    assert err.value.code == "audio_too_long"
    assert "3.0 s" in err.value.message and "2 s" in err.value.message
    assert len(decode_audio(path, max_seconds=3.0)) == 3 * 16000  # exactly at the limit is fine


class ReadOnlyPipe:
    """A non-seekable source (like a socket): FFmpeg cannot size the file, so there is no duration estimate."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


def test_too_long_is_caught_while_decoding_without_a_duration_estimate(tmp_path: Path) -> None:
    path = encode_audio(tmp_path / "long.aac", "aac", tone_burst(16000, duration_s=4.0), 16000)  # raw ADTS
    with pytest.raises(EngineError) as err:
        decode_audio(ReadOnlyPipe(path.read_bytes()), max_seconds=1.0)
    assert err.value.code == "audio_too_long" and "more than the 1 s limit" in err.value.message
    assert len(decode_audio(ReadOnlyPipe(path.read_bytes()), max_seconds=5.0)) > 4 * 16000


@pytest.mark.parametrize("content", [b"this is not audio at all\n" * 40, b""], ids=["text", "empty"])
def test_non_media_is_unsupported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "speech.txt"
    path.write_bytes(content)
    with pytest.raises(EngineError) as err:
        decode_audio(path)
    assert err.value.code == "unsupported_audio"
    assert "wav, mp3" in err.value.message


def test_video_without_audio_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(EngineError) as err:
        decode_audio(path)
    assert err.value.code == "unsupported_audio"
    assert "no audio stream" in err.value.message
