"""Segmented output: every segment decodes, sync holds across boundaries, segments add up to the mp4."""

from __future__ import annotations

import io
import time
from pathlib import Path

import av
import numpy as np
import pytest

from engines.codecs.segments import SegmentedMp4Writer, SegmentPlan, hls_playlist, parse_hls_playlist
from tests.engines.test_video_out import SR, top_level_boxes

FPS = 25
SIZE = (96, 64)
FLASH_FRAMES = (9, 35, 61)  # last frame of segment 0, first of segment 2, second of segment 3
NUM_FRAMES = 80  # segments of 10, 25, 25 and 20 frames


def flashes_and_clicks() -> tuple[list[np.ndarray], np.ndarray]:
    width, height = SIZE
    frames = [np.full((height, width, 3), 40, np.uint8) for _ in range(NUM_FRAMES)]
    audio = np.zeros(NUM_FRAMES * SR // FPS, np.float32)
    for index in FLASH_FRAMES:
        frames[index][:] = 230
        audio[index * SR // FPS : index * SR // FPS + 80] = 0.9
    return frames, audio


def decode(blob: bytes) -> tuple[list[tuple[float, float]], np.ndarray, float]:
    """(frame time, mean grey) per video frame, the audio samples and the audio's start time."""
    with av.open(io.BytesIO(blob)) as container:
        video = [(float(f.time), float(f.to_ndarray(format="gray").mean())) for f in container.decode(video=0)]
    with av.open(io.BytesIO(blob)) as container:
        frames = list(container.decode(audio=0))
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else np.zeros(0, np.float32)
    return video, samples, float(frames[0].time) if frames else 0.0


def onsets(samples: np.ndarray, start_s: float) -> list[float]:
    loud = np.nonzero(np.abs(samples) > 0.3)[0]
    firsts = [i for k, i in enumerate(loud) if k == 0 or i - loud[k - 1] > SR // 10]
    return [start_s + i / SR for i in firsts]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[SegmentedMp4Writer, list, int]:
    """The writer after close, its segments, and how many frames had been written when segment 0 was out."""
    tmp = tmp_path_factory.mktemp("segments")
    frames, audio = flashes_and_clicks()
    plan = SegmentPlan(FPS, first_s=0.4, segment_s=1.0)
    writer = SegmentedMp4Writer(tmp / "out.mp4", tmp / "segments", *SIZE, plan=plan, audio=audio, sample_rate=SR)
    segments: list = []
    first_ready_at = -1
    with writer:
        for count, frame in enumerate(frames, start=1):
            writer.write(frame)
            if count == 12:  # segment 0 is cut once segment 1's keyframe is muxed: wait for it here
                deadline = time.monotonic() + 5
                while not segments and time.monotonic() < deadline:
                    segments += writer.pop_segments()
                    time.sleep(0.005)
                first_ready_at = count if segments else -1
            segments += writer.pop_segments()
    writer.close()
    segments += writer.pop_segments()
    return writer, segments, first_ready_at


def test_segments_follow_the_plan_and_come_out_while_writing(written: tuple) -> None:
    writer, segments, first_ready_at = written
    assert first_ready_at == 12  # the first segment exists long before the 80th frame is written
    assert [s.index for s in segments] == [0, 1, 2, 3]
    assert [s.num_frames for s in segments] == [10, 25, 25, 20]
    assert [s.start_frame for s in segments] == [0, 10, 35, 60]
    assert writer.init_path.is_file() and all(s.path.is_file() for s in segments)
    assert sorted(p.name for p in writer.path.parent.iterdir()) == ["out.mp4", "segments"]  # no temp files left


def test_every_segment_decodes_on_its_own(written: tuple) -> None:
    writer, segments, _ = written
    init = writer.init_path.read_bytes()
    for segment in segments:
        video, samples, _ = decode(init + segment.path.read_bytes())
        assert len(video) == segment.num_frames
        assert video[0][0] == pytest.approx(segment.start_s, abs=1e-3)  # tfdt carries the timeline
        assert len(samples) > 0


def test_sound_and_picture_stay_in_sync_across_segment_boundaries(written: tuple) -> None:
    writer, segments, _ = written
    stream = writer.init_path.read_bytes() + b"".join(s.path.read_bytes() for s in segments)
    video, samples, audio_start = decode(stream)  # what a player appending the segments plays
    flashes = [t for t, grey in video if grey > 150]
    expected = [index / FPS for index in FLASH_FRAMES]
    assert flashes == pytest.approx(expected, abs=1e-3)
    assert onsets(samples, audio_start) == pytest.approx(expected, abs=0.002)  # no AAC priming delay


def test_segments_add_up_to_the_faststart_mp4(written: tuple) -> None:
    writer, segments, _ = written
    assert writer.stats.num_frames == NUM_FRAMES == sum(s.num_frames for s in segments)
    boxes = top_level_boxes(writer.path)
    assert boxes.index("moov") < boxes.index("mdat") and "moof" not in boxes
    video, samples, audio_start = decode(writer.path.read_bytes())
    assert len(video) == NUM_FRAMES
    assert sum(s.duration_s for s in segments) == pytest.approx(NUM_FRAMES / FPS)
    assert abs(len(samples) / SR - NUM_FRAMES / FPS) <= 1 / FPS
    assert onsets(samples, audio_start) == pytest.approx([i / FPS for i in FLASH_FRAMES], abs=0.002)


def test_playlist_is_an_event_playlist_that_ends() -> None:
    plan = SegmentPlan(FPS, first_s=0.4, segment_s=2.0)
    entries = [("segment_00000.m4s", 0.4), ("segment_00001.m4s", 2.0)]
    growing = hls_playlist(entries, "init.mp4", plan.target_duration_s, ended=False)
    final = hls_playlist([*entries, ("segment_00002.m4s", 1.2)], "init.mp4", plan.target_duration_s, ended=True)
    lines = final.splitlines()
    assert lines[0] == "#EXTM3U" and "#EXT-X-PLAYLIST-TYPE:EVENT" in lines and '#EXT-X-MAP:URI="init.mp4"' in lines
    assert lines[-1] == "#EXT-X-ENDLIST" and "#EXT-X-ENDLIST" not in growing
    assert final.startswith(growing)  # a player polling it only ever sees it grow
    durations = [float(line[8:].rstrip(",")) for line in lines if line.startswith("#EXTINF:")]
    target = int(next(line.split(":")[1] for line in lines if line.startswith("#EXT-X-TARGETDURATION")))
    assert durations == [0.4, 2.0, 1.2] and all(round(d) <= target for d in durations)
    uris = [line for line in lines if line and not line.startswith("#")]
    assert uris == ["segment_00000.m4s", "segment_00001.m4s", "segment_00002.m4s"]
    assert parse_hls_playlist(final) == ([*entries, ("segment_00002.m4s", 1.2)], True)
    assert parse_hls_playlist(growing) == (entries, False)


def test_a_failed_stream_leaves_no_temporary_files(tmp_path: Path) -> None:
    frames, audio = flashes_and_clicks()
    plan = SegmentPlan(FPS)
    with (
        pytest.raises(RuntimeError),
        SegmentedMp4Writer(
            tmp_path / "out.mp4", tmp_path / "segments", *SIZE, plan=plan, audio=audio, sample_rate=SR
        ) as writer,
    ):
        for frame in frames[:30]:
            writer.write(frame)
        raise RuntimeError("the renderer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["segments"]  # published segments stay; no partial mp4
