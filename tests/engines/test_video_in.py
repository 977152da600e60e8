"""Video decode: 25 fps by timestamp, containers and codecs, rotation metadata, bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.codecs.video_in import normalize_rotation, probe_video, read_frames, upright
from engines.errors import EngineError
from tests.media import astronaut_bgr, write_video

SIDE = 64
CELL = 8  # frame k lights cell k of an 8x8 grid: survives H.264 and identifies the source frame


def grid_frames(n: int) -> list[np.ndarray]:
    frames = []
    for k in range(n):
        frame = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
        row, col = divmod(k, SIDE // CELL)
        frame[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = 255
        frames.append(frame)
    return frames


def source_index(frame: np.ndarray) -> int:
    cells = frame.mean(axis=2).reshape(SIDE // CELL, CELL, SIDE // CELL, CELL).mean(axis=(1, 3))
    return int(np.argmax(cells))


def test_30fps_becomes_25fps_by_timestamp(tmp_path: Path):
    video = write_video(tmp_path / "in.mp4", grid_frames(60), 30)
    info = probe_video(video)
    assert (info.width, info.height, info.fps, info.rotation, info.codec) == (SIDE, SIDE, 30.0, 0, "h264")
    assert info.duration_s == pytest.approx(2.0, abs=0.05)

    frames = list(read_frames(video))

    assert len(frames) == 50
    assert frames[0].shape == (SIDE, SIDE, 3) and frames[0].dtype == np.uint8
    # Output frame i shows the source frame on screen at i/25 s: source index floor(i * 30 / 25).
    assert [source_index(f) for f in frames] == [i * 30 // 25 for i in range(50)]


def test_lower_rate_duplicates_frames(tmp_path: Path):
    video = write_video(tmp_path / "in.mp4", grid_frames(20), 20)
    frames = list(read_frames(video))
    assert len(frames) == 25
    assert [source_index(f) for f in frames] == [i * 20 // 25 for i in range(25)]
    assert frames[0] is frames[1] and not frames[0].flags.writeable  # a repeat is the same read-only array


def test_webm_vp9_and_mov_decode(tmp_path: Path):
    webm = write_video(tmp_path / "in.webm", grid_frames(25), 25, codec="libvpx-vp9")
    mov = write_video(tmp_path / "in.mov", grid_frames(25), 25)
    assert probe_video(webm).codec == "vp9"
    for video in (webm, mov):
        frames = list(read_frames(video))
        assert [source_index(f) for f in frames] == list(range(25))


def write_rotated(path: Path, image: np.ndarray, degrees_ccw: int, n: int = 3) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        stream.set_display_rotation(degrees_ccw)
        for _ in range(n):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    return path


def test_rotated_phone_video_comes_out_upright(tmp_path: Path):
    # A phone stores portrait video as landscape pixels with "rotate 90 clockwise" in the display matrix.
    portrait = cv2.resize(astronaut_bgr(), (96, 128), interpolation=cv2.INTER_AREA)
    stored = cv2.rotate(portrait, cv2.ROTATE_90_COUNTERCLOCKWISE)
    video = write_rotated(tmp_path / "phone.mp4", stored, degrees_ccw=-90)

    info = probe_video(video)
    assert (info.rotation, info.width, info.height) == (-90, 96, 128)
    frames = list(read_frames(video))
    assert frames[0].shape == portrait.shape

    def error(image: np.ndarray) -> float:
        return float(np.abs(frames[0].astype(int) - image.astype(int)).mean())

    assert error(portrait) < 10  # lossy H.264 on a tiny, detailed frame
    assert error(portrait) < error(cv2.rotate(portrait, cv2.ROTATE_180)) / 3


def test_upright_helper_and_angle_normalisation():
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(upright(image, 0), image)
    assert np.array_equal(upright(image, 90), np.rot90(image, 1))  # counter-clockwise
    assert np.array_equal(upright(image, -90), np.rot90(image, -1))
    assert np.array_equal(upright(image, 180), np.rot90(image, 2))
    assert [normalize_rotation(a) for a in (0, 89.6, 270, -180, 360, -270)] == [0, 90, -90, 180, 0, 90]


def test_undecodable_file_is_invalid_video(tmp_path: Path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video")
    with pytest.raises(EngineError) as probe_error:
        probe_video(bogus)
    assert probe_error.value.code == "invalid_video"
    with pytest.raises(EngineError) as read_error:
        list(read_frames(bogus))
    assert read_error.value.code == "invalid_video"


def test_audio_only_file_is_invalid_video(tmp_path: Path):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = np.zeros((1, 2048), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(EngineError) as error:
        probe_video(path)
    assert error.value.code == "invalid_video" and "no video stream" in error.value.message


def test_frame_cap_stops_decoding(tmp_path: Path):
    video = write_video(tmp_path / "in.mp4", grid_frames(30), 25)
    frames = read_frames(video, max_frames=10)
    assert len([next(frames) for _ in range(10)]) == 10
    with pytest.raises(EngineError) as error:
        next(frames)
    assert error.value.code == "video_too_long"


def write_raw_h264(path: Path, num_frames: int, rate: int) -> Path:
    """An H.264 elementary stream (no container, no timestamps), each frame a bit brighter than the last."""
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(num_frames):
            image = np.full((48, 64, 3), 20 + 2 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    return path


def test_raw_stream_without_timestamps_times_frames_by_rate_and_index(tmp_path: Path):
    """Class: raw streams without timestamps (an .h264 elementary stream) keep every frame, in order."""
    video = write_raw_h264(tmp_path / "raw.h264", 100, 25)
    frames = list(read_frames(video, fps=25))
    assert len(frames) == 100
    brightness = [float(frame.mean()) for frame in frames]
    assert all(b > a for a, b in zip(brightness, brightness[1:], strict=False))
