"""Mp4Writer: A/V sync checked with a test signal, even-size cropping, fast start, nothing left on failure."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from engines.codecs.video_out import Mp4Writer, encode_mp4
from engines.errors import EngineError

SR = 16000


def flash_and_click(seconds: float, at_s: float, size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Grey frames with one white frame at ``at_s``, and silence with a click at ``at_s``."""
    width, height = size
    frames = [np.full((height, width, 3), 40, np.uint8) for _ in range(round(seconds * 25))]
    frames[round(at_s * 25)][:] = 230
    audio = np.zeros(int(seconds * SR), np.float32)
    audio[int(at_s * SR) : int(at_s * SR) + 80] = 0.9
    return frames, audio


def top_level_boxes(path: Path) -> list[str]:
    data, boxes, offset = path.read_bytes(), [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        boxes.append(data[offset + 4 : offset + 8].decode("ascii"))
        offset += size if size > 0 else len(data)
    return boxes


def test_sound_and_picture_stay_in_sync(tmp_path: Path) -> None:
    frames, audio = flash_and_click(2.5, 1.0, (160, 120))
    stats = encode_mp4(tmp_path / "sync.mp4", iter(frames), audio, sample_rate=SR)
    assert (stats.num_frames, stats.width, stats.height) == (62, 160, 120)
    with av.open(str(tmp_path / "sync.mp4")) as container:
        audio_stream = container.streams.audio[0]
        assert audio_stream.codec_context.layout.name == "mono" and audio_stream.codec_context.sample_rate == SR
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio_stream)])
    click_s = np.argmax(np.abs(decoded) > 0.3) / SR
    assert click_s == pytest.approx(1.0, abs=0.002)  # no AAC priming delay
    with av.open(str(tmp_path / "sync.mp4")) as container:
        flash = [f.time for f in container.decode(video=0) if f.to_ndarray(format="gray").mean() > 150]
        video_s = float(container.streams.video[0].duration * container.streams.video[0].time_base)
        audio_s = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
    assert flash == [pytest.approx(1.0)]
    assert abs(video_s - audio_s) <= 1 / 25
    boxes = top_level_boxes(tmp_path / "sync.mp4")
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart


def test_odd_sizes_lose_one_pixel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = np.repeat(np.repeat(rng.integers(0, 255, (31, 41, 3), dtype=np.uint8), 4, 0), 4, 1)[:123, :161]
    with Mp4Writer(tmp_path / "odd.mp4", 161, 123, crf=0) as writer:
        for _ in range(3):
            writer.write(frame)
    assert (writer.stats.width, writer.stats.height) == (160, 122)
    with av.open(str(tmp_path / "odd.mp4")) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="bgr24")
    assert decoded.shape == (122, 160, 3)
    assert np.abs(decoded.astype(int) - frame[:122, :160]).mean() < 6  # the top-left crop, not a rescale


def test_a_failed_encode_leaves_nothing(tmp_path: Path) -> None:
    frames, audio = flash_and_click(1.0, 0.5, (64, 48))
    with pytest.raises(EngineError) as err, Mp4Writer(tmp_path / "bad.mp4", 64, 48, audio=audio) as writer:
        writer.write(frames[0])
        writer.write(np.zeros((48, 65, 3), np.uint8))
    assert err.value.code == "invalid_frame"
    with pytest.raises(RuntimeError), Mp4Writer(tmp_path / "bad.mp4", 64, 48, audio=audio) as writer:
        for frame in frames:
            writer.write(frame)
        raise RuntimeError("the renderer failed")
    with pytest.raises(EngineError) as err, Mp4Writer(tmp_path / "empty.mp4", 64, 48) as writer:
        pass
    assert err.value.code == "empty_video"
    assert list(tmp_path.iterdir()) == []
